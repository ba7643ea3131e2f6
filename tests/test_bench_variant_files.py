"""bench/variant_files.sh: the files each branch changed, at their repository paths, beside this tree's versions of
them, so that copying one variant and then this tree back over a copy without git gives each tree in turn."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def commit(repo: Path, files: dict[str, str], message: str) -> None:
    for path, text in files.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message)


def tree(top: Path) -> dict[str, str]:
    return {str(p.relative_to(top)): p.read_text() for p in sorted(top.rglob("*")) if p.is_file()}


def test_each_variant_and_this_tree_in_turn(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(repo, {"kotomamba/ops/scan.py": "base\n", "kotomamba/ops/norm.py": "norm\n", "README.md": "readme\n",
                  "tests/test_scan.py": "test\n"}, "base")
    git(repo, "checkout", "-q", "-b", "fast")
    commit(repo, {"kotomamba/ops/scan.py": "fast\n", "tests/test_scan.py": "test fast\n", "README.md": "fast docs\n"},
           "fast")
    git(repo, "checkout", "-q", "-b", "faster", "main")
    commit(repo, {"kotomamba/ops/norm.py": "faster norm\n", "kotomamba/ops/new.py": "new\n"}, "faster")
    git(repo, "checkout", "-q", "main")
    # main moves on after both branches left it: its change to another file is no part of a variant.
    commit(repo, {"kotomamba/ops/norm.py": "norm 2\n"}, "main moves on")

    done = subprocess.run(["bash", str(ROOT / "bench/variant_files.sh"), str(tmp_path / "v"), "fast", "faster"],
                          cwd=repo, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert tree(tmp_path / "v/fast") == {"kotomamba/ops/scan.py": "fast\n", "tests/test_scan.py": "test fast\n"}
    # faster left main before "main moves on": its norm.py is the branch's, and this tree's is kept to put back.
    assert tree(tmp_path / "v/faster") == {"kotomamba/ops/norm.py": "faster norm\n", "kotomamba/ops/new.py": "new\n"}
    assert tree(tmp_path / "v/HEAD") == {"kotomamba/ops/scan.py": "base\n", "kotomamba/ops/norm.py": "norm 2\n",
                                         "tests/test_scan.py": "test\n"}

    # The machine's copy: the working tree without .git, each variant put in place over whichever came before.
    copy = tmp_path / "copy"
    shutil.copytree(repo, copy, ignore=shutil.ignore_patterns(".git"))
    for name, expected in (("fast", {"kotomamba/ops/scan.py": "fast\n", "kotomamba/ops/norm.py": "norm 2\n"}),
                           ("faster", {"kotomamba/ops/scan.py": "base\n", "kotomamba/ops/norm.py": "faster norm\n"}),
                           ("HEAD", {"kotomamba/ops/scan.py": "base\n", "kotomamba/ops/norm.py": "norm 2\n"})):
        subprocess.run(f"cp -r {tmp_path}/v/HEAD/. . && cp -r {tmp_path}/v/{name}/. .", shell=True, cwd=copy,
                       check=True)
        got = tree(copy / "kotomamba/ops")
        for path, text in expected.items():
            assert got[path.removeprefix("kotomamba/ops/")] == text, (name, path)


def test_an_unknown_branch_is_refused_before_anything_is_written(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(repo, {"kotomamba/a.py": "a\n"}, "base")
    git(repo, "branch", "real")
    done = subprocess.run(["bash", str(ROOT / "bench/variant_files.sh"), str(tmp_path / "v"), "real", "typo"],
                          cwd=repo, capture_output=True, text=True)
    assert done.returncode == 2 and "no branch or commit typo" in done.stderr
    assert not (tmp_path / "v").exists()
