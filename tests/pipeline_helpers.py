"""Running the real pipeline from tests: a small two-stage run config, `snakemake` in a subprocess, and
the dataset one tokenization job writes, to compare the pipeline's with."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from kotomamba.data.preprocess import preprocess

REPO = Path(__file__).resolve().parents[1]


def tiny_config(run: str = "tiny") -> dict:
    """The embedded default, shrunk: a small corpus and vocabulary, two short stages."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["run"] = run
    config["corpus"]["sources"][0]["max_bytes"] = 400_000
    config["tokenizer"]["vocab_size"] = 1000
    config["stages"][0]["train"]["train"] = {"steps": 40}
    config["stages"][0]["train"]["data"] = {"seq_length": 64}
    config["stages"][1]["train"]["train"] = {"steps": 6, "micro_batch_size": 4}
    config["stages"][1]["train"]["data"] = {"seq_length": 128}
    config["train"]["eval"] = {"interval": 20, "steps": 2}
    config["train"]["checkpoint"] = {"interval": 20, "keep_last": 2}
    config["evaluate"].update(seq_length=128, eval_samples=8, max_new_tokens=8)
    return config


def snakemake_command(workdir: Path, config_file: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
            "--configfile", str(config_file), "--cores", "2", *args]


def snakemake(workdir: Path, config_file: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(snakemake_command(workdir, config_file, *args), capture_output=True, text=True,
                          timeout=1500)


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts from a dry run's 'Job stats' table."""
    table = result.stdout.split("Job stats:")[-1] if "Job stats:" in result.stdout else ""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def output_of(result: subprocess.CompletedProcess) -> str:
    return result.stdout[-4000:] + result.stderr[-4000:]


def one_job(workdir: Path, tokenizer: Path, pieces: list[bytes], name: str) -> tuple[bytes, bytes]:
    """The dataset one `preprocess` job writes from the shards decompressed and concatenated
    (the pipeline's settings: SentencePiece, key `text`, an end-of-document token)."""
    joined = workdir / f"{name}.one.jsonl"
    joined.write_bytes(b"".join(piece if piece.endswith(b"\n") else piece + b"\n" for piece in pieces))
    preprocess([str(joined)], str(workdir / f"{name}.one"), "SentencePieceTokenizer", str(tokenizer),
               append_eod=True, workers=1, progress=False)
    return files_of(workdir / f"{name}.one_text_document")


def files_of(prefix) -> tuple[bytes, bytes]:
    """The (.bin, .idx) bytes of the dataset at `prefix`."""
    return Path(f"{prefix}.bin").read_bytes(), Path(f"{prefix}.idx").read_bytes()
