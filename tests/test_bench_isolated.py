"""bench/isolated.py: every (round, implementation) in a process of its own, the order reversed every
other round, a failing child reported with what it printed kept."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, os, sys
impl = sys.argv[sys.argv.index("--child") + 1]
print(json.dumps({"impl": impl, "pid": os.getpid(), "argv": sys.argv[1:-2], "value": len(impl)}), flush=True)
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
    assert [json.loads(line)["impl"] for line in printed.splitlines() if line.startswith("{")][:3] == [
        "one", "broken", "three"]
    assert isolated.median_range([r for r in rows if r["impl"] == "three"], "value") == (5, 5, 5)
    assert isolated.median_range([], "value") is None
