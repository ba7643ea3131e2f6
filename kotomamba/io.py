"""Reading JSON and YAML files with errors that name the file and line, and atomic writes: nothing
half-written ever appears at a final path.

Every final artifact is written under a temporary name in the same directory (same filesystem, so
``os.replace`` is atomic) and moved into place only when complete. ``tempfile`` creates its files
0600 and directories 0700; ours get the modes ``open`` and ``mkdir`` would give (0666 / 0777 less the
user's umask), so shared project directories on clusters stay readable by the group.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from kotomamba.errors import UserError, out_of_space


def read_json(path: str | os.PathLike, what: str = "JSON") -> Any:
    """Parse the JSON file ``path``; a ``UserError`` names the file (as ``what``) and the line."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: line {exc.lineno}: invalid {what}: {exc.msg}") from exc
    except OSError as exc:
        raise UserError(f"{path}: cannot read the {what}: {exc.strerror}") from exc


def read_yaml(path: str | os.PathLike, what: str = "YAML") -> Any:
    """Parse the YAML file ``path`` (``yaml.safe_load``); a ``UserError`` names the file (as ``what``) and
    the line."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise UserError(f"{path}: {line}invalid {what} ({exc})") from exc
    except OSError as exc:
        raise UserError(f"{path}: cannot read the {what}: {exc.strerror}") from exc


def current_umask() -> int:
    """The process's umask, read without changing it where the kernel reports it (Linux >= 4.7).

    Setting and restoring it (the only portable way) briefly gives other threads a umask of 0,
    so it is the fallback only.
    """
    with contextlib.suppress(OSError):
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _for_want_of_room(exc: Exception, path: Path) -> OSError | None:
    """What to raise instead of ``exc``, raised while ``path`` was written, when it came for want of room
    (:func:`kotomamba.errors.out_of_space`): an OSError naming ``path``, as a write's own error names no file;
    None otherwise."""
    full = out_of_space(exc, where=path.parent)
    return None if full is None else OSError(full.errno, full.strerror, str(path))


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success fsync and rename it to ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was; one for want of room is an
    OSError naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
        with open(tmp, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        named = _for_want_of_room(exc, path) if isinstance(exc, Exception) else None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if named is not None:
            raise named from exc
        raise


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    """Write ``obj`` as JSON atomically (sorted keys, trailing newline)."""
    with atomic_write(path) as handle:
        json.dump(obj, handle, indent=indent, sort_keys=True)
        handle.write("\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``path`` (which may exist).

    On an exception the temporary directory is removed and ``path`` is left as it was; one for want of room is
    an OSError naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        tmp.chmod(0o777 & ~current_umask())
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as exc:
        named = _for_want_of_room(exc, path) if isinstance(exc, Exception) else None
        shutil.rmtree(tmp, ignore_errors=True)
        if named is not None:
            raise named from exc
        raise
