"""``kotomamba collect-corpus``: the embedded default corpus, the Python standard library's docstrings.

Real English prose and code nobody on this project wrote, available offline wherever Python is.
Every standard-library module (``sys.stdlib_module_names``) and its submodules are imported in a
child process (so import side effects stay there), skipping modules that act on import
(``antigravity``, ``this``, ``__hello__``, GUI toolkits, ``idlelib``, ``turtle*``, ``readline``),
private modules, ``__main__`` modules and test packages; modules that fail to import are skipped.

The language-reference topics that ``help()`` shows (``pydoc_data.topics``) are included too.

Output: one JSON object per line, ``{"text": docstring, "source": "module.qualname"}``, sorted by
source, each text once (its first source in sorted order). The result depends only on the Python
version (the caller records it). ``--max-bytes`` keeps a deterministic, module-diverse subset.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import importlib
import inspect
import io
import json
import multiprocessing
import os
import pkgutil
import sys
import warnings
from contextlib import redirect_stderr, redirect_stdout
from types import ModuleType

from kotomamba.errors import UserError, report
from kotomamba.io import atomic_write, check_output

# Modules that open windows or browsers, print, or start interactive machinery when imported.
SKIP_TOP_LEVEL = frozenset({
    "antigravity", "this", "__hello__", "__phello__", "idlelib", "tkinter", "turtle", "turtledemo",
    "readline", "test", "lib2to3", "ensurepip",
})
SKIP_PARTS = frozenset({"test", "tests", "idle_test", "__main__"})
MIN_CHARS = 40  # shorter docstrings ("Return self==value.") are boilerplate, not prose


def stdlib_module_names() -> list[str]:
    """Importable names of public standard-library modules and their submodules, sorted."""
    names = []
    for top in sorted(getattr(sys, "stdlib_module_names", ())):
        if top.startswith("_") or top in SKIP_TOP_LEVEL:
            continue
        names.append(top)
        spec = importlib.util.find_spec(top) if _safe_find(top) else None
        if spec is None or not spec.submodule_search_locations:
            continue
        for info in pkgutil.walk_packages(spec.submodule_search_locations, prefix=f"{top}.", onerror=lambda _: None):
            parts = info.name.split(".")
            if any(p.startswith("_") or p in SKIP_PARTS for p in parts[1:]):
                continue
            names.append(info.name)
    return sorted(set(names))


def _safe_find(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _docstrings_of(module: ModuleType) -> list[tuple[str, str]]:
    """(source, cleaned docstring) of the module, its own classes and functions, and their members.

    Private and special names are included: their docstrings are prose too, and the boilerplate
    ones (``__eq__``'s "Return self==value.") are removed by deduplication.
    """
    found = []

    def add(source: str, obj) -> None:
        doc = obj.__doc__ if isinstance(getattr(obj, "__doc__", None), str) else None
        if doc:
            text = inspect.cleandoc(doc).strip()
            if len(text) >= MIN_CHARS:
                found.append((source, text))

    name = module.__name__
    add(name, module)
    for attr in sorted(vars(module)):
        obj = vars(module)[attr]
        if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj)):
            continue
        if getattr(obj, "__module__", None) != name:  # re-exported from elsewhere: counted there
            continue
        add(f"{name}.{attr}", obj)
        if inspect.isclass(obj):
            for member_name in sorted(vars(obj)):
                member = vars(obj)[member_name]
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if inspect.isfunction(member) or inspect.ismethoddescriptor(member) or isinstance(member, property):
                    add(f"{name}.{attr}.{member_name}", member)
    return found


def collect_docstrings() -> list[tuple[str, str]]:
    """Every docstring, imported here (call in a child process: imports have side effects)."""
    records = []
    for name in stdlib_module_names():
        sink = io.StringIO()
        try:
            with warnings.catch_warnings(), redirect_stdout(sink), redirect_stderr(sink):
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - any import failure (missing platform, optional lib) just skips
            continue
        records.extend(_docstrings_of(module))
        if name == "pydoc_data.topics":  # the language reference text that help("topic") shows
            records.extend((f"{name}.{topic}", text.strip()) for topic, text in sorted(module.topics.items()))
    return records


def build_corpus(max_bytes: int | None = None) -> list[dict[str, str]]:
    """The corpus records, sorted by source, deduplicated, within ``max_bytes`` of JSONL if given.

    Raises:
        UserError: no docstrings found, or none that fits ``max_bytes``.
    """
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as executor:
        records = executor.submit(collect_docstrings).result()
    seen: set[str] = set()
    unique = []
    for source, text in sorted(records):
        if text not in seen:
            seen.add(text)
            unique.append({"text": text, "source": source})
    if not unique:
        raise UserError("collect-corpus found no docstrings (is this a full Python installation?)")
    return unique if max_bytes is None else _within(unique, max_bytes)


def _within(records: list[dict[str, str]], max_bytes: int) -> list[dict[str, str]]:
    """The records that fit ``max_bytes`` of JSONL, chosen by a hash of the source so that a small budget still
    spans many modules; sorted by source."""
    chosen, size = [], 0
    for record in sorted(records, key=lambda r: hashlib.sha256(r["source"].encode()).digest()):
        length = len(_line(record).encode("utf-8"))
        if size + length <= max_bytes:
            chosen.append(record)
            size += length
    if not chosen:
        smallest = min(len(_line(record).encode("utf-8")) for record in records)
        raise UserError(f"--max-bytes {max_bytes} is less than any document takes (the smallest: {smallest} bytes "
                        "of JSONL): ask for more")
    return sorted(chosen, key=lambda r: r["source"])


def _line(record: dict[str, str]) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def write_corpus(output: str | os.PathLike, max_bytes: int | None = None) -> int:
    """Write the corpus JSONL atomically; returns the number of documents."""
    check_output(output, "--output")
    records = build_corpus(max_bytes)
    with atomic_write(output, "w", encoding="utf-8") as handle:
        handle.writelines(_line(r) for r in records)
    return len(records)


def _positive(text: str) -> int:
    """A byte budget: a whole number of at least 1 (argparse names the option when it is not)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kotomamba collect-corpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="JSONL file to write")
    parser.add_argument("--max-bytes", type=_positive, default=None, help="keep at most this many bytes of JSONL")
    args = parser.parse_args(argv)
    try:
        count = write_corpus(args.output, args.max_bytes)
    except UserError as exc:
        return report("collect-corpus", exc)
    print(f"{args.output}: {count} documents (Python {sys.version.split()[0]} standard library docstrings)")
    return 0
