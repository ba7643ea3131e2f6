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
import signal
import tempfile
import threading
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
    """Parse the YAML file ``path`` (safe types only); a ``UserError`` names the file (as ``what``) and
    the line, also for a key written twice in one mapping (:func:`parse_yaml`)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            return parse_yaml(handle, str(path))[0]
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: invalid {what}: {yaml_problem(exc)}") from exc
    except OSError as exc:
        raise UserError(f"{path}: cannot read the {what}: {exc.strerror}") from exc


def yaml_problem(exc: Exception) -> str:
    """A PyYAML error in one line (``line L, column C: context: problem``): its own text spans several lines
    and names the file again, which breaks a one-line error."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    context = getattr(exc, "context", None)
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
    return f"{where}{context + ': ' if context else ''}{problem}"


def parse_yaml(stream: str | IO, source: str) -> tuple[Any, Any]:
    """The data of one YAML document (``yaml.safe_load``'s) and its composed node (line marks; None for an
    empty document). A key written twice in one mapping, at any depth, is a ``UserError`` naming ``source``,
    both lines and the key path: PyYAML would silently keep the last one. ``yaml.YAMLError`` is the
    caller's to word."""
    import yaml

    loader = yaml.SafeLoader(stream)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        refuse_duplicate_keys(node, source)
        return loader.construct_document(node), node
    finally:
        loader.dispose()


def refuse_duplicate_keys(node: Any, source: str, path: str = "") -> None:
    """Raise ``UserError`` (``source:LINE: a.b: duplicate key (first written at line N)``) for the first key
    of a composed YAML ``node`` that a mapping holds twice."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            dotted = f"{path}.{key_node.value}" if path else key_node.value
            line = key_node.start_mark.line + 1
            if key_node.value in seen:
                raise UserError(f"{source}:{line}: {dotted}: duplicate key (first written at line "
                                f"{seen[key_node.value]}; YAML would keep only the last)")
            seen[key_node.value] = line
            refuse_duplicate_keys(value_node, source, dotted)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            refuse_duplicate_keys(item, source, f"{path}[{index}]")


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


def check_output(path: str | os.PathLike, flag: str = "", directory: bool = False) -> None:
    """Refuse an output ``path`` (a file, or with ``directory`` a directory) that cannot be written, naming it (and the
    option ``flag`` that gave it): called before the work, so that a run does not end in a raw OSError after it.

    Refused: a file output where a directory is (or a directory output where a file is), and a path below a file or
    below a directory this user may not write in (the nearest one that exists: the rest would be made).
    """
    given = f"{path}{f' ({flag})' if flag else ''}"
    path = Path(path)
    if path.exists() and path.is_dir() != directory:
        wanted, found = ("directory", "file") if directory else ("file", "directory")
        raise UserError(f"{given}: is a {found}, not a {wanted}")
    above = path.parent
    while not above.exists():
        above = above.parent
    if not above.is_dir():
        raise UserError(f"{given}: cannot be written: {above} is a file, not a directory")
    if not os.access(above, os.W_OK | os.X_OK):
        raise UserError(f"{given}: cannot be written: no permission to write in {above}")


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
    check_output(path)
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
    """Yield an empty temporary sibling directory; on success what it holds becomes ``path``.

    A ``path`` that exists is replaced only when all it holds (every file and directory below it) is something the
    new output holds too: a rerun over its own earlier output. Anything else there is the user's and is never
    deleted: the output is refused (a UserError naming ``path`` and what is foreign there), ``path`` left as it was,
    before anything in it is replaced. An existing ``path`` keeps its own directory (its mode, a link to it, a
    shell's working directory): the new entries replace the old ones inside it.

    On an exception the temporary directory is removed and ``path`` is left as it was; one for want of room is
    an OSError naming ``path``.
    """
    given = path
    check_output(path, directory=True)
    path = Path(os.path.abspath(path))  # "." and "out/" have a name and a parent to stage beside
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        tmp.chmod(0o777 & ~current_umask())
        yield tmp
        if path.is_dir():
            _refuse_foreign(given, _not_in(path, tmp))
            _move_entries(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException as exc:
        named = _for_want_of_room(exc, path) if isinstance(exc, Exception) else None
        shutil.rmtree(tmp, ignore_errors=True)
        if named is not None:
            raise named from exc
        raise


def _not_in(old: Path, new: Path) -> list[str]:
    """What ``old`` holds (relative paths, a foreign directory once, not its contents) that ``new`` does not."""
    missing = []
    for root, dirs, files in os.walk(old):
        here = Path(root).relative_to(old)
        missing += [str(here / name) for name in sorted(dirs + files) if not os.path.lexists(new / here / name)]
        dirs[:] = [name for name in dirs if os.path.lexists(new / here / name)]
    return missing


def _refuse_foreign(given: str | os.PathLike, foreign: list[str]) -> None:
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UserError(f"{given}: not replaced, it holds what this output does not ({shown}): name a new or empty "
                        "directory, or move those away")


def _move_entries(new: Path, path: Path) -> None:
    """Move every entry of ``new`` into the directory ``path``, in place of an old one of the same name; then remove
    ``new``.

    Every old entry leaves (into a trash directory inside ``new``) before the first new one arrives, and Ctrl-C or
    SIGTERM waits for the renames to end: an output stopped half-way must never hold new files beside old ones (a
    new config.json beside the old weights loads, and is wrong), only fewer of the new ones.
    """
    names = os.listdir(new)
    trash = Path(tempfile.mkdtemp(dir=new))
    with _stop_signals_held():
        for name in names:
            if os.path.lexists(path / name):
                os.replace(path / name, trash / name)
        for name in names:
            os.replace(new / name, path / name)
    shutil.rmtree(new)


@contextlib.contextmanager
def _stop_signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM that arrive inside wait until it ends, then take their course (their handlers as before).
    Only the main thread can set handlers; elsewhere nothing is held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    before = {number: signal.signal(number, lambda number, _frame: arrived.append(number)) for number in held}
    try:
        yield
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(arrived):
            signal.raise_signal(number)
