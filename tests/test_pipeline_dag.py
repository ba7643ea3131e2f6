"""The whole DAG through `snakemake` on a tiny config: real corpus, tokenizer, FSDP training on 2 CPU
processes, export, evaluation and report; then caching (nothing reruns) and a changed stage reruns only
what depends on it."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml
from pipeline_helpers import REPO, planned_jobs, snakemake, snakemake_command, tiny_config

pytestmark = pytest.mark.slow
# Snakemake 9 needs Python >= 3.11; on 3.10 the library is tested without the pipeline.
pytest.importorskip("snakemake")


def test_whole_dag_trains_caches_and_reruns_only_what_changed(tmp_path):
    config = tiny_config()
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(config))

    result = snakemake(tmp_path, config_file, "all")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    root = tmp_path / "results" / "tiny"
    evaluation = json.loads((root / "eval" / "eval.json").read_text())
    assert evaluation["perplexity"]["loss"] < evaluation["baseline_init"]["loss"] - 0.5
    assert (root / "report" / "report.md").read_text().count("loss.png") == 1
    assert (root / "report" / "loss.png").stat().st_size > 1000
    for fmt in ("hf", "mamba_ssm"):
        assert (root / "export" / fmt / "config.json").is_file()

    rerun = snakemake(tmp_path, config_file, "-n", "all")
    assert rerun.returncode == 0 and "Nothing to be done" in rerun.stdout + rerun.stderr
    # The same workflow from a checkout in another folder: nothing is out of date (no rule's params or command
    # hold the checkout's path).
    moved = tmp_path / "moved-checkout"
    moved.mkdir()
    shutil.copy(REPO / "Snakefile", moved)
    for folder in ("rules", "workflow_scripts"):
        shutil.copytree(REPO / folder, moved / folder)
    command = snakemake_command(tmp_path, config_file, "-n", "all")
    command[command.index("-s") + 1] = str(moved / "Snakefile")
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0 and "Nothing to be done" in rerun.stdout + rerun.stderr, rerun.stdout[-3000:]

    config["stages"][1]["train"]["train"]["steps"] = 8
    config_file.write_text(yaml.safe_dump(config))
    plan = planned_jobs(snakemake(tmp_path, config_file, "-n", "all"))
    assert plan.get("train") == 1 and plan.get("stage_config") == 1
    assert not {"corpus", "tokenizer", "tokenize"} & set(plan)

    result = snakemake(tmp_path, config_file, "all")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    final = json.loads((root / "train" / "long-context" / "final.json").read_text())
    assert final["step"] == 8
