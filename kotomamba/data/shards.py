"""The shards of a corpus source: the pipeline's unit of download and tokenization.

A source of the run config (``corpus.sources[i]``) is read as an ordered list of shards:

- ``urls``: one shard per entry, a local glob one per matching file (sorted, expanded when the
  config is read); an ``http(s)://`` or hub (``hf://``) shard is downloaded as published (still
  compressed) and read from the copy, a local or ``file://`` shard is read where the user keeps it;
- ``builtin``: one shard, the corpus file the pipeline writes.

Each shard is tokenized by its own job into its own ``.bin/.idx``; the source's dataset is their
merge in this order (:mod:`kotomamba.data.merge`). ``location`` is what errors name (the URL or the
user's path, with the shard's own line numbers), so no record of line origins is needed.
"""
from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from kotomamba.data.compression import COMPRESSED_SUFFIXES
from kotomamba.data.download import Source, expand_globs, is_remote, parse_source

BUILTIN = "builtin corpus "


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based, in the source's order) of ``source``; ``location`` is the URL, the
    user's path (globs expanded) or ``builtin corpus <name>``; ``sha256`` of the published bytes if set;
    ``entry`` the index in the source's ``urls`` that names it."""

    source: str
    index: int
    location: str
    sha256: str | None = None
    entry: int = 0

    @property
    def id(self) -> str:
        """The shard's name in file names: its index, zero-padded so listings sort in source order."""
        return f"{self.index:05d}"

    @property
    def is_builtin(self) -> bool:
        return self.location.startswith(BUILTIN)

    @property
    def is_download(self) -> bool:
        return is_remote(self.location)

    @property
    def local_path(self) -> str:
        """Where a local shard is read (a ``file://`` URL as a path)."""
        parts = urllib.parse.urlsplit(self.location)
        return urllib.parse.unquote(parts.path) if parts.scheme == "file" else self.location

    @property
    def compression(self) -> str:
        """``.gz``, ``.zst`` or ``""``: how the published file is compressed, by its name."""
        return next((s for s in COMPRESSED_SUFFIXES if Source(self.location).name.endswith(s)), "")


def source_shards(source: dict) -> list[Shard]:
    """The shards of one ``corpus.sources`` entry of a validated run config, in order.

    Raises:
        UserError: a local glob that matches nothing (the config check reports it first).
    """
    name = source["name"]
    if "builtin" in source:
        return [Shard(name, 0, f"{BUILTIN}{source['builtin']}")]
    checksums = source.get("sha256") or [None] * len(source["urls"])
    given = [parse_source(url) for url in source["urls"]]
    given = [Source(entry.location, digest or entry.sha256) for entry, digest in zip(given, checksums)]
    shards = []
    for entry, source_entry in enumerate(given):
        for found in expand_globs([source_entry]):
            shards.append(Shard(name, len(shards), found.location, found.sha256, entry))
    return shards
