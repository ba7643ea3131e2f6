"""Issue 16 items 6 and 9: no worker outlives `kotomamba launch`, however it is killed, and a launcher killed
with -9 leaves no exit directory behind for long."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kotomamba.train.launcher import node_exit_code
from kotomamba.train.stop_signals import EXIT_REQUEUE

PAYLOAD = textwrap.dedent('''
    import os, sys, time
    out = os.environ["OUT_DIR"]
    with open(os.path.join(out, f"pid-{os.environ['RANK']}"), "w") as handle:
        handle.write(str(os.getpid()))
    time.sleep(float(os.environ.get("SLEEP", "0")))
''')


@pytest.fixture
def launch_env(tmp_path):
    (tmp_path / "sleeper.py").write_text(PAYLOAD)
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    out.mkdir()
    scratch.mkdir()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("SLURM_", "PBS_", "SGE_", "PE_")) and key != "JOB_ID"}
    env.update(OMP_NUM_THREADS="1", OUT_DIR=str(out), TMPDIR=str(scratch),
               PYTHONPATH=os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")]))
    return env, out, scratch


def launch(env: dict, sleep: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kotomamba", "launch", "--nproc-per-node", "2", "--", "-m",
                             "sleeper"], env={**env, "SLEEP": str(sleep)}, start_new_session=True)


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # a zombie waiting for a reaper runs nothing


def wait_until(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("target", ["the launcher's process group", "the launcher alone"])
def test_workers_die_with_a_launcher_killed_with_9(launch_env, target):
    env, out, scratch = launch_env
    launcher = launch(env, sleep=300)
    wait_until(lambda: all((out / f"pid-{rank}").is_file() and (out / f"pid-{rank}").read_text()
                           for rank in (0, 1)), 120, "workers did not start")
    workers = [int((out / f"pid-{rank}").read_text()) for rank in (0, 1)]
    if target == "the launcher alone":
        os.kill(launcher.pid, signal.SIGKILL)
    else:
        os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait(timeout=30)
    wait_until(lambda: all(gone(pid) for pid in workers), 60, "workers outlived their launcher")
    # The killed launcher could not remove its exit directory; the next launcher on this host does.
    assert list(scratch.glob("kotomamba-launch-*"))
    assert launch(env, sleep=0).wait(timeout=120) == 0
    assert not list(scratch.glob("kotomamba-launch-*"))


def test_a_stop_signal_before_the_workers_answered_is_a_requeue():
    assert node_exit_code(1, [], stopped=True) == EXIT_REQUEUE  # workers stopped before they could record
    assert node_exit_code(1, [3], stopped=True) == 3  # a worker's own failure still wins
    assert node_exit_code(0, [0, 0], stopped=True) == 0  # they had finished
    assert node_exit_code(1, [], stopped=False) == 1
