"""Throughput of ``kotomamba train`` itself, one process per setting: what a user gets from a config.

bench/train_throughput.py times the trainer's step in a loop of its own; this runs the real trainer
(``python -m kotomamba train``: data loader, logging, the step the job chooses) on a generated corpus and
reads the tokens/s that the trainer logs in ``metrics.jsonl``. Each variant is a list of dotted
overrides of one base config (``default`` = none); variants alternate over ``--rounds`` fresh processes.

The corpus: random token ids (uniform over the vocabulary, so nothing is learnt and nothing is
faster for it), split into documents of geometric length (mean ``--doc-tokens``) ending in EOD, with
a word-level tokenizer of ``--vocab`` entries (50,277: GPT-NeoX-20B's size, as the published recipes).
The base config: ``--preset``, one micro-batch of ``--micro-batch`` x ``--seq`` tokens per step, no
evaluation, the trainer's defaults for everything else (so ``data.reset_at_eod: true`` and
``parallel.cuda_graph: auto``). Each process's figure is the median of the logged windows after
``--skip`` steps (start-up, autotuning and the graph's capture fall in those).

``--tree NAME=DIR`` also runs every variant on another version of the library (DIR holds its
``kotomamba`` package), as the rows ``VARIANT @ NAME``. Every process starts in the scratch folder with
its library's folder (DIR, or this checkout) first on PYTHONPATH, and the bench checks which package it
imports: ``python -m`` puts the working directory before PYTHONPATH, so a process started in a
checkout would run that checkout's package whatever the tree. Two versions
compare only within one run, as two GPU machines of the same kind can differ by several percent. A tree
of commit REV: ``mkdir -p DIR && git archive REV kotomamba | tar -x -C DIR``.

    python bench/trainer_throughput.py --preset mamba2-130m --micro-batch 16 --steps 40 \\
        --variants "default;parallel.cuda_graph=false" --rounds 2 --json out.json --markdown entry.md
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from kotomamba.train.metrics_file import read_metrics
from kotomamba.train.run_dir import RunDir


def make_corpus(root: Path, vocab: int, tokens: int, doc_tokens: int, seed: int = 0) -> tuple[str, str]:
    """A word-level ``tokenizer.json`` of ``vocab`` entries (the last is EOD) and about ``tokens`` random tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from kotomamba.data.indexed_dataset import IndexedDatasetWriter

    eod = vocab - 1
    tokenizer = Tokenizer(models.WordLevel({f"w{i}": i for i in range(eod)} | {"</s>": eod}, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(root / "tokenizer.json"))
    rng = np.random.default_rng(seed)
    prefix = root / "corpus_text_document"
    dtype = np.uint16 if vocab < 65500 else np.int32
    with IndexedDatasetWriter(str(prefix), dtype) as writer:
        written = 0
        while written < tokens:
            length = int(rng.geometric(1.0 / doc_tokens))
            writer.add_document(np.append(rng.integers(0, eod, length), eod).astype(dtype))
            written += length + 1
    return str(root / "tokenizer.json"), str(prefix)


def base_config(args, tokenizer: str, prefix: str) -> dict:
    return {
        "seed": 1,
        "model": {"preset": args.preset},
        "data": {"data_path": f"1.0 {prefix}", "split": "99,1,0", "seq_length": args.seq,
                 "tokenizer_type": "HuggingFaceTokenizer", "tokenizer_model": tokenizer},
        "train": {"micro_batch_size": args.micro_batch, "global_batch_size": args.micro_batch, "steps": args.steps},
        "schedule": {"warmup_steps": 2},
        "eval": {"interval": 0, "steps": 0, "final": False},
        "checkpoint": {"interval": 0, "keep_last": 1},
        "logging": {"interval": args.log_interval},
    }


def library_env(folder: Path) -> dict:
    """The environment of a process that imports ``kotomamba`` from ``folder``."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)}


def check_library(folder: Path, scratch: Path) -> None:
    """Fails unless a process started the way :func:`run_variant` starts one imports ``folder``'s package."""
    said = subprocess.run([sys.executable, "-c", "import kotomamba; print(kotomamba.__file__)"], cwd=scratch,
                          env=library_env(folder), capture_output=True, text=True, timeout=120)
    imported = Path(said.stdout.strip()).resolve() if said.returncode == 0 else None
    if imported != folder / "kotomamba" / "__init__.py":
        raise SystemExit(f"a process meant to run {folder}/kotomamba imported {imported}: {said.stderr[-2000:]}")


def run_variant(args, scratch: Path, config: dict, name: str, overrides: list[str], round_: int,
                library: Path) -> dict:
    """One fresh ``kotomamba train`` process on the ``kotomamba`` package of the folder ``library``; its
    chosen step, median tokens/s and memory reserved."""
    run_dir = scratch / f"run-{round_}-{len(list(scratch.glob('run-*')))}"
    path = run_dir.with_suffix(".yaml")
    path.write_text(yaml.safe_dump({**config, "run_dir": str(run_dir)}))
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "kotomamba", "train", "--config", str(path), *overrides],
                          capture_output=True, text=True, timeout=args.timeout, env=library_env(library), cwd=scratch)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{name}: exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    said = [line.split("training step: ", 1)[1] for line in done.stdout.splitlines() if "training step: " in line]
    records = read_metrics(RunDir(run_dir).metrics)
    # The final checkpoint is not read, and a few of them at 2.7b (weights and optimizer state, about
    # 16 bytes a parameter) fill a GPU machine's disk.
    shutil.rmtree(RunDir(run_dir).checkpoints, ignore_errors=True)
    timed = [r for r in records if "tokens_per_s" in r and r["step"] > args.skip]
    if not timed:
        raise SystemExit(f"{name}: no logged window after step {args.skip}")
    return {"variant": name, "round": round_, "step": said[0] if said else "?", "process_s": seconds,
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in timed),
            "windows": [round(r["tokens_per_s"]) for r in timed],
            "mfu": statistics.median(r["mfu"] for r in timed) if timed[0].get("mfu") is not None else None,
            # Reserved, not allocated: a captured step's memory sits in its graph pool, allocated once at capture
            # (before the timed windows), so only the reserved figure shows what each step needs.
            "reserved_gib": max(r.get("memory/max_reserved_gib", float("nan")) for r in timed)}


