"""Tokenizers and initial checkpoints fetched from where they live, as corpus shards are.

An input is named one of three ways:

- a local path: used as it is;
- ``http(s)://`` URLs of its files, each optionally pinned as ``URL#sha256=<hex>`` (or
  ``{"url": ..., "sha256": ...}``): fetched, resumed and verified by ``kotomamba.data.download``;
- a Hugging Face hub id with a pinned revision, ``org/name@revision`` (a commit hash keeps the
  files fixed): the repository's files at that revision, from the hub's ``resolve`` URLs at the
  endpoint ``HF_ENDPOINT`` names (:mod:`kotomamba.data.hub`, which also names single hub files
  ``hf://org/name@revision/path``, the form the pipeline's configs use).

Which hub files: a tokenizer is ``tokenizer.json`` (with ``tokenizer_config.json`` and
``special_tokens_map.json`` where the repository has them) or a SentencePiece ``tokenizer.model``;
a model is ``config.json`` and its weights (``model.safetensors``, ``pytorch_model.bin``, or either
sharded with its ``.index.json``), what ``MambaLM.from_pretrained`` and ``init.from`` read, with the
repository's tokenizer files where it has them.

Files land in ``<cache>/hub/<org>/<name>/<revision>/`` or ``<cache>/url/<digest of the sources>/``;
files already there are kept, and a hub input fetched whole is marked so (``.complete-<kind>``): a second
fetch asks the network nothing, and cached inputs work offline. The commands that take
a model or tokenizer path (``convert``, ``generate``, ``evaluate``) accept the remote forms too
(:func:`local_input`), caching in :func:`default_cache`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Sequence

from kotomamba.data.download import Source, download, parse_source
from kotomamba.data.hub import HUB_ENDPOINT_VARIABLE, HubId, hub_endpoint, parse_hub_id, resolve_url
from kotomamba.errors import UserError, report
from kotomamba.io import write_json

KINDS = ("tokenizer", "model")
_TOKENIZER_EXTRAS = ("tokenizer_config.json", "special_tokens_map.json")
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def _on_hub(url: str, timeout: float) -> bool:
    """Whether the hub serves ``url`` (a HEAD request; 404 means the repository lacks the file)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise UserError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(f"{url}: cannot reach the hub ({getattr(exc, 'reason', exc)}); set {HUB_ENDPOINT_VARIABLE} "
                        f"for a mirror, or give a local path") from exc


def _hub_files(hub_id: HubId, kind: str, destination: Path, timeout: float, log) -> None:
    """Fetch the files of ``kind`` from the hub into ``destination``."""

    def fetch(*names: str) -> None:
        download([Source(resolve_url(hub_id, name)) for name in names], destination, decompress=False,
                 timeout=timeout, log=log)

    def present(name: str) -> bool:
        return (destination / name).is_file() or _on_hub(resolve_url(hub_id, name), timeout)

    where = f"{hub_id.repo_id}@{hub_id.revision}"
    if kind == "tokenizer":
        chosen = next((name for name in ("tokenizer.json", "tokenizer.model") if present(name)), None)
        if chosen is None:
            raise UserError(f"{where}: no tokenizer.json or tokenizer.model at {resolve_url(hub_id, '')}")
        fetch(chosen, *(name for name in _TOKENIZER_EXTRAS if chosen == "tokenizer.json" and present(name)))
        return
    if not present("config.json"):
        raise UserError(f"{where}: no config.json at {resolve_url(hub_id, 'config.json')} (not a model repository, "
                        f"or not this revision)")
    for weights in _WEIGHTS:
        index = f"{weights}.index.json"
        if present(weights):
            fetch("config.json", weights)
        elif present(index):
            fetch("config.json", index)
            weight_map = json.loads((destination / index).read_text(encoding="utf-8")).get("weight_map")
            if not isinstance(weight_map, dict):
                raise UserError(f"{resolve_url(hub_id, index)}: field 'weight_map': missing or not an object")
            fetch(*sorted(set(weight_map.values())))
        else:
            continue
        # The repository's tokenizer, where it has one, comes along: generate and convert default to it.
        tokenizer = [name for name in ("tokenizer.json", *_TOKENIZER_EXTRAS) if present(name)]
        if "tokenizer.json" in tokenizer:
            fetch(*tokenizer)
        return
    raise UserError(f"{where}: no weights ({', '.join(_WEIGHTS)}, or sharded with an .index.json) at "
                    f"{resolve_url(hub_id, '')}")


