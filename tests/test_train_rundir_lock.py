"""Issue 16 item 3: one job per run directory; a second trainer or a converter is refused, naming the holder;
a lock left by a killed job does not block the next one."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from kotomamba.errors import UserError
from kotomamba.train.run_dir import RunDir, step_of
from kotomamba.train.run_lock import RunLock
from kotomamba.train.status import complete_checkpoint
from train_helpers import losses, run_train, train_env, write_config

SHORT = {"train": {"steps": 4}, "eval": {"interval": 0, "final": False}}


def convert(run: RunDir, output) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kotomamba", "convert", "--checkpoint", str(run.root), "--to",
                           "mamba_ssm", "--output", str(output)], env=train_env(), capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_a_held_run_directory_refuses_a_second_trainer_and_convert(tmp_path):
    run = RunDir(tmp_path / "run")
    config = write_config(tmp_path, run.root, **SHORT)
    run_train(config)
    before = run.metrics.read_text()
    with RunLock(run.lock).acquire():  # this process plays the running job
        holder = f"host {socket.gethostname()} pid {os.getpid()}"
        second = run_train(write_config(tmp_path, run.root, **SHORT, optim={"lr": 1.0e-3}), check=False)
        assert second.returncode == 2 and f"in use by {holder}" in second.stderr
        refused = convert(run, tmp_path / "export")
        assert refused.returncode == 2 and f"in use by {holder}" in refused.stderr
    assert run.metrics.read_text() == before and not run.superseded.exists()
    assert convert(run, tmp_path / "export").returncode == 0


def test_a_reader_and_a_trainer_exclude_each_other(tmp_path):
    path = tmp_path / "run.lock"
    with RunLock(path).acquire(shared=False):
        with pytest.raises(UserError, match="before starting a conversion here"):
            RunLock(path).acquire(shared=True, purpose="a conversion")
    with RunLock(path).acquire(shared=True):
        with pytest.raises(UserError, match=r"or a reader such as kotomamba convert"):
            RunLock(path).acquire()
    RunLock(path).acquire().release()


@pytest.mark.slow
def test_the_lock_of_a_killed_trainer_is_stale(tmp_path):
    run = RunDir(tmp_path / "run")
    config = write_config(tmp_path, run.root, train={"steps": 5000}, eval={"interval": 0}, checkpoint={"interval": 2})
    process = subprocess.Popen([sys.executable, "-m", "kotomamba", "train", "--config", str(config)], env=train_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (run.latest.is_file() and run.latest.read_text().strip()):
        assert process.poll() is None and time.monotonic() < deadline, "the trainer did not checkpoint"
        time.sleep(0.2)
    with pytest.raises(UserError, match=f"pid {process.pid}"):
        RunLock(run.lock).acquire()
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert f"pid {process.pid}" in run.lock.read_text()  # its text stays; the kernel released the flock
    # The resume starts from the newest complete checkpoint: `latest`, or one saved just before the kill
    # whose `latest` update the kill cut off.
    stopped = step_of(complete_checkpoint(run))
    run_train(config, "train.max_steps_this_job=2")  # resumed, not started over: two steps more
    assert run.latest.read_text().strip() == f"step_{stopped + 2:08d}" and not run.superseded.exists()
    assert max(losses(run.root)) == stopped + 2
