"""Issue 21: a job stopped by its scheduler's signal ends its log with one clear line, not torchrun's
`SignalException` traceback. A real `kotomamba launch` of two CPU ranks trains; SIGTERM goes to every
process of its session, as a scheduler ending a job sends it."""
from __future__ import annotations

import os
import signal
import time

import pytest

from kotomamba.train.run_dir import step_of
from kotomamba.train.status import complete_checkpoint
from train_helpers import launch_until_stopped, needs_cpu_sharding


@pytest.mark.slow
@needs_cpu_sharding
def test_sigterm_to_the_whole_job_ends_the_log_with_one_line_and_no_traceback(tmp_path):
    run, process, log = launch_until_stopped(tmp_path, 2)
    try:
        metrics = run.root / "metrics.jsonl"
        deadline = time.monotonic() + 300  # a hang guard only
        while not (metrics.is_file() and metrics.read_text().count("\n") >= 1):  # the loop runs
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGTERM)
        code = process.wait(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    text = log.read_text()
    assert code == 75, text[-3000:]
    assert "Traceback" not in text and "SignalException" not in text, text[-3000:]
    step = step_of(complete_checkpoint(run))
    assert f"kotomamba train: stopping at step {step} (" in text
    assert text.strip().splitlines()[-1] == f"kotomamba launch: stopped by SIGTERM after checkpoint at step {step}; exit 75"
    assert text.count("kotomamba launch: stopped by") == 1
