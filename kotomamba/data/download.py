"""``kotomamba download``: fetch corpus shards into a directory, verified and decompressed.

A source is an ``http(s)://`` URL, a hub file ``hf://[datasets/]org/name@revision/path`` (fetched from
the hub's resolve URL, :mod:`kotomamba.data.hub`), a ``file://`` URL, a local path, or a glob of local
shards (``data/*.jsonl.zst``), optionally with the sha256 of the file as published:
``URL#sha256=<hex>`` on the command line, or ``{"url": ..., "sha256": ...}`` in a ``--sources``
YAML/JSON list. For each file:

1. The bytes are fetched into ``<output>/.<name>.part``; an interrupted HTTP download resumes
   from there with a ``Range`` request (on the next attempt, or the next run).
2. The sha256 of the fetched bytes (compressed, as published) is checked; a mismatch is an error
   naming the source and both digests, and the ``.part`` file is removed.
3. ``.gz`` / ``.zst`` are decompressed; the result is moved to ``<output>/<name without suffix>``
   only when complete (``kotomamba.io.atomic_write``), so a file at its final path is always whole.

With ``--lock FILE`` (the pipeline's, :mod:`kotomamba.data.input_lock`) a source without a sha256 is
checked against the one recorded there, and every verified download is recorded; ``--where`` names the
config entry a mismatch is reported against.

Files already at their final path are kept as they are. ``--output FILE`` concatenates the
decompressed files, in source order, into one JSONL file; ``--output-dir DIR`` keeps one file per
source. ``--keep-compressed --output FILE`` fetches one source as published (what the pipeline's
per-shard ``download`` job runs: its tokenization reads the compressed shard as a stream).
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import http.client
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from kotomamba.data.compression import COMPRESSED_SUFFIXES, open_decompressed, strip_compression_suffix
from kotomamba.data.hub import fetch_url, is_hub_file
from kotomamba.data.input_lock import InputLock
from kotomamba.data.line_origins import count_lines, write_origins
from kotomamba.errors import UserError, out_of_space
from kotomamba.io import atomic_write, read_yaml

BLOCK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class Source:
    """One file to fetch: ``location`` is a URL or a local path; ``sha256`` of its bytes if known."""

    location: str
    sha256: str | None = None

    @property
    def is_http(self) -> bool:
        """Fetched over HTTP: an http(s) URL or a hub file."""
        return is_remote(self.location)

    @property
    def name(self) -> str:
        path = urllib.parse.urlsplit(self.location).path if "://" in self.location else self.location
        name = Path(urllib.parse.unquote(path)).name
        if not name:
            raise UserError(f"{self.location}: cannot tell a file name from this source")
        return name


def is_remote(location: str) -> bool:
    """Whether ``location`` is downloaded (an http(s) URL or a hub file) rather than read where it is."""
    return urllib.parse.urlsplit(location).scheme in ("http", "https") or is_hub_file(location)


def parse_source(text: str) -> Source:
    """``location`` or ``location#sha256=<hex>``."""
    location, _, fragment = text.partition("#sha256=")
    return _source(location, fragment or None, where=text)


def _source(location: str, sha256: str | None, where: str) -> Source:
    if sha256 is not None and not _SHA256.match(sha256):
        raise UserError(f"{where}: sha256 must be 64 hex digits, got {sha256!r}")
    if not location:
        raise UserError(f"{where}: empty source")
    return Source(location, sha256.lower() if sha256 else None)


def load_sources_file(path: str | os.PathLike) -> list[Source]:
    """A YAML or JSON list whose items are source strings or ``{url, sha256}`` mappings."""
    items = read_yaml(path, "sources file")
    if not isinstance(items, list):
        raise UserError(f"{path}: expected a list of sources")
    sources = []
    for number, item in enumerate(items, start=1):
        if isinstance(item, str):
            sources.append(parse_source(item))
        elif isinstance(item, dict) and isinstance(item.get("url"), str):
            sources.append(_source(item["url"], item.get("sha256"), where=f"{path}: item {number}"))
        else:
            raise UserError(f"{path}: item {number} must be a string or a mapping with a 'url' field")
    return sources


def expand_globs(sources: Iterable[Source]) -> list[Source]:
    """Local globs become one source per matching file, sorted; a glob matching nothing is an error."""
    expanded = []
    for source in sources:
        local = _local_path(source)
        if local is None or not glob.has_magic(local):
            expanded.append(source)
            continue
        if source.sha256:
            raise UserError(f"{source.location}: a sha256 belongs to one file, not to a glob")
        matches = sorted(glob.glob(local))
        if not matches:
            raise UserError(f"{source.location}: glob matches no file")
        expanded.extend(Source(m) for m in matches)
    return expanded


