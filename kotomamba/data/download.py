"""``kotomamba download``: fetch corpus shards into a directory, verified and decompressed.

A source is an ``http(s)://`` URL, a hub file ``hf://[datasets/]org/name@revision/path`` (fetched from
the hub's resolve URL, :mod:`kotomamba.data.hub`), a ``file://`` URL, a local path, or a glob of local
shards (``data/*.jsonl.zst``), optionally with the sha256 of the file as published:
``URL#sha256=<hex>`` on the command line, or ``{"url": ..., "sha256": ...}`` in a ``--sources``
YAML/JSON list. For each file:

1. The bytes are fetched into ``<output>/.<name>.part``; an interrupted HTTP download resumes
   from there with a ``Range`` request (on the next attempt, or the next run) where the server shows
   the file unchanged (``If-Range`` with the ETag or Last-Modified of the first response, kept in
   ``.<name>.part.json``) or a sha256 pins it; otherwise it starts over.
2. The sha256 of the fetched bytes (compressed, as published) is checked; a mismatch is an error
   naming the source and both digests, and the ``.part`` file is removed.
3. ``.gz`` / ``.zst`` are decompressed; the result is moved to ``<output>/<name without suffix>``
   only when complete (``kotomamba.io.atomic_write``), so a file at its final path is always whole;
   damaged data is an error naming the source, and the ``.part`` file is removed. The sha256 of what
   it was decompressed from is kept in ``<output>/.<name without suffix>.sha256``.

With ``--lock FILE`` (the pipeline's, :mod:`kotomamba.data.input_lock`) a source without a sha256 is
checked against the one recorded there, and every verified download is recorded; ``--where`` names the
config entry a mismatch is reported against.

Files already at their final path are kept as they are, unless a pinned sha256 says they are not the
source's: that is an error, and the file is left for the user to move. ``--output FILE`` concatenates the
decompressed files, in source order, into one JSONL file, and records beside it which lines came from which
source (:mod:`kotomamba.data.line_origins`); ``--output-dir DIR`` keeps one file per source.
``--keep-compressed --output FILE`` fetches one source as published (what the pipeline's per-shard
``download`` job runs: its tokenization reads the compressed shard as a stream). A file fetched from one
source removes such a record of its path, which would describe an earlier file.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import http.client
import os
import re
import shutil
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
from kotomamba.data.line_origins import count_lines, remove_origins, write_origins
from kotomamba.errors import UserError, out_of_space, report
from kotomamba.io import atomic_write, read_json, read_yaml, write_json

BLOCK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_CONTENT_RANGE = re.compile(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)")


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
    sources = expand_globs(sources)
    names = [final_name(s, decompress) for s in sources]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"several sources would be written to the same file: {', '.join(duplicates)}")
    return _fetch_all(sources, [s.name for s in sources], Path(output), decompress, retries, timeout, log)


def _fetch_all(sources: Sequence[Source], names: Sequence[str], output: Path, decompress: bool, retries: int,
               timeout: float, log) -> list[Path]:
    """Fetch each source under its ``names`` entry (a published file name: ``.<name>.part`` while it comes, then
    ``<name>``, less its compression suffix when ``decompress``) in ``output``; returns the final paths."""
    output.mkdir(parents=True, exist_ok=True)
    results = []
    for source, name in zip(sources, names):
        decompressed = decompress and name.endswith(COMPRESSED_SUFFIXES)
        final = output / strip_compression_suffix(name) if decompressed else output / name
        if final.exists():
            _check_present(final, source, decompressed)
            log(f"{final}: present, kept")
        else:
            part = output / f".{name}.part"
            digest = _fetch_verified(source, part, retries, timeout, log, hashed=decompressed)
            if decompressed:  # before the file: a file at its final path always has its record
                with atomic_write(_published_record(final)) as record:
                    record.write(f"{digest}  {source.name}\n")
            try:
                _place(part, final, name if decompressed else None, source.location)
            except UserError:
                _published_record(final).unlink(missing_ok=True)
                raise
            log(f"{final}: from {source.location}")
        results.append(final)
    return results


def _published_record(final: Path) -> Path:
    """Where the sha256 of the file as published is kept beside ``final``, its decompressed content (in
    ``sha256sum``'s format), so that a pinned sha256 can be checked against it on a later run."""
    return final.with_name(f".{final.name}.sha256")


def _check_present(final: Path, source: Source, decompressed: bool) -> None:
    """A file already at ``final`` is kept only as what ``source`` pins, where it pins a sha256.

    Otherwise an error, not a download over it: the file may be the user's own, or another source's of the same
    name from an earlier run, and nothing already there is lost without their word.
    """
    if source.sha256 is None:
        return
    if not decompressed:
        digest = _sha256(final)
    else:
        record = _published_record(final)
        digest = record.read_text().split()[0] if record.exists() else None
    if digest == source.sha256:
        return
    found = f"it was decompressed from a file of sha256 {digest}" if decompressed else f"its sha256 is {digest}"
    if digest is None:
        found = f"no {_published_record(final).name} beside it says what it was decompressed from"
    raise UserError(f"{final}: present, but {source.location} pins sha256 {source.sha256} and {found}; move or "
                    f"remove it to fetch the source, or correct the pin")


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
    _place(part, output, None, source.location)
    if lock is not None:
        lock.record(source.location, digest)
    log(f"{output}: from {source.location}")
    return output


def _fetch_verified(source: Source, part: Path, retries: int, timeout: float, log, expected: str | None = None,
                    origin: str = "as pinned", where: str | None = None, hashed: bool = False) -> str | None:
    """Fetch ``source`` into ``part`` and check its sha256 against ``expected`` (default: the source's own);
    returns the sha256 when it was computed (a check, or ``hashed``)."""
    expected = expected or source.sha256
    if source.is_http:
        _fetch_http(source, part, retries, timeout, log, pinned=expected is not None)
    else:
        _fetch_local(source, part)
    return _verify(source, part, expected, origin, where, hashed)


def _fetch_local(source: Source, part: Path) -> None:
    path = Path(_local_path(source) or source.location)
    if not path.is_file():
        raise UserError(f"{source.location}: source file not found")
    shutil.copyfile(path, part)


def _fetch_http(source: Source, part: Path, retries: int, timeout: float, log, pinned: bool) -> None:
    """Download into ``part``, resuming from its current length where that is safe (:func:`_transfer`); retry a
    broken transfer."""
    url = fetch_url(source.location)
    named = source.location if url == source.location else f"{source.location} ({url})"
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, timeout, pinned)
            return
        except urllib.error.HTTPError as exc:
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


