"""Issue 20 item 4: a one-GPU run takes the CUDA-graphed step without a flag (``parallel.cuda_graph:
auto``), and every job says which step it runs and, when eager, every reason. The decision alone, on
configs read as a user writes them; tests/test_train_cuda_graph.py runs the trainer and reads its log."""
from __future__ import annotations

import pytest

from kotomamba.errors import UserError
from kotomamba.train.config import load_config
from kotomamba.train.step_choice import choose_step


def config(*overrides: str):
    return load_config(None, list(overrides))


def test_the_default_is_auto_and_one_gpu_runs_graphed():
    assert config().parallel.cuda_graph == "auto"
    choice = choose_step(config(), "cuda", 1)
    assert choice.graphed
    assert choice.log_line() == "training step: CUDA-graphed (parallel.cuda_graph: auto; one process on a CUDA GPU)"


def test_a_cpu_job_runs_eager_and_says_why():
    choice = choose_step(config(), "cpu", 1)
    assert not choice.graphed
    assert choice.log_line() == "training step: eager (parallel.cuda_graph: auto; not graphed: no CUDA GPU)"


def test_several_sharded_processes_run_eager_and_say_why():
    choice = choose_step(config(), "cuda", 4)  # replicated processes: tests/test_train_replicate.py
    assert not choice.graphed and "not graphed: 4 processes sharding with FSDP (its collectives" in choice.reason


@pytest.mark.parametrize("override, shown", [
    ("parallel.compile=true", "parallel.compile: true (torch.compile's own graphs"),
    ("parallel.activation_checkpointing=true", "parallel.activation_checkpointing: true (its recompute"),
    ("precision=fp16", "precision: fp16 (its loss scale changes between steps"),
])
def test_what_a_capture_cannot_hold_runs_eager_under_auto(override, shown):
    choice = choose_step(config(override), "cuda", 1)  # not refused when read: auto falls back
    assert not choice.graphed and f"not graphed: {shown}" in choice.reason


def test_every_reason_is_named_at_once():
    reason = choose_step(config("parallel.compile=true", "precision=fp16"), "cuda", 2).reason
    assert all(part in reason for part in ("parallel.compile: true", "precision: fp16", "2 processes")), reason


def test_false_is_eager_even_where_graphs_could_run():
    choice = choose_step(config("parallel.cuda_graph=false"), "cuda", 1)
    assert not choice.graphed
    assert choice.log_line() == "training step: eager (parallel.cuda_graph: false)"


def test_true_is_graphed_where_it_can_be_and_an_error_elsewhere():
    choice = choose_step(config("parallel.cuda_graph=true"), "cuda", 1)
    assert choice.graphed and choice.reason == "parallel.cuda_graph: true; one process on a CUDA GPU"
    with pytest.raises(UserError, match="parallel.cuda_graph: true cannot run here: no CUDA GPU; set it to auto"):
        choose_step(config("parallel.cuda_graph=true"), "cpu", 1)
    with pytest.raises(UserError, match="cannot run here: 2 processes"):
        choose_step(config("parallel.cuda_graph=true"), "cuda", 2)


def test_only_bool_or_auto_is_accepted():
    with pytest.raises(UserError, match="field 'parallel.cuda_graph' must be bool or 'auto', got 'always'"):
        config("parallel.cuda_graph=always")
