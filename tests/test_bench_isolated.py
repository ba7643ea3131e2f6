"""bench/isolated.py: every (round, implementation) in a process of its own, the order reversed every
other round, a failing child reported with what it printed kept, the children's other lines passed on."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, os, sys
impl = sys.argv[sys.argv.index("--child") + 1]
print(json.dumps({"impl": impl, "pid": os.getpid(), "argv": sys.argv[1:-2], "value": len(impl)}), flush=True)
print(f"a note from {impl}", flush=True)
if impl == "broken":
    raise SystemExit(3)
"""


def load_isolated():
    spec = importlib.util.spec_from_file_location("isolated", ROOT / "bench" / "isolated.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_round_and_implementation_runs_in_its_own_process(tmp_path, capsys):
    isolated = load_isolated()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    rows = isolated.run_children(str(script), ["--shapes", "a"], ["one", "broken", "three"], rounds=3)
    assert [(r["round"], r["impl"]) for r in rows] == [
        (0, "one"), (0, "broken"), (0, "three"), (1, "three"), (1, "broken"), (1, "one"),
        (2, "one"), (2, "broken"), (2, "three")]
    assert len({r["pid"] for r in rows}) == 9
    assert all(r["argv"] == ["--shapes", "a"] for r in rows)
    printed = capsys.readouterr().out
    assert printed.count("broken round") == 3 and "exit 3" in printed
    assert printed.count("a note from one") == 3  # what is not a row is passed on (e.g. a profile)
    assert [json.loads(line)["impl"] for line in printed.splitlines() if line.startswith("{")][:3] == [
        "one", "broken", "three"]
    assert isolated.median_range([r for r in rows if r["impl"] == "three"], "value") == (5, 5, 5)
    assert isolated.median_range([], "value") is None


SLOW_CHILD = """
import json, sys, time
impl = sys.argv[sys.argv.index("--child") + 1]
print(json.dumps({"impl": impl}), flush=True)
time.sleep({"quick": 0.0, "slow": 30.0}[impl])
print(json.dumps({"impl": impl, "after": "the sleep"}), flush=True)
"""


def test_a_time_limit_skips_what_would_not_fit_and_stops_what_runs_past_it(tmp_path, capsys):
    """A slow child is stopped at the limit with its first row kept; the quick child after it in the reversed
    round is not started, the limit being spent. Without a limit, both would run every round."""
    isolated = load_isolated()
    script = tmp_path / "child.py"
    script.write_text(SLOW_CHILD)
    rows = isolated.run_children(str(script), [], ["quick", "slow"], rounds=2, time_limit_s=8)
    assert [(r["round"], r["impl"], "after" in r) for r in rows] == [(0, "quick", False), (0, "quick", True),
                                                                    (0, "slow", False)]
    printed = capsys.readouterr().out
    assert "slow round 0: exit stopped at --time-limit 8 s" in printed
    assert "slow round 1: not started" in printed and "quick round 1: not started" in printed


OP_SCRIPT = """
import json, sys
sys.path.insert(0, {bench!r})
from isolated import op_main

if "--child" in sys.argv:
    impl = sys.argv[sys.argv.index("--child") + 1]
    for shape in sys.argv[sys.argv.index("--shapes") + 1].split(","):
        device = {{"k:ref": 2.0, "k:ours": 1.0, "k:ours=8": 4.0}}[impl]
        print(json.dumps({{"impl": impl, "shape": shape, "wall_ms": device + 1, "device_ms": device, "floor_ms": 0.5}}))
else:
    op_main("doc", {{"a": 1, "b": 2}}, ("k:ref", "k:ours"), "help", lambda args: [{{"shape": s}} for s in
            args.shapes.split(",")], None)
"""


def test_an_op_benchmark_prints_medians_and_ratios_against_its_kinds_reference(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "op.py"
    script.write_text(OP_SCRIPT.format(bench=str(ROOT / "bench")))
    done = subprocess.run([sys.executable, str(script), "--shapes", "a,b", "--impls", "k:ref,k:ours,k:ours=8",
                           "--rounds", "2", "--json", str(tmp_path / "out.json")], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    table = [line for line in done.stdout.splitlines() if line.startswith("| k |")]
    assert table == [
        "| k | a | ref | 2.000 [2.000-2.000] | 3.000 [3.000-3.000] | 1.00x | 1.00x | 0.500 |",
        "| k | b | ref | 2.000 [2.000-2.000] | 3.000 [3.000-3.000] | 1.00x | 1.00x | 0.500 |",
        "| k | a | ours | 1.000 [1.000-1.000] | 2.000 [2.000-2.000] | 2.00x | 1.50x | 0.500 |",
        "| k | b | ours | 1.000 [1.000-1.000] | 2.000 [2.000-2.000] | 2.00x | 1.50x | 0.500 |",
        "| k | a | ours=8 | 4.000 [4.000-4.000] | 5.000 [5.000-5.000] | 0.50x | 0.60x | 0.500 |",
        "| k | b | ours=8 | 4.000 [4.000-4.000] | 5.000 [5.000-5.000] | 0.50x | 0.60x | 0.500 |"]
    rows = json.loads((tmp_path / "out.json").read_text())
    assert len(rows) == 2 * 3 * 2 and {r["round"] for r in rows} == {0, 1}