def _transfer(url: str, part: Path, timeout: float, pinned: bool) -> None:
    """One attempt at ``url``: the rest of ``part`` where the server shows that the file did not change since
    ``part`` began, the whole file otherwise.

    A rest of another file spliced onto ``part`` would make a file matching neither. What shows it: the server
    honours ``If-Range`` with the validator of the response ``part`` began with (a changed file comes whole, as a
    200), and its 206 starts where ``part`` ends, of the size the file had. Without a validator, only a pinned
    sha256 (``pinned``), checked afterwards, makes resuming safe. A server that ignores ``If-Range`` still names
    the file it sends in the 206's own validator.
    """
    have, headers, size = _resume_request(part, pinned)
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
            if response.status != 206:
                return _receive_whole(response, part)
            if _continues(response.headers, have, size, headers.get("If-Range")):
                return _receive(response, part, append=True)
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or not have:
            raise
        if _content_range(exc.headers)[1] == have:  # nothing after ``have`` of a file the .part's size: it is whole
            return
    _discard(part)  # a 206 of another piece or size, a 416 of another size
    _transfer(url, part, timeout, pinned)  # once: a request from byte 0 asks for no range to answer wrongly


def _resume_request(part: Path, pinned: bool) -> tuple[int, dict[str, str], int | None]:
    """The bytes ``part`` has, the headers that ask for the rest, and the file's size as first served; (0, {},
    None), ``part`` removed, where nothing would show that a rest belongs to it (:func:`_transfer`)."""
    have = part.stat().st_size if part.exists() else 0
    seen = _seen(part)
    if not have or not (seen.get("validator") or pinned):
        _discard(part)
        return 0, {}, None
    validator = {"If-Range": seen["validator"]} if seen.get("validator") else {}
    return have, {"Range": f"bytes={have}-", **validator}, seen.get("size")


def _resume_record(part: Path) -> Path:
    """Beside ``part``: the validator and size of the response it began with (:func:`_receive_whole`)."""
    return part.with_name(f"{part.name}.json")


def _seen(part: Path) -> dict:
    try:
        seen = read_json(_resume_record(part), "resume record")
    except UserError:  # none (a .part from before records were kept) or unreadable: it shows nothing
        return {}
    return seen if isinstance(seen, dict) else {}


def _discard(part: Path) -> None:
    """Remove ``part`` and its resume record: the next transfer starts from byte 0."""
    for path in (part, _resume_record(part)):
        path.unlink(missing_ok=True)


def _receive_whole(response, part: Path) -> None:
    """Start ``part`` over with the whole file, first recording what a later resume must show."""
    _discard(part)  # before the new record, so that a record never describes another file's bytes
    write_json(_resume_record(part), {"validator": _validator(response.headers),
                                      "size": _number(response.headers.get("Content-Length"))})
    _receive(response, part, append=False)


