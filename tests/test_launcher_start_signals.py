"""A stop signal that comes while a job starts is never lost: the job ends (75, the stage not done) whichever
of its processes exist yet. Each test sends its signal at a point the job is known to have reached (a file
it writes, or a process held there), never after a guessed delay."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from kotomamba.train.launcher import STOP_RECORD, _SignalForwarder
from kotomamba.train.stop_signals import EXIT_REQUEUE
from train_helpers import launch_until_stopped, train_env


def ignore_sigint() -> None:
    """Start a job as a non-interactive shell starts its background jobs (`snakemake ... &`, `pytest ... &`):
    SIGINT ignored, which `exec` keeps for every process started from it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def wait_for(path: Path, process: subprocess.Popen, seconds: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + seconds  # a hang guard only
    while not path.exists():
        assert process.poll() is None, log.read_text()[-3000:] if log else f"exit {process.returncode}"
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


def test_ctrl_c_stops_a_job_started_with_sigint_ignored(tmp_path):
    """The window the pipeline's interrupt test lost under `pytest ... &`: Ctrl-C of the process group once
    the trainer has changed its run directory (its earlier run set aside), where every process of the job
    inherited SIGINT ignored. Python then installs no KeyboardInterrupt, and the trainer trained on."""
    run, process, log = launch_until_stopped(tmp_path, 1, preexec_fn=ignore_sigint)
    try:
        wait_for(run.identity, process, 300, log)
        os.killpg(process.pid, signal.SIGINT)
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert code == EXIT_REQUEUE, log.read_text()[-3000:]
    assert not run.final.exists()


def test_a_stop_signal_is_not_taken_for_the_error_of_the_code_it_interrupts():
    """A signal's handler raises wherever the main thread is. CI once sent SIGINT while tokenizers read
    tokenizer.json inside `except Exception`, and the job exited 2 ("not a Hugging Face tokenizer.json")
    instead of 75."""
    script = textwrap.dedent('''
        import signal, sys
        from kotomamba.train.stop_signals import StopBeforeTraining, StopSignals
        StopSignals()
        try:
            try:
                signal.raise_signal(signal.SIGINT)  # runs the handler before it returns
            except Exception as exc:
                sys.exit(f"taken for an error: {exc!r}")
        except StopBeforeTraining:
            sys.exit(75)
    ''')
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_REQUEUE, done.stderr


# torchrun held at its start until `go` appears in $HOLD_DIR: the launcher runs, its workers do not yet exist.
SITECUSTOMIZE = textwrap.dedent('''
    import os, pathlib, time
    hold = os.environ.get("HOLD_DIR")
    if hold and "KOTOMAMBA_LAUNCHER_PID" in os.environ and "RANK" not in os.environ:
        pathlib.Path(hold, "held").touch()
        while not pathlib.Path(hold, "go").exists():
            time.sleep(0.05)
''')
PAYLOAD = 'import os, pathlib; pathlib.Path(os.environ["HOLD_DIR"], "ran-" + os.environ["RANK"]).touch()\n'


def test_a_signal_before_the_workers_exist_stops_them_when_they_start(tmp_path):
    """SIGUSR1 (the stop srun and mpirun pass on, Grid Engine's warning is SIGUSR2) reaching the node's
    launcher before torchrun started its workers: sent on to torchrun, which ignores it, it was lost, and
    the workers trained on. Now each worker finds it recorded and exits 75 without running."""
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (tmp_path / "payload.py").write_text(PAYLOAD)
    hold, scratch = tmp_path / "hold", tmp_path / "scratch"
    hold.mkdir()
    scratch.mkdir()
    env = {key: value for key, value in train_env().items()
           if not key.startswith(("SLURM_", "PBS_", "SGE_", "PE_")) and key != "JOB_ID"}
    env.update(HOLD_DIR=str(hold), TMPDIR=str(scratch),
               PYTHONPATH=os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")]))
    process = subprocess.Popen([sys.executable, "-m", "kotomamba", "launch", "--nproc-per-node", "2", "--",
                                "-m", "payload"], env=env, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        wait_for(hold / "held", process, 120)
        process.send_signal(signal.SIGUSR1)
        (exit_dir,) = scratch.glob("kotomamba-launch-*")
        wait_for(exit_dir / STOP_RECORD, process, 60)
        (hold / "go").touch()
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == EXIT_REQUEUE, stderr[-3000:]
    assert not list(hold.glob("ran-*"))
    assert stderr.strip().splitlines()[-1] == "kotomamba launch: stopped by SIGUSR1; exit 75"


def test_a_signal_before_the_process_starts_is_passed_on_when_it_does():
    """The launcher answers signals from before it starts torchrun (or srun/mpirun): one that came in between
    is sent on once the process runs, instead of ending the launcher alone and leaving srun/mpirun running."""
    with _SignalForwarder(list) as forwarder:
        signal.raise_signal(signal.SIGTERM)
        assert forwarder.signum == signal.SIGTERM
        process = subprocess.Popen(["sleep", "60"])
        forwarder.started(process)
        assert process.wait(timeout=30) == -signal.SIGTERM
