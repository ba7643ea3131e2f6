"""The whole DAG through `snakemake` on a tiny config: real corpus, tokenizer, FSDP training on 2 CPU
processes, export, evaluation and report; then caching (nothing reruns) and a changed stage reruns only
what depends on it."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow
# Snakemake 9 needs Python >= 3.11; on 3.10 the library is tested without the pipeline.
pytest.importorskip("snakemake")


def tiny_config(run: str = "tiny") -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["run"] = run
    config["corpus"]["sources"][0]["max_bytes"] = 400_000
    config["tokenizer"]["vocab_size"] = 1000
    config["stages"][0]["train"]["train"] = {"steps": 40}
    config["stages"][0]["train"]["data"] = {"seq_length": 64}
    config["stages"][1]["train"]["train"] = {"steps": 6, "micro_batch_size": 4}
    config["stages"][1]["train"]["data"] = {"seq_length": 128}
    config["train"]["eval"] = {"interval": 20, "steps": 2}
    config["train"]["checkpoint"] = {"interval": 20, "keep_last": 2}
    config["evaluate"].update(seq_length=128, eval_samples=8, max_new_tokens=8)
    return config


def snakemake(workdir: Path, config_file: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
               "--configfile", str(config_file), "--cores", "2", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=1500)


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts from a dry run's 'Job stats' table."""
    table = result.stdout.split("Job stats:")[-1] if "Job stats:" in result.stdout else ""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


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

    config["stages"][1]["train"]["train"]["steps"] = 8
    config_file.write_text(yaml.safe_dump(config))
    plan = planned_jobs(snakemake(tmp_path, config_file, "-n", "all"))
    assert plan.get("train") == 1 and plan.get("stage_config") == 1
    assert not {"corpus", "tokenizer", "tokenize"} & set(plan)

    result = snakemake(tmp_path, config_file, "all")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    final = json.loads((root / "train" / "long-context" / "final.json").read_text())
    assert final["step"] == 8
