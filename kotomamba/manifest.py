"""Provenance of an artifact: code revision, package versions, platform and input checksums.

Every run directory carries one (design principle 5), so a result can be traced to exactly what made it
and reproduced from it.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path

PACKAGES = ("kotomamba", "torch", "numpy", "sentencepiece", "tokenizers", "transformers", "safetensors",
            "snakemake", "mamba-ssm", "causal-conv1d", "triton")


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (corpus files can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def git_revision() -> dict:
    """The checkout's commit and whether it had uncommitted changes (None outside a git checkout)."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if commit is None else bool(dirty)}


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def build_manifest(inputs: list[str | Path] = (), **extra) -> dict:
    """The manifest of an artifact made from ``inputs`` (checksummed) plus ``extra`` fields."""
    return {
        "git": git_revision(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "inputs": {str(path): sha256_file(path) for path in inputs},
        **extra,
    }
