"""Shared by the trainer tests: a tiny real corpus and config, running ``kotomamba train``, reading a run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kotomamba.data.indexed_dataset import IndexedDatasetWriter
from kotomamba.train.checkpoint_files import read_model_state_dict
from kotomamba.train.run_dir import RunDir, resolve_checkpoint
from kotomamba.train.parallelize import cpu_sharding_supported

VOCAB = 64
EOD = VOCAB - 1

needs_cpu_sharding = pytest.mark.skipif(not cpu_sharding_supported(),
                                        reason="FSDP2 across CPU processes needs torch >= 2.7")


def make_corpus(root: Path) -> tuple[str, str]:
    """A word-level tokenizer.json of 64 tokens and 200 documents of predictable token runs."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(VOCAB - 1)} | {"</s>": EOD}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer_path = root / "tokenizer.json"
    tokenizer.save(str(tokenizer_path))
    rng = np.random.RandomState(0)
    prefix = root / "corpus_text_document"
    with IndexedDatasetWriter(str(prefix), np.uint16) as writer:
        for _ in range(200):
            start, stride, length = rng.randint(0, EOD), rng.randint(1, 4), rng.randint(8, 40)
            tokens = (start + stride * np.arange(length)) % EOD
            writer.add_document(np.append(tokens, EOD))
    return str(tokenizer_path), str(prefix)


def write_config(root: Path, run_dir: Path, **sections) -> Path:
    tokenizer, prefix = make_corpus(root) if not (root / "tokenizer.json").exists() else (
        str(root / "tokenizer.json"), str(root / "corpus_text_document"))
    config = {
        "run_dir": str(run_dir),
        "seed": 1,
        "model": {"preset": "tiny", "ssm_cfg": {"layer": "Mamba2"}, "n_layer": 2, "d_model": 32},
        "data": {"data_path": f"1.0 {prefix}", "split": "90,10,0", "seq_length": 32,
                 "tokenizer_type": "HuggingFaceTokenizer", "tokenizer_model": tokenizer},
        "train": {"micro_batch_size": 2, "global_batch_size": 4, "steps": 8},
        "optim": {"lr": 3.0e-3, "min_lr": 3.0e-4},
        "schedule": {"style": "cosine", "warmup_steps": 2},
        "eval": {"interval": 4, "steps": 1, "final": True},
        "checkpoint": {"interval": 4, "keep_last": 2},
        "logging": {"interval": 1},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values} if isinstance(values, dict) else values
    path = root / f"{run_dir.name}.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config))
    return path


def train_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_train(config: Path, *overrides: str, nproc: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    if nproc == 1:
        command = [sys.executable, "-m", "kotomamba", "train", "--config", str(config), *overrides]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                   "-m", "kotomamba", "train", "--config", str(config), *overrides]
    result = subprocess.run(command, env=train_env(), capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def launch_until_stopped(tmp_path: Path, nproc: int, **popen) -> tuple[RunDir, subprocess.Popen, Path]:
    """``kotomamba launch`` of ``nproc`` ranks training a run in ``tmp_path`` that would go on for 100,000
    steps, in a session of its own (for signals to its process group), its output in the returned log;
    ``popen``: more of ``subprocess.Popen``'s arguments."""
    run = RunDir(tmp_path / "run")
    config = write_config(tmp_path, run.root, train={"steps": 100000}, eval={"interval": 0, "final": False},
                          checkpoint={"interval": 0, "keep_last": 1})
    log = tmp_path / "job.log"
    with log.open("w") as handle:
        process = subprocess.Popen([sys.executable, "-m", "kotomamba", "launch", "--nproc-per-node", str(nproc), "--",
                                    "train", "--config", str(config)], env=train_env(), stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True, **popen)
    return run, process, log


def hooks_env() -> dict:
    """``train_env()`` in which ``python -m train_hooks`` (this directory's module) can be run."""
    env = train_env()
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    return env


def run_hooked(hook: str, config: Path, *args: str, nproc: int = 1, timeout: float = 600
               ) -> subprocess.CompletedProcess:
    """``kotomamba train`` with one of ``train_hooks``'s test conditions injected (not checked)."""
    env = hooks_env()
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    command = [sys.executable, *launcher, "-m", "train_hooks", hook, "train", "--config", str(config), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return read_model_state_dict(resolve_checkpoint(run_dir))


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights_at(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return read_model_state_dict(RunDir(run_dir).checkpoint(step))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