def source_state(locations: Sequence[str]) -> list[str]:
    """What a rerun compares to notice a changed source: each local file (globs expanded) as
    ``path size mtime_ns``, each http(s) URL as given (its ``sha256``, when set, pins its content).

    Raises:
        UserError: a local file or glob that names nothing, naming the location.
    """
    state = []
    for source in expand_globs(parse_source(location) for location in locations):
        local = _local_path(source)
        if local is None:
            state.append(source.location)
            continue
        try:
            stat = os.stat(local)
        except OSError:
            raise UserError(f"{source.location}: source file not found") from None
        state.append(f"{local} {stat.st_size} {stat.st_mtime_ns}")
    return state


def _local_path(source: Source) -> str | None:
    parts = urllib.parse.urlsplit(source.location)
    if parts.scheme == "file":
        return urllib.parse.unquote(parts.path)
    if len(parts.scheme) <= 1:  # a plain path (a one-letter scheme is a Windows drive)
        return source.location
    return None


def final_name(source: Source, decompress: bool) -> str:
    return strip_compression_suffix(source.name) if decompress else source.name


def download(sources: Sequence[Source], output: str | os.PathLike, decompress: bool = True, retries: int = 3,
             timeout: float = 60.0, log=print) -> list[Path]:
    """Fetch, verify and (optionally) decompress every source into ``output``; returns the final paths."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    sources = expand_globs(sources)
    names = [final_name(s, decompress) for s in sources]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"several sources would be written to the same file: {', '.join(duplicates)}")
    results = []
    for source, name in zip(sources, names):
        final = output / name
        if final.exists():
            log(f"{final}: present, kept")
        else:
            part = output / f".{source.name}.part"
            _fetch_verified(source, part, retries, timeout, log)
            _place(part, final, source.name if decompress and source.name.endswith(COMPRESSED_SUFFIXES) else None)
            log(f"{final}: from {source.location}")
        results.append(final)
    return results


def download_file(source: Source, output: str | os.PathLike, retries: int = 3, timeout: float = 60.0,
                  log=print, lock: InputLock | None = None, where: str | None = None) -> Path:
    """Fetch and verify one source into ``output`` as published (compressed files stay compressed).

    What the pipeline's per-shard and input ``download`` jobs run: the shard is later read as a stream,
    so no decompressed copy is written. ``.<output name>.part`` beside it survives a killed job, and the
    next run resumes the transfer from there. With ``lock``, a source without a sha256 is checked
    against the one recorded there, and the verified sha256 is recorded; ``where`` (the config entry
    that names the source) starts a mismatch's message.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    part = output.with_name(f".{output.name}.part")
    recorded = lock.get(source.location) if lock is not None and source.sha256 is None else None
    expected = source.sha256 or recorded
    origin = (f"as recorded in {lock.path} on its first download; if the source changed on purpose, remove "
              f"its entry there" if recorded else "as pinned")
    digest = _fetch_verified(source, part, retries, timeout, log, expected, origin, where, hashed=lock is not None)
    _place(part, output, None)
    if lock is not None:
        lock.record(source.location, digest)
    log(f"{output}: from {source.location}")
    return output


def _fetch_verified(source: Source, part: Path, retries: int, timeout: float, log, expected: str | None = None,
                    origin: str = "as pinned", where: str | None = None, hashed: bool = False) -> str | None:
    """Fetch ``source`` into ``part`` and check its sha256 against ``expected`` (default: the source's own);
    returns the sha256 when it was computed (a check, or ``hashed``)."""
    if source.is_http:
        _fetch_http(source, part, retries, timeout, log)
    else:
        _fetch_local(source, part)
    return _verify(source, part, expected or source.sha256, origin, where, hashed)


def _fetch_local(source: Source, part: Path) -> None:
    path = Path(_local_path(source) or source.location)
    if not path.is_file():
        raise UserError(f"{source.location}: source file not found")
    shutil.copyfile(path, part)


