"""bench/gpu_tests.py, the gpu suite's runner: one pytest process per id, a family's first id before the rest of
it, a time limit that stops and reports, and an exit status that says whether every id ran and passed."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

RUNNER = Path(__file__).resolve().parents[1] / "bench" / "gpu_tests.py"
sys.path.insert(0, str(RUNNER.parent))
from gpu_tests import log_name  # noqa: E402

FAMILIES = '''
import os
import time

import pytest


def record(event, name):
    with open(os.environ["EVENTS"], "a") as events:
        events.write(f"{time.monotonic()} {event} {name}\\n")


@pytest.mark.parametrize("i", range(3))
def test_a(i):
    record("start", f"a{i}")
    time.sleep(0.5)
    record("end", f"a{i}")


@pytest.mark.parametrize("i", range(2))
def test_b(i):
    record("start", f"b{i}")
    record("end", f"b{i}")


def test_fails():
    assert False, "this one fails"


def test_sleeps():
    import subprocess

    child = subprocess.Popen(["sleep", "120"])
    with open(os.environ["EVENTS"] + ".child", "w") as pid:
        pid.write(str(child.pid))
    time.sleep(120)
'''


def run_runner(tmp_path: Path, names: list[str], *options: str) -> tuple[subprocess.CompletedProcess, dict]:
    module = tmp_path / "test_families.py"
    module.write_text(FAMILIES)
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"{module}::{name}\n" for name in names))
    events = tmp_path / "events.txt"
    done = subprocess.run([sys.executable, str(RUNNER), str(ids), str(tmp_path / "logs"), *options, "--",
                           "-q", "-p", "no:cacheprovider"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**os.environ, "EVENTS": str(events)})
    times = {}
    for line in events.read_text().splitlines() if events.exists() else []:
        stamp, event, name = line.split()
        times[(event, name)] = float(stamp)
    return done, times


def test_a_family_waits_for_its_first_test_and_a_failure_is_reported(tmp_path):
    names = ["test_a[0]", "test_a[1]", "test_a[2]", "test_b[0]", "test_b[1]", "test_fails"]
    done, times = run_runner(tmp_path, names, "--jobs", "3")
    assert done.returncode == 1, done.stdout + done.stderr
    for follower in ("a1", "a2"):
        assert times[("start", follower)] > times[("end", "a0")], times
    assert times[("start", "b1")] > times[("end", "b0")], times
    lines = done.stdout.splitlines()
    assert lines[-1] == ("5 of 6 tests exited 0 (passed or skipped), 1 failed, 0 stopped at the time limit, "
                         "0 not started")
    failed = [line for line in lines if line.startswith("exit 1 ")]
    assert len(failed) == 1 and failed[0].startswith(f"exit 1 {tmp_path}/test_families.py::test_fails: "), lines
    log = tmp_path / "logs" / log_name(f"{tmp_path}/test_families.py::test_fails")
    assert "this one fails" in log.read_text()


def test_the_time_limit_stops_what_runs_and_names_what_did_not_start(tmp_path):
    done, times = run_runner(tmp_path, ["test_sleeps", "test_b[0]", "test_b[1]"], "--jobs", "1", "--time-limit", "5")
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"exit stopped {tmp_path}/test_families.py::test_sleeps: at --time-limit 5 s"), lines
    assert [line.split()[1] for line in lines[1:3]] == ["not-started", "not-started"], lines
    assert lines[-1] == ("0 of 3 tests exited 0 (passed or skipped), 0 failed, 1 stopped at the time limit, "
                         "2 not started")
    assert times == {}
    child = int((tmp_path / "events.txt.child").read_text())  # what the stopped test started, stopped with it
    for _ in range(50):
        if not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the stopped test's child {child} still runs")


def test_no_ids_is_an_error_not_a_pass(tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("\n")
    done = subprocess.run([sys.executable, str(RUNNER), str(ids), str(tmp_path / "logs")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1 and f"{ids}: no test ids" in done.stderr, done
