"""Run pytest test ids one process each, several at a time, so that a family's kernels compile once.

Most of the gpu suite's time goes to compiling and autotuning Triton kernels, mamba-ssm's above all,
once per process. The parametrizations of one test function (its family) mostly compile the same
kernels: started together they all compile them at once, each for itself. Triton keeps compiled
kernels and, with ``TRITON_CACHE_AUTOTUNING=1``, autotuning results on disk (``TRITON_CACHE_DIR``),
so here a family's first id (its leader) runs before the rest of its family: the others start only
once their leader has finished, and find its kernels in the cache. Leaders start first, in the order
given (slowest families first); then any id whose leader is done, in the order given; a slot waits
rather than start an id whose leader still runs.

    python bench/gpu_tests.py IDS_FILE LOG_DIR --jobs 16 --time-limit 480 -- -m gpu --timeout 480

prints ``exit RC ID: LAST LINE`` as each test ends (RC 0: passed or skipped), then a summary; exits 0
only if there were ids and every one ran and exited 0. At ``--time-limit`` seconds (for the whole run)
running tests are stopped, each with the processes it started, and the rest not started, each reported
as such, so a cut-short run still says what it left. Each test's output goes to
LOG_DIR/<id with / : [ ] as _>.log.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


def family(test_id: str) -> str:
    """``tests/x.py::test_f[a-b]`` -> ``tests/x.py::test_f``: the ids of one test function."""
    return test_id.split("[", 1)[0]


def log_name(test_id: str) -> str:
    return test_id.translate(str.maketrans("/:[]", "____")) + ".log"


@dataclass
class Running:
    test_id: str
    process: subprocess.Popen
    log: Path


def last_line(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


def run(ids: list[str], log_dir: Path, jobs: int, time_limit: float | None, pytest_args: list[str]) -> int:
    log_dir.mkdir(parents=True, exist_ok=True)
    leaders = {}
    for test_id in ids:
        leaders.setdefault(family(test_id), test_id)
    waiting = [t for t in ids if leaders[family(t)] == t] + [t for t in ids if leaders[family(t)] != t]
    done: dict[str, int | str] = {}
    running: list[Running] = []
    deadline = None if time_limit is None else time.monotonic() + time_limit

    def ready(test_id: str) -> bool:
        leader = leaders[family(test_id)]
        return leader == test_id or leader in done

    while waiting or running:
        if deadline is not None and time.monotonic() >= deadline:
            for job in running:  # with what it started: a trainer, torchrun's workers
                with contextlib.suppress(ProcessLookupError):  # it may have ended just now, with all it started
                    os.killpg(job.process.pid, signal.SIGKILL)
                job.process.wait()
                done[job.test_id] = "stopped"
                print(f"exit stopped {job.test_id}: at --time-limit {time_limit:g} s", flush=True)
            for test_id in waiting:
                print(f"exit not-started {test_id}: --time-limit {time_limit:g} s", flush=True)
            break
        for job in list(running):
            code = job.process.poll()
            if code is not None:
                running.remove(job)
                done[job.test_id] = code
                print(f"exit {code} {job.test_id}: {last_line(job.log)}", flush=True)
        while len(running) < jobs:
            test_id = next((t for t in waiting if ready(t)), None)
            if test_id is None:
                break
            waiting.remove(test_id)
            log = log_dir / log_name(test_id)
            with open(log, "w") as out:
                process = subprocess.Popen([sys.executable, "-m", "pytest", test_id, *pytest_args],
                                           stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            running.append(Running(test_id, process, log))
        time.sleep(0.2)
    passed = sum(1 for code in done.values() if code == 0)
    failed = sum(1 for code in done.values() if code not in (0, "stopped"))
    stopped = sum(1 for code in done.values() if code == "stopped")
    print(f"{passed} of {len(ids)} tests exited 0 (passed or skipped), {failed} failed, {stopped} stopped at the "
          f"time limit, {len(ids) - len(done)} not started", flush=True)
    return 0 if passed == len(ids) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ids", type=Path, help="a file of pytest ids, one per line, in the order to start them")
    parser.add_argument("log_dir", type=Path)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--time-limit", type=float, help="seconds for the whole run")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])  # after --: the arguments of every pytest process
    ids = [line.strip() for line in args.ids.read_text().splitlines() if line.strip()]
    if not ids:
        sys.exit(f"{args.ids}: no test ids (did the collection, or the -k expression, select none?)")
    sys.exit(run(ids, args.log_dir, args.jobs, args.time_limit, argv[cut + 1:]))


if __name__ == "__main__":
    main()