def _fetch_http(source: Source, part: Path, retries: int, timeout: float, log) -> None:
    """Download into ``part``, resuming from its current length; retry a broken transfer."""
    url = fetch_url(source.location)
    named = source.location if url == source.location else f"{source.location} ({url})"
    for attempt in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                if have and response.status != 206:  # the server ignored the range: start over
                    have = 0
                expected = response.headers.get("Content-Length")
                received = 0
                with open(part, "ab" if have else "wb") as handle:
                    while block := response.read(BLOCK):
                        handle.write(block)
                        received += len(block)
                if expected is not None and received != int(expected):
                    raise http.client.IncompleteRead(b"", int(expected) - received)
            return
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # nothing left to send: the .part is already whole
                return
            raise UserError(f"{named}: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            full = out_of_space(exc)
            if full is not None:  # no transfer error: another attempt would find no more room
                raise UserError(f"{named}: no room for it in {part.parent} ({full.strerror}, {part.stat().st_size:,} "
                                f"bytes fetched); make room there, then run again to resume from {part}") from exc
            if attempt == retries:
                raise UserError(f"{named}: download failed after {retries + 1} attempts ({exc}); "
                                f"run again to resume from {part}") from exc
            log(f"{source.location}: interrupted ({exc}), resuming")
            time.sleep(min(2 ** attempt, 10) * 0.1)


def _verify(source: Source, part: Path, expected: str | None, origin: str, where: str | None,
            hashed: bool) -> str | None:
    if expected is None and not hashed:
        return None
    digest = hashlib.sha256()
    with open(part, "rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
    if expected is not None and digest.hexdigest() != expected:
        part.unlink()
        raise UserError(f"{f'{where}: ' if where else ''}{source.location}: sha256 mismatch: expected {expected} "
                        f"({origin}), got {digest.hexdigest()} (the download was removed)")
    return digest.hexdigest()


def _place(part: Path, final: Path, compressed_name: str | None) -> None:
    """Move ``part`` to ``final``, decompressing it as its suffix in ``compressed_name`` says."""
    if compressed_name is None:
        os.replace(part, final)
        return
    import zstandard

    try:
        with open_decompressed(part, compressed_name) as reader, atomic_write(final, "wb") as writer:
            shutil.copyfileobj(reader, writer, BLOCK)
    except (OSError, EOFError, zstandard.ZstdError) as exc:  # what corrupt gzip / zstd data raise
        raise UserError(f"{part}: cannot decompress ({exc})") from exc
    part.unlink()


def download_to_file(sources: Sequence[Source], output: str | os.PathLike, retries: int = 3, log=print) -> Path:
    """Fetch, verify and decompress every source, then concatenate them in order into ``output``.

    The shards are kept in ``.<output name>.download/`` beside it until the file is complete, so
    an interrupted run resumes; each shard is ended with a newline so JSONL lines never merge.
    Which lines came from which source is recorded beside it (:mod:`kotomamba.data.line_origins`).
    """
    output = Path(output)
    work = output.with_name(f".{output.name}.download")
    expanded = expand_globs(sources)
    paths = download(expanded, work, decompress=True, retries=retries, log=log)
    write_origins(output, [(source.location, count_lines(path)) for source, path in zip(expanded, paths)])
    with atomic_write(output, "wb") as writer:
        for path in paths:
            last = b"\n"
            with open(path, "rb") as reader:
                while block := reader.read(BLOCK):
                    writer.write(block)
                    last = block[-1:]
            if last != b"\n":
                writer.write(b"\n")
    shutil.rmtree(work)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kotomamba download", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="*", help="URL, file URL, path or glob; append #sha256=<hex> to check")
    parser.add_argument("--sha256", action="append", default=[],
                        help="checksum of each positional source in order (give one per source, or none)")
    parser.add_argument("--sources", help="YAML/JSON list of sources (strings or {url, sha256})")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--output", help="one file: all sources decompressed and concatenated in order")
    target.add_argument("--output-dir", help="a directory: one file per source")
    parser.add_argument("--keep-compressed", action="store_true",
                        help="do not decompress; with --output, exactly one source, kept as published")
    parser.add_argument("--retries", type=int, default=3, help="resumed retries of a broken HTTP transfer")
    parser.add_argument("--lock", help="with --keep-compressed --output: a lock file of sha256s to check an unpinned "
                                       "source against and to record the download in (trust on first use)")
    parser.add_argument("--where", help="the config entry naming the source, for error messages")
    args = parser.parse_args(argv)
    try:
        sources = [parse_source(s) for s in args.source]
        if args.sha256:
            if len(args.sha256) != len(sources):
                raise UserError(f"{len(args.sha256)} --sha256 values for {len(sources)} sources: give one per source")
            sources = [_source(s.location, digest, where=s.location) for s, digest in zip(sources, args.sha256)]
        if args.sources:
            sources += load_sources_file(args.sources)
        if not sources:
            raise UserError("no sources given (positional arguments or --sources)")
        if args.lock and not (args.output and args.keep_compressed):
            raise UserError("--lock goes with --keep-compressed --output (one source, as the pipeline fetches it)")
        if args.output and args.keep_compressed:
            if len(expand_globs(sources)) != 1:
                raise UserError("--output with --keep-compressed takes exactly one source")
            download_file(expand_globs(sources)[0], args.output, retries=args.retries,
                          lock=InputLock(args.lock) if args.lock else None, where=args.where)
        elif args.output:
            download_to_file(sources, args.output, retries=args.retries)
        else:
            download(sources, args.output_dir, decompress=not args.keep_compressed, retries=args.retries)
    except UserError as exc:
        print(f"kotomamba download: error: {exc}", file=sys.stderr)
        return 2
    return 0
