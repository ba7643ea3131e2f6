"""A run's lock file: the sha256 of every remote input as first downloaded, checked on every later download.

A remote input (a corpus shard, a tokenizer file, an initial checkpoint's file) that its config pins with a
sha256 is checked against that pin. One that is not pinned (no published checksum, or a hub revision that is
a branch) is trusted on first use: its sha256 is recorded here when it is first downloaded, and any later
download of it (another machine sharing the project directory, a download redone after its file was
removed) must match, or fails naming this file. A pinned input is recorded too, so the file lists every
remote input of the run with its checksum.

The file is YAML, one ``reference: sha256`` line per input, keyed by the reference as the config writes it
(the ``hf://`` form, not the URL of one endpoint, so a mirror serves the same entries). Download jobs run
at once, on several nodes of a shared file system: each update takes an exclusive ``flock`` on a lock file
beside it, reads, adds its entry and replaces the file atomically.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

import yaml

from kotomamba.errors import UserError
from kotomamba.io import atomic_write, yaml_problem

HEADER = ("# sha256 of each remote input of this run as first downloaded (trust on first use); a later download\n"
          "# must match. Remove an entry to accept a source that changed on purpose.\n")


class InputLock:
    """The lock file at ``path`` (created on the first record)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def _read(self) -> dict[str, str]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            entries = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"{self.path}: not a lock file: {yaml_problem(exc)}") from None
        if not isinstance(entries, dict) or not all(isinstance(v, str) for v in entries.values()):
            raise UserError(f"{self.path}: expected a mapping of input -> sha256")
        return entries

    def get(self, reference: str) -> str | None:
        """The sha256 recorded for ``reference``, if any."""
        return self._read().get(reference)

    @contextlib.contextmanager
    def _exclusive(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.flock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def record(self, reference: str, sha256: str) -> None:
        """Record ``reference``'s sha256 (replacing an older entry: the caller has checked it)."""
        with self._exclusive():
            entries = self._read()
            if entries.get(reference) == sha256:
                return
            entries[reference] = sha256
            with atomic_write(self.path, "w", encoding="utf-8") as handle:
                handle.write(HEADER)
                yaml.safe_dump(dict(sorted(entries.items())), handle, width=1000)
