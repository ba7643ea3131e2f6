"""Training metrics: where they go (``metrics.jsonl``, the console, trackers), and memory figures.

Every log step writes one JSON object to ``<run_dir>/metrics.jsonl`` (appended, flushed) and a line
to the console (a tqdm progress bar when stderr is a terminal); trackers (wandb, TensorBoard) get
the same dict. Only rank 0 writes.
"""
from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path

import torch

from kotomamba.io import atomic_write
from kotomamba.train.banner import duration
from kotomamba.train.metrics_file import read_metrics
from kotomamba.train.run_dir import RunDir


def memory_stats(device: torch.device) -> dict[str, float]:
    """Peak accelerator memory since the last call (GiB), or the process's peak RSS on CPU."""
    if device.type == "cuda":
        stats = {
            "memory/max_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            "memory/max_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
        }
        torch.cuda.reset_peak_memory_stats(device)
        return stats
    return {"memory/max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


class MetricsSink:
    """Rank 0's outputs: ``metrics.jsonl``, the console and the trackers."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, trackers: list):
        path = RunDir(run_dir).metrics
        if path.exists():
            # A resumed run repeats the steps after its checkpoint: drop the records it will write again.
            # metrics.jsonl is a log, not what the run resumes from: a damaged line (a corrupt one, or an
            # earlier torn line that appends went on after) does not stop training. Its good records stay
            # (so the steps up to the checkpoint keep their numbers and the resumed steps are not logged
            # twice); the file as it was is kept beside it, named in a warning, so that nothing the user
            # may want to inspect or mend is lost.
            damaged: list[str] = []
            kept = [json.dumps(record, sort_keys=True) + "\n" for record in read_metrics(path, damaged=damaged)
                    if record["step"] <= start_step]
            if damaged:
                aside = _free_name(path.with_name(path.name + ".damaged"))
                os.replace(path, aside)
                print(f"kotomamba train: warning: {damaged[0]}"
                      f"{f' (and {len(damaged) - 1} more)' if len(damaged) > 1 else ''}: the damaged file is kept "
                      f"as {aside}; {path} goes on with its {len(kept)} readable records", flush=True)
            with atomic_write(path) as handle:
                handle.writelines(kept)
        self.file = open(path, "a")
        self.trackers = trackers
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def log(self, record: dict) -> None:
        self.file.write(json.dumps(record, sort_keys=True) + "\n")
        self.file.flush()
        for tracker in self.trackers:
            tracker.log(record)
        line = _console_line(record)
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        for tracker in self.trackers:
            tracker.close()
        self.file.close()


def _free_name(path: Path) -> Path:
    """``path``, or ``path.2``, ``path.3`` ...: the first that does not exist (an earlier one is never replaced)."""
    candidate, copies = path, 1
    while candidate.exists():
        copies += 1
        candidate = path.with_name(f"{path.name}.{copies}")
    return candidate


def _console_line(record: dict) -> str:
    keys = ("loss", "val_loss", "grad_norm", "lr", "tokens_per_s", "tflops", "mfu", "skipped_nonfinite")
    parts = [f"step {record['step']}"]
    for key in keys:
        value = record.get(key)
        if value is None:
            continue
        parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    if record.get("eta_s") is not None:
        parts.append(f"eta {duration(record['eta_s'])}")
    return " | ".join(parts)
