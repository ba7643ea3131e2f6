"""The trainer on one process: loss goes down, run-dir contents, exact resume, signals, kill -9."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from kotomamba.data.indexed_dataset import IndexedDatasetWriter

VOCAB = 64
EOD = VOCAB - 1


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


def losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from kotomamba.train.checkpoint import read_full_model_state, resolve_checkpoint

    return read_full_model_state(resolve_checkpoint(run_dir))


@pytest.mark.slow
def test_loss_decreases_and_run_dir_is_complete(tmp_path):
    run_dir = tmp_path / "run"
    run_train(write_config(tmp_path, run_dir, train={"steps": 30}, checkpoint={"interval": 10}, eval={"interval": 10}))
    history = losses(run_dir)
    assert sorted(history) == list(range(1, 31))
    assert np.mean([history[s] for s in range(26, 31)]) < np.mean([history[s] for s in range(1, 6)]) - 0.5
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    step_record = next(r for r in records if r["step"] == 30 and "loss" in r)
    for key in ("grad_norm", "lr", "tokens_per_s", "tokens_per_s_per_gpu", "tflops", "ppl",
                "optim/decay/update_weight_ratio", "optim/no_decay/exp_avg_norm", "skipped_nonfinite"):
        assert key in step_record, key
    assert [r["step"] for r in records if "val_loss" in r] == [10, 20, 30]
    final = json.loads((run_dir / "final.json").read_text())
    assert final["step"] == 30 and final["checkpoint"] == "checkpoints/step_00000030"
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000030"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", "step_00000020", "step_00000030"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["world_size"] == 1 and any(k.endswith(".idx") for k in manifest["inputs"])
    assert json.loads((run_dir / "model_config.json").read_text())["vocab_size"] == VOCAB
    assert (run_dir / "config.resolved.yaml").is_file()
    # The "model" entry of a checkpoint loads on one process, under mamba-ssm key names.
    weights = final_weights(run_dir)
    assert "backbone.layers.1.mixer.A_log" in weights and weights["backbone.embedding.weight"].shape == (64, 32)


@pytest.mark.slow
def test_exact_resume(tmp_path):
    straight, segmented = tmp_path / "straight", tmp_path / "segmented"
    run_train(write_config(tmp_path, straight))
    config = write_config(tmp_path, segmented, train={"max_steps_this_job": 3})
    run_train(config)
    assert not (segmented / "final.json").exists()
    assert (segmented / "checkpoints" / "latest").read_text().strip() == "step_00000003"
    run_train(config, "train.max_steps_this_job=null")
    assert losses(segmented) == losses(straight)
    a, b = final_weights(straight), final_weights(segmented)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _wait_for(predicate, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"trainer exited early ({process.returncode}): {process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out")
        time.sleep(0.2)


def _start(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kotomamba", "train", "--config", str(config)],
                            env=train_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_with_the_requeue_code(tmp_path):
    run_dir = tmp_path / "run"
    config = write_config(tmp_path, run_dir, train={"steps": 500}, checkpoint={"interval": 0}, eval={"interval": 0})
    process = _start(config)
    metrics = run_dir / "metrics.jsonl"
    _wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 3, process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) == 75
    step = int((run_dir / "checkpoints" / "latest").read_text().strip().split("_")[1])
    assert step >= 3 and max(losses(run_dir)) == step
    assert not (run_dir / "final.json").exists()


@pytest.mark.slow
def test_kill_9_resumes_from_the_last_complete_checkpoint(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_train(write_config(tmp_path, straight, train={"steps": 24}, checkpoint={"interval": 2}, eval={"interval": 0}))
    config = write_config(tmp_path, killed, train={"steps": 24}, checkpoint={"interval": 2}, eval={"interval": 0})
    process = _start(config)
    latest = killed / "checkpoints" / "latest"
    _wait_for(lambda: latest.is_file() and latest.read_text().strip() >= "step_00000004", process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    complete = int(latest.read_text().strip().split("_")[1])
    logged_before_kill = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    # A save cut short leaves only a temporary directory behind; it must never be resumed from.
    partial = killed / "checkpoints" / ".step_00000099.tmp"
    partial.mkdir()
    (partial / "__0_0.distcp").write_bytes(b"half")
    run_train(config)
    assert not partial.exists()
    records = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    steps = [record["step"] for record in records if "loss" in record]
    # The restart replaced what was logged after the last complete checkpoint: every step once ...
    assert steps == list(range(1, 25)) and complete >= 4 and logged_before_kill
    # ... and its losses and weights equal an uninterrupted run's.
    assert losses(killed) == losses(straight)
    a, b = final_weights(straight), final_weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_changed_config_starts_over_and_keeps_the_earlier_run(tmp_path):
    run_dir = tmp_path / "run"
    run_train(write_config(tmp_path, run_dir, train={"steps": 4}))
    earlier = losses(run_dir)
    # Only a logging setting changed: the finished run is resumed (nothing to do), not redone.
    run_train(write_config(tmp_path, run_dir, train={"steps": 4}, logging={"interval": 2}))
    assert losses(run_dir) == earlier and not (run_dir / "superseded").exists()
    # A different schedule is another training: it starts from step 0; the earlier run is kept aside.
    run_train(write_config(tmp_path, run_dir, train={"steps": 6}, optim={"lr": 1.0e-3}))
    assert sorted(losses(run_dir)) == list(range(1, 7)) and losses(run_dir)[1] == earlier[1]
    assert losses(run_dir)[4] != earlier[4]
    superseded = run_dir / "superseded"
    assert (superseded / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    assert json.loads((run_dir / "final.json").read_text())["step"] == 6