def _sources(spec: Sequence[Any]) -> list[Source]:
    sources = []
    for item in spec:
        if isinstance(item, dict):
            sha256 = f"#sha256={item['sha256']}" if item.get("sha256") else ""
            sources.append(parse_source(f"{item.get('url', '')}{sha256}"))
        else:
            sources.append(parse_source(str(item)))
    return sources


def fetch_input(spec: str | Sequence[Any], kind: str, cache: str | os.PathLike, timeout: float = 60.0,
                log=print) -> str:
    """A local path for the input ``spec`` names (see the module doc), fetching it into ``cache`` if remote.

    A tokenizer gives the directory of its hub or URL files, or its one file (``tokenizer.json`` or
    ``tokenizer.model``) when one URL names it; a model gives its directory.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    cache = Path(cache)
    if isinstance(spec, str):
        if Path(spec).exists():
            return spec
        if "://" not in spec:
            hub_id = parse_hub_id(spec)
            if hub_id is None:
                raise UserError(f"{spec}: {kind} not found: not a local path; a hub id needs a pinned revision, "
                                f"org/name@<commit hash>; a URL starts with https://")
            destination = cache.joinpath(*hub_id.cache_parts)
            # Written once every file is in: later uses ask the hub nothing, so a cached input works offline.
            complete = destination / f".complete-{kind}"
            if not complete.is_file():
                _hub_files(hub_id, kind, destination, timeout, log)
                write_json(complete, {"repo_id": hub_id.repo_id, "revision": hub_id.revision,
                                      "endpoint": hub_endpoint()})
            return str(destination)
        spec = [spec]
    sources = _sources(spec)
    digest = hashlib.sha256("\n".join(f"{s.location} {s.sha256}" for s in sources).encode()).hexdigest()[:16]
    destination = cache / "url" / digest
    paths = download(sources, destination, decompress=False, timeout=timeout, log=log)
    return str(paths[0]) if kind == "tokenizer" and len(paths) == 1 else str(destination)


def default_cache() -> Path:
    """Where the commands keep fetched inputs: ``KOTOMAMBA_CACHE``, else ``$XDG_CACHE_HOME/kotomamba``
    (``~/.cache/kotomamba``)."""
    if os.environ.get("KOTOMAMBA_CACHE"):
        return Path(os.environ["KOTOMAMBA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kotomamba"


def is_remote(spec: str) -> bool:
    """Whether ``spec`` names an input elsewhere (an http(s) URL or a hub id) rather than a local path."""
    if Path(spec).exists():
        return False
    return urllib.parse.urlsplit(spec).scheme in ("http", "https") or parse_hub_id(spec) is not None


def local_input(spec: str, kind: str) -> str:
    """What the commands' path arguments accept: ``spec`` when local, else fetched into :func:`default_cache`."""
    if not is_remote(spec):
        return spec
    return fetch_input(spec, kind, default_cache(), log=lambda line: print(line, file=sys.stderr))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kotomamba fetch-input", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("spec", nargs="+", help="a local path, URL[#sha256=<hex>]..., or org/name@revision")
    parser.add_argument("--cache", required=True, help="directory the fetched files are kept in")
    args = parser.parse_args(argv)
    spec = args.spec[0] if len(args.spec) == 1 else args.spec
    try:
        path = fetch_input(spec, args.kind, args.cache, log=lambda line: print(line, file=sys.stderr))
    except UserError as exc:
        return report("fetch-input", exc)
    print(path)
    return 0
