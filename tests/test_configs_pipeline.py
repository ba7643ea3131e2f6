"""The reproduction configs through real `snakemake`: every config plans its whole DAG with every cluster profile
in profiles/; the smoke override runs a Mamba-1 and a Mamba-2 config end to end on CPU; and rerunning a run from
its `config.resolved.yaml` on the same inputs reproduces the data artifacts byte for byte and the training
metrics exactly."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from config_paths import CONFIGS, GPU_E2E, OFFLINE_PILE, REPO, RUN_CONFIGS, SMOKE, provide_inputs
from hub_server import hub_at_endpoint

PROFILES = sorted(p for p in (REPO / "profiles").iterdir() if (p / "config.yaml").is_file()
                  or any(p.glob("config.v*.yaml")))
# Metrics that depend only on the computation, besides the optimizer statistics ("optim/..."); timings,
# throughput and memory are left out.
DETERMINISTIC_METRICS = ("step", "loss", "ppl", "grad_norm", "lr", "consumed_samples", "tokens", "val_loss",
                         "val_ppl", "loss_scale")

pytestmark = pytest.mark.slow
# Snakemake 9 needs Python >= 3.11; on 3.10 the library is tested without the pipeline.
pytest.importorskip("snakemake")


def snakemake(workdir: Path, config_files: list[Path], *args: str, profile: Path | None = None,
              timeout: int = 1800) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args]
    command += ["--profile", str(profile)] if profile else ["--cores", "2"]
    command += ["--configfile", *map(str, config_files)]  # last: it takes every following argument
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=workdir)


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts from a dry run's 'Job stats' table."""
    table = result.stdout.split("Job stats:")[-1] if "Job stats:" in result.stdout else ""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


# Every config through the local profile, and every profile with the config that asks the most of it
# (several sources, eight nodes); what each cluster gets for every config is checked in
# tests/scheduler/test_config_gpu_requests.py.
PLANS = [(path, REPO / "profiles" / "local") for path in RUN_CONFIGS]
PLANS += [(CONFIGS / "kotomamba-2.8b-ja-en.yaml", profile) for profile in PROFILES if profile.name != "local"]


@pytest.fixture
def hub(monkeypatch):
    yield from hub_at_endpoint(monkeypatch)


def remote(reference) -> bool:
    return "://" in reference and not reference.startswith("file://")