def _receive(response, part: Path, append: bool) -> None:
    expected = response.headers.get("Content-Length")
    received = 0
    with open(part, "ab" if append else "wb") as handle:
        while block := response.read(BLOCK):
            handle.write(block)
            received += len(block)
    if expected is not None and received != int(expected):
        raise http.client.IncompleteRead(b"", int(expected) - received)


def _validator(headers) -> str | None:
    """What ``If-Range`` may send back: a strong ETag, else Last-Modified (RFC 9110 13.1.5: never a weak ETag)."""
    etag = headers.get("ETag")
    return etag if etag and not etag.startswith("W/") else headers.get("Last-Modified")


def _continues(headers, have: int, size: int | None, validator: str | None) -> bool:
    """Whether a 206 is the rest of a .part of ``have`` bytes: it starts there, in a file of the recorded size, of
    the ``validator`` the .part began with where the 206 states one (a server that ignores If-Range answers a file
    changed at the same size with a 206 of the new file, which only its validator tells)."""
    start, total = _content_range(headers)
    now = _validator(headers)
    return start == have and (size is None or total == size) and (validator is None or now in (None, validator))


def _content_range(headers) -> tuple[int | None, int | None]:
    """The first byte and the file's size that a Content-Range states (``bytes 100-199/200``, ``bytes */200``),
    each None where it states none."""
    match = _CONTENT_RANGE.fullmatch(headers.get("Content-Range", "").strip())
    return (None, None) if match is None else (_number(match[1]), _number(match[2]))


def _number(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def _verify(source: Source, part: Path, expected: str | None, origin: str, where: str | None,
            hashed: bool) -> str | None:
    if expected is None and not hashed:
        return None
    digest = _sha256(part)
    if expected is not None and digest != expected:
        _discard(part)
        raise UserError(f"{f'{where}: ' if where else ''}{source.location}: sha256 mismatch: expected {expected} "
                        f"({origin}), got {digest} (the download was removed)")
    return digest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _place(part: Path, final: Path, compressed_name: str | None, location: str) -> None:
    """Move ``part`` to ``final``, decompressing it as its suffix in ``compressed_name`` says; its resume record
    goes too. Damaged data is an error naming ``location``, and ``part`` is removed: resumed, it would only fail
    again, however the source was mended. ``final`` is one source's file, of no pieces: a line origins record
    beside it (an earlier ``--output`` concatenation's) goes."""
    if compressed_name is None:
        os.replace(part, final)
    else:
        try:
            with open_decompressed(part, compressed_name, location) as reader, atomic_write(final, "wb") as writer:
                shutil.copyfileobj(reader, writer, BLOCK)
        except UserError as exc:
            _discard(part)
            raise UserError(f"{exc} (the download was removed)") from exc
    remove_origins(final)
    _discard(part)


def download_to_file(sources: Sequence[Source], output: str | os.PathLike, retries: int = 3, log=print) -> Path:
    """Fetch, verify and decompress every source, then concatenate them in order into ``output``.

    The shards are kept in ``.<output name>.download/`` beside it until the file is complete, so
    an interrupted run resumes; each shard is ended with a newline so JSONL lines never merge.
    Which lines came from which source is recorded beside it (:mod:`kotomamba.data.line_origins`).
    """
    output = Path(output)
    work = output.with_name(f".{output.name}.download")
    expanded = expand_globs(sources)
    # A shard is kept under its location's digest before its name: sources may share a name (en/train.jsonl,
    # ja/train.jsonl), and a rerun with other sources must not take one's shard for another's.
    names = [f"{hashlib.sha256(s.location.encode()).hexdigest()[:16]}-{s.name}" for s in expanded]
    paths = _fetch_all(expanded, names, work, True, retries, 60.0, log)
    pieces = [(source.location, count_lines(path)) for source, path in zip(expanded, paths)]
    # The record describes the file as written (its size and mtime), so it is written after it: an earlier
    # record beside it matches the new file no more, and a failed write leaves the old file with its own.
    with atomic_write(output, "wb") as writer:
        for path in paths:
            last = b"\n"
            with open(path, "rb") as reader:
                while block := reader.read(BLOCK):
                    writer.write(block)
                    last = block[-1:]
            if last != b"\n":
                writer.write(b"\n")
    write_origins(output, pieces)
    shutil.rmtree(work)
    return output


def _count(text: str) -> int:
    """A count for argparse: a whole number, 0 or more."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number, 0 or more, got {text!r}")
    return int(text)


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
    parser.add_argument("--retries", type=_count, default=3, help="resumed retries of a broken HTTP transfer")
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
        return report("download", exc)
    return 0