def summarize(runs: list[dict], names: list[str]) -> list[dict]:
    """Per variant: the median over processes of their medians, the range over processes."""
    rows = []
    for name in names:
        mine = [r for r in runs if r["variant"] == name]
        rates = [r["tokens_per_s"] for r in mine]
        rows.append({"variant": name, "step": mine[0]["step"], "tokens_per_s": statistics.median(rates),
                     "min": min(rates), "max": max(rates), "processes": len(mine),
                     "mfu": statistics.median(r["mfu"] for r in mine) if mine[0]["mfu"] is not None else None,
                     "reserved_gib": max(r["reserved_gib"] for r in mine)})
    first = rows[0]["tokens_per_s"]
    for row in rows:
        row["vs_first"] = row["tokens_per_s"] / first
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| variant | step the trainer chose | tokens/s (median [range] over processes) | vs first | MFU | reserved GiB |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] else "-"
        lines.append(f"| {r['variant']} | {r['step']} | {r['tokens_per_s']:,.0f} [{r['min']:,.0f}-{r['max']:,.0f} "
                     f"over {r['processes']}] | {r['vs_first']:.3f}x | {mfu} | {r['reserved_gib']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="mamba2-130m")
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--log-interval", type=int, default=5)
    parser.add_argument("--skip", type=int, default=10, help="steps left out of the figure (start-up, capture)")
    parser.add_argument("--vocab", type=int, default=50277)
    parser.add_argument("--doc-tokens", type=int, default=1000, help="mean document length in the corpus")
    parser.add_argument("--variants", default="default;parallel.cuda_graph=false",
                        help="';'-separated variants, each 'default' or space-separated dotted overrides")
    parser.add_argument("--rounds", type=int, default=1, help="processes per variant, alternating (order reversed every other round)")
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=DIR",
                        help="also run every variant with the kotomamba package of DIR (repeatable)")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--scratch", default=None, help="where the corpus and the runs go (default: a temporary folder)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", default=None, help="append the table and the command here")
    args = parser.parse_args()
    if args.skip >= args.steps:
        parser.error("--skip must be below --steps")
    trees = {None: Path(__file__).resolve().parents[1]}
    for spec in args.tree:
        tree_name, _, folder = spec.partition("=")
        if not tree_name or not (Path(folder) / "kotomamba" / "__init__.py").is_file():
            parser.error(f"--tree {spec}: expected NAME=DIR with DIR/kotomamba/__init__.py")
        trees[tree_name] = Path(folder).resolve()

    variants = [v.strip() for v in args.variants.split(";") if v.strip()]
    # (row name, overrides, library folder)
    runnable = [(v if t is None else f"{v} @ {t}", [] if v == "default" else v.split(), folder)
                for t, folder in trees.items() for v in variants]
    names = [name for name, _, _ in runnable]
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="kotomamba-trainer-bench-")).resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    for folder in trees.values():
        check_library(folder, scratch)
    # The corpus holds every step's tokens with room for the 1% validation split and the sample shuffle.
    tokenizer, prefix = make_corpus(scratch, args.vocab, int(args.steps * args.micro_batch * (args.seq + 1) * 1.1),
                                    args.doc_tokens)
    config = base_config(args, tokenizer, prefix)
    runs = []
    for round_ in range(args.rounds):
        for name, overrides, folder in (runnable if round_ % 2 == 0 else runnable[::-1]):
            run = run_variant(args, scratch, config, name, overrides, round_, folder)
            runs.append(run)
            print(json.dumps(run), flush=True)
    rows = summarize(runs, names)
    table = markdown_table(rows)
    print("\n" + table)
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "rows": rows}, indent=2))
    if args.markdown:
        command = "python bench/trainer_throughput.py " + " ".join(
            f"'{a}'" if " " in a or ";" in a else a for a in sys.argv[1:])
        with open(args.markdown, "a", encoding="utf-8") as handle:
            handle.write(f"`{command}`\n\n{table}\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