@pytest.mark.parametrize("path, profile", PLANS, ids=lambda p: p.stem if p.suffix else p.name)
def test_config_plans_the_whole_dag(path, profile, tmp_path, hub):
    config = yaml.safe_load(path.read_text())
    provide_inputs(tmp_path, config)
    result = snakemake(tmp_path, [path], "-n", "all", profile=profile, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Planning fetches nothing: the hub (HF_ENDPOINT) is never asked, and nothing is written under results/.
    assert hub.requests == [] and not (tmp_path / "results").exists()
    sources, stages = len(config["corpus"]["sources"]), len(config["stages"])
    # A job per shard (each stand-in glob matches one file), a download per remote shard, a fetch per remote
    # tokenizer or init file, a merge per source.
    urls = [url for source in config["corpus"]["sources"] for url in source["urls"]]
    downloads = sum(map(remote, urls))
    init = config.get("init") or []
    fetches = remote(config["tokenizer"]["model"] or "") + sum(map(remote, [init] if isinstance(init, str) else init))
    formats = len(config["export"]["formats"])
    expected = {
        "download": downloads, "fetch_input": fetches, "tokenize_shard": len(urls), "tokenize": sources,
        "stage_config": stages, "train": stages, "convert": formats, "evaluate": 1, "report": 1, "run_record": 1,
        "all": 1, "total": downloads + fetches + len(urls) + sources + 2 * stages + formats + 4,
    }
    assert planned_jobs(result) == {job: count for job, count in expected.items() if count}


def test_offline_override_reads_local_copies_of_the_pile(tmp_path, hub):
    """configs/offline-pile.yaml after a Pile config: the same 30 shards and tokenizer, read from data/."""
    for name in [f"data/pile/train/{i:02d}.jsonl.zst" for i in range(30)] + ["data/tokenizers/gpt-neox-20b/tokenizer.json"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("stand-in: a dry run only checks that it exists\n")
    result = snakemake(tmp_path, [CONFIGS / "mamba2-130m.yaml", OFFLINE_PILE], "-n", "all",
                       profile=REPO / "profiles" / "local", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = planned_jobs(result)
    assert jobs["tokenize_shard"] == 30 and "download" not in jobs and "fetch_input" not in jobs, jobs
    assert hub.requests == []


def test_gpu_override_trains_the_real_model_on_one_gpu(tmp_path):
    """configs/gpu-e2e.yaml after a run config: the run's model at full size, one process, the builtin corpus."""
    result = snakemake(tmp_path, [CONFIGS / "mamba2-130m.yaml", GPU_E2E], "--until", "stage_config",
                       profile=REPO / "profiles" / "local", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    stage = yaml.safe_load((tmp_path / "results" / "gpu-e2e" / "train" / "pretrain" / "train.yaml").read_text())
    assert stage["model"] == {"preset": "mamba2-130m", "d_model": 768, "n_layer": 24, "ssm_cfg": {"layer": "Mamba2"}}
    assert (stage["data"]["seq_length"], stage["train"]["steps"], stage["precision"]) == (1024, 300, "auto")
    result = snakemake(tmp_path, [CONFIGS / "mamba2-130m.yaml", GPU_E2E], "-n", "-p", "all",
                       profile=REPO / "profiles" / "local", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "kotomamba launch --nnodes 1 --nproc-per-node 1 --device gpu -- train" in result.stdout
    assert planned_jobs(result)["corpus"] == 1 and planned_jobs(result)["train"] == 1


def run_smoke(workdir: Path, config: Path) -> Path:
    result = snakemake(workdir, [config, SMOKE], "all", profile=REPO / "profiles" / "local")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return workdir / "results" / "smoke"


def metrics(run_root: Path) -> list[dict]:
    lines = (run_root / "train" / "pretrain" / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k in DETERMINISTIC_METRICS or k.startswith("optim/")}
            for line in lines]


def check_smoke_run(root: Path, layer: str) -> None:
    final = json.loads((root / "train" / "pretrain" / "final.json").read_text())
    assert final["step"] == 50
    model = json.loads((root / "train" / "pretrain" / "model_config.json").read_text())
    assert model["ssm_cfg"]["layer"] == layer and model["n_layer"] == 2
    for fmt in ("hf", "mamba_ssm"):
        assert (root / "export" / fmt / "config.json").is_file()
    assert (root / "eval" / "eval.json").is_file() and (root / "report" / "report.md").is_file()
    resolved = yaml.safe_load((root / "config.resolved.yaml").read_text())
    assert resolved["run"] == "smoke" and resolved["model"]["ssm_cfg"] == {"layer": layer}
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["git"]["commit"] and manifest["packages"]["torch"] and manifest["seed"] == resolved["seed"]
    checksummed = set(manifest["inputs"])
    assert {"results/smoke/tokenizer/tokenizer.model", "results/smoke/tokenized/pydoc_text_document.bin",
            "results/smoke/corpus/pydoc.jsonl"} <= checksummed
    stage_manifest = json.loads((root / "train" / "pretrain" / "manifest.json").read_text())
    assert stage_manifest["world_size"] == 2 and stage_manifest["seed"] == resolved["seed"]
    records = metrics(root)
    assert any("loss" in r and "grad_norm" in r for r in records) and any("val_loss" in r for r in records)


@pytest.fixture(scope="module")
def mamba2_smoke(tmp_path_factory) -> Path:
    return run_smoke(tmp_path_factory.mktemp("mamba2-smoke"), CONFIGS / "mamba2-130m.yaml")


def test_smoke_runs_a_mamba1_config_end_to_end(tmp_path):
    check_smoke_run(run_smoke(tmp_path, CONFIGS / "mamba-130m.yaml"), "Mamba1")


def test_smoke_runs_a_mamba2_config_end_to_end(mamba2_smoke):
    check_smoke_run(mamba2_smoke, "Mamba2")


def test_resolved_config_reproduces_data_bytes_and_cpu_metrics(mamba2_smoke, tmp_path):
    resolved = tmp_path / "config.resolved.yaml"
    shutil.copy(mamba2_smoke / "config.resolved.yaml", resolved)
    result = snakemake(tmp_path, [resolved], "all", profile=REPO / "profiles" / "local")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    again = tmp_path / "results" / "smoke"
    data = ["corpus/pydoc.jsonl", "tokenizer/tokenizer.model", "tokenized/pydoc_text_document.bin",
            "tokenized/pydoc_text_document.idx"]
    for name in data:
        assert (again / name).read_bytes() == (mamba2_smoke / name).read_bytes(), name
    assert metrics(again) == metrics(mamba2_smoke)
    first, second = (json.loads((root / "manifest.json").read_text())["inputs"] for root in (mamba2_smoke, again))
    assert first == second
