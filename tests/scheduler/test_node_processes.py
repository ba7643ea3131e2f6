"""node_processes.is_worker on real processes: the scheduler tests signal the training workers it finds, so
it must not take torchrun, nor a child torchrun forked that has not exec'd yet, for one. No daemons needed."""
from __future__ import annotations

import subprocess
import sys

from node_processes import is_worker

from kotomamba.train.torchrun_stop import TORCHRUN_MODULE

# Stands in for torchrun (its command line holds the workers' arguments): it forks one child that never
# execs (torchrun's child between fork and exec) and starts one real worker, prints their pids and waits.
TORCHRUN = """
import os, subprocess, sys, time
forked = os.fork()
if forked == 0:
    time.sleep(60)
    os._exit(0)
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--worker-exit-dir", "d"])
print(forked, worker.pid, flush=True)
sys.stdin.read()
for pid in (forked, worker.pid):
    os.kill(pid, 9)
"""


def test_only_a_process_torchrun_started_and_that_exec_d_is_a_worker():
    torchrun = subprocess.Popen([sys.executable, "-c", TORCHRUN, TORCHRUN_MODULE, "--worker-exit-dir", "d"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        forked, worker = map(int, torchrun.stdout.readline().split())
        assert is_worker(worker)
        assert not is_worker(forked), "a child of torchrun that has not exec'd yet is not a worker"
        assert not is_worker(torchrun.pid)
    finally:
        torchrun.stdin.close()
        torchrun.wait(timeout=30)
