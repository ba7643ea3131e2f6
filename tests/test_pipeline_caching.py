"""Caching you can trust, through `snakemake` itself: a changed, interrupted, forced or mistyped stage
never leaves a stale result called done (issue "Caching you can trust", one test per case).

One small two-stage run is trained once per module; each test works on its own copy of that
working directory (results and Snakemake's metadata, modification times kept).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from kotomamba.data.indexed_dataset import IndexedDataset
from pipeline_helpers import output_of, planned_jobs, snakemake, snakemake_command, tiny_config

pytestmark = pytest.mark.slow
pytest.importorskip("snakemake")

RUN = "results/tiny"


def small_config() -> dict:
    """Two stages of a few steps on one process, exported for mamba-ssm only: the DAG in under a minute."""
    config = tiny_config()
    config["corpus"]["sources"][0]["max_bytes"] = 200_000
    config["launch"]["nproc_per_node"] = 1
    config["export"]["formats"] = ["mamba_ssm"]
    config["train"]["eval"] = {"interval": 0, "steps": 2}
    config["train"]["checkpoint"] = {"interval": 4, "keep_last": 2}
    config["train"]["schedule"]["warmup_steps"] = 2
    config["stages"][0]["train"]["train"] = {"steps": 8}
    config["stages"][1]["train"]["train"] = {"steps": 4, "micro_batch_size": 4}
    config["stages"][1]["train"]["schedule"] = {"warmup_steps": 2}
    return config


def write_config(workdir: Path, config: dict) -> Path:
    path = workdir / "run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("trained")
    result = snakemake(workdir, write_config(workdir, small_config()), "all")
    assert result.returncode == 0, output_of(result)
    return workdir


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A copy of the trained working directory of this test's own."""
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir, symlinks=True)
    return workdir


def tree_state(workdir: Path) -> dict[str, tuple[int, int]]:
    """Every file under results/ and .snakemake/metadata with its size and modification time."""
    state = {}
    for top in ("results", ".snakemake/metadata"):
        for path in sorted((workdir / top).rglob("*")):
            if path.is_file():
                stat = path.stat()
                state[str(path.relative_to(workdir))] = (stat.st_size, stat.st_mtime_ns)
    return state


def exported_weights(workdir: Path) -> bytes:
    export = workdir / RUN / "export" / "mamba_ssm"
    return b"".join(p.read_bytes() for p in sorted(export.iterdir()) if p.suffix in (".bin", ".safetensors"))


def final(workdir: Path, stage: str) -> dict:
    return json.loads((workdir / RUN / "train" / stage / "final.json").read_text())


def logged_steps(workdir: Path, stage: str) -> list[int]:
    lines = (workdir / RUN / "train" / stage / "metrics.jsonl").read_text().splitlines()
    return [record["step"] for record in map(json.loads, lines) if "loss" in record]


def snakemake_training_long_context(run: Path, steps: int) -> tuple[subprocess.Popen, Path, Path]:
    """`snakemake all` started in a session of its own with long-context changed to ``steps`` steps, so that it
    trains again: the process, the config file and the stage's directory."""
    config = small_config()
    config["stages"][1]["train"]["train"]["steps"] = steps
    config_file = write_config(run, config)
    process = subprocess.Popen(snakemake_command(run, config_file, "all"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    return process, config_file, run / RUN / "train" / "long-context"


def test_a_changed_earlier_stage_retrains_the_later_ones(run):
    before = exported_weights(run)
    config = small_config()
    config["stages"][0]["train"]["train"]["steps"] = 6
    result = snakemake(run, write_config(run, config), "all")
    assert result.returncode == 0, output_of(result)

    assert final(run, "pretrain")["step"] == 6
    manifest = json.loads((run / RUN / "train" / "long-context" / "manifest.json").read_text())
    assert manifest["resumed_from"] is None  # started from the new pretrain, not from its own old checkpoint
    assert logged_steps(run, "long-context")[0] <= 4
    assert exported_weights(run) != before


def test_an_interrupted_stage_is_never_done(run):
    """Ctrl-C while a changed stage trains: the next run trains it again, whatever exists downstream."""
    process, config_file, stage_dir = snakemake_training_long_context(run, 100_000)  # cannot finish first
    try:
        deadline = time.monotonic() + 600
        # The stage has started over once its earlier run is set aside.
        while not (stage_dir / "superseded").exists():
            assert process.poll() is None, "snakemake ended before the stage started"
            assert time.monotonic() < deadline, "the changed stage never started"
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        process.wait(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode != 0
    assert not (stage_dir / "final.json").exists()

    plan = planned_jobs(snakemake(run, config_file, "-n", "all"))
    assert plan.get("train") == 1 and plan.get("convert") == 1 and plan.get("evaluate") == 1, plan
    assert plan.get("report") == 1


@pytest.mark.parametrize("key, value, where", [
    ("preset", "mamba2-13m", "model.preset"),
    ("n_layers", 3, "model.n_layers"),
])
def test_a_typo_changes_nothing_on_disk(run, key, value, where):
    before = tree_state(run)
    config = small_config()
    config["model"][key] = value
    config_file = write_config(run, config)
    for args in (("-n", "all"), ("all",)):
        result = snakemake(run, config_file, *args)
        assert result.returncode != 0
        said = result.stdout + result.stderr
        assert f"{config_file}:" in said and where in said, said[-3000:]
    assert tree_state(run) == before

    result = snakemake(run, write_config(run, small_config()), "-n", "all")
    assert result.returncode == 0 and "Nothing to be done" in result.stdout + result.stderr, output_of(result)


def test_a_missing_init_model_is_named_before_any_job(run):
    before = tree_state(run)
    config = small_config()
    config["init"] = "models/not-there"
    config_file = write_config(run, config)
    result = snakemake(run, config_file, "all")
    assert result.returncode != 0 and "init: models/not-there does not exist" in output_of(result), output_of(result)
    assert tree_state(run) == before


@pytest.mark.parametrize("section, key, value, message", [
    ("train", "steps", 0, "must be at least 1, got 0"),
    ("train", "steps", -5, "must be at least 1, got -5"),
    ("train", "stepz", 3, "unknown field 'train.stepz'"),
    ("optim", "lr", "fast", "field 'optim.lr' must be float, got 'fast'"),
    ("data", "split", "90,5,5", "is set by the pipeline for every stage"),
])
def test_every_stage_is_checked_before_any_job_runs(tmp_path, section, key, value, message):
    """A mistake in the second stage is reported by `snakemake -n`, at its line, before the first trains."""
    config = small_config()
    config["stages"][1]["train"].setdefault(section, {})[key] = value
    config_file = write_config(tmp_path, config)
    result = snakemake(tmp_path, config_file, "-n", "all")
    assert result.returncode != 0
    text = config_file.read_text().splitlines()
    line = next(i for i, row in enumerate(text, start=1) if row.strip().startswith(f"{key}:") and str(value) in row
                and i > next(j for j, r in enumerate(text, start=1) if "long-context" in r))
    assert f"{config_file}:{line}: stages[1].train.{section}.{key}" in result.stdout, output_of(result)
    assert message in result.stdout
    assert not (tmp_path / "results").exists()


def test_global_batch_must_divide_over_every_process(tmp_path):
    config = small_config()
    config["launch"]["nproc_per_node"] = 3
    result = snakemake(tmp_path, write_config(tmp_path, config), "-n", "all")
    assert result.returncode != 0
    assert "must be a multiple of micro_batch_size 8 x launch.nodes 1 x launch.nproc_per_node 3" in result.stdout


def test_forcerun_retrains_every_stage_from_its_start_and_keeps_the_old_run(run):
    old_metrics = {stage: (run / RUN / "train" / stage / "metrics.jsonl").read_text()
                   for stage in ("pretrain", "long-context")}
    config_file = run / "run.yaml"
    result = snakemake(run, config_file, "--forcerun", "train", "all")
    assert result.returncode == 0, output_of(result)
    for stage in ("pretrain", "long-context"):
        stage_dir = run / RUN / "train" / stage
        log = (run / RUN / "logs" / "train" / f"{stage}.log").read_text()
        assert "starting over" in log and "forced" in log
        kept = sorted((stage_dir / "superseded").rglob("metrics.jsonl"))
        assert old_metrics[stage] in [path.read_text() for path in kept]
        assert final(run, stage)["step"] == (8 if stage == "pretrain" else 4)
        assert json.loads((stage_dir / "manifest.json").read_text())["resumed_from"] is None
    assert not list((run / RUN / "train").rglob("restart-requested"))


def test_forcing_one_stage_retrains_it_and_nothing_before_it(run):
    """The README's command: force the last stage's final.json. On CPU the retrained stage reproduces its
    result exactly, so `all` then finds the export up to date (Snakemake compares the content)."""
    config_file = run / "run.yaml"
    stage_dir = run / RUN / "train" / "long-context"
    pretrain_final = (run / RUN / "train" / "pretrain" / "final.json").stat().st_mtime_ns
    old_final = (stage_dir / "final.json").read_text()
    result = snakemake(run, config_file, "--force", f"{RUN}/train/long-context/final.json")
    assert result.returncode == 0, output_of(result)
    assert "starting over" in (run / RUN / "logs" / "train" / "long-context.log").read_text()
    assert json.loads((stage_dir / "manifest.json").read_text())["resumed_from"] is None
    assert list((stage_dir / "superseded").rglob("metrics.jsonl"))
    assert (run / RUN / "train" / "pretrain" / "final.json").stat().st_mtime_ns == pretrain_final
    assert (stage_dir / "final.json").read_text() == old_final
    result = snakemake(run, config_file, "-n", "all")
    assert "Nothing to be done" in result.stdout + result.stderr, output_of(result)


def test_a_stage_that_finished_after_snakemake_died_is_not_trained_again(run):
    """Snakemake killed (kill -9, an OOM killer, a login node's reaper) while a stage trains: the trainer runs on
    and finishes. The next run (the profiles' --rerun-incomplete) finds the stage's outputs marked incomplete and
    runs its job again: the stage resumes at its last step and is not trained from step 1."""
    # Long enough to be training when Snakemake is killed, at its first checkpoint.
    process, config_file, stage_dir = snakemake_training_long_context(run, 120)
    try:
        deadline = time.monotonic() + 600
        while not list((stage_dir / "checkpoints").glob("step_*")) or not (stage_dir / "superseded").exists():
            assert process.poll() is None, "snakemake ended before the stage trained"
            assert time.monotonic() < deadline, "the changed stage never trained"
            time.sleep(0.2)
        process.kill()  # Snakemake alone: its job, in Snakemake's session, trains on
        process.wait()
        assert not (stage_dir / "final.json").exists(), "the stage finished before Snakemake was killed"
        while True:  # until the last of the session's processes, the trainer, has ended
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                break
            assert time.monotonic() < deadline, "the trainer did not finish"
            time.sleep(0.2)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert final(run, "long-context")["step"] == 120
    generations = sorted(path.name for path in (stage_dir / "superseded").iterdir())
    assert snakemake(run, config_file, "--unlock").returncode == 0

    result = snakemake(run, config_file, "--rerun-incomplete", "all")
    assert result.returncode == 0, output_of(result)
    log = (run / RUN / "logs" / "train" / "long-context.log").read_text()
    assert "starting over" not in log and "resuming from" in log, log
    assert sorted(path.name for path in (stage_dir / "superseded").iterdir()) == generations
    assert final(run, "long-context")["step"] == 120


def file_source_config(workdir: Path, trained: Path, source: Path) -> Path:
    """A run on one local JSONL file, with the tokenizer the trained run made (no tokenizer job)."""
    config = small_config()
    config["corpus"]["sources"] = [{"name": "mine", "urls": [str(source)]}]
    config["tokenizer"]["model"] = str(trained / RUN / "tokenizer" / "tokenizer.model")
    return write_config(workdir, config)


def test_a_bad_line_is_named_in_the_users_file_and_a_fixed_source_is_picked_up(trained, tmp_path):
    source = tmp_path / "mine.jsonl"
    good = (trained / RUN / "corpus" / "pydoc.jsonl").read_text().splitlines()[:200]
    source.write_text("\n".join(good[:120] + ['{"text": "unterminated'] + good[120:]) + "\n")
    config_file = file_source_config(tmp_path, trained, source)
    target = f"{RUN}/tokenized/mine_text_document.idx"

    result = snakemake(tmp_path, config_file, target)
    assert result.returncode != 0
    log = (tmp_path / RUN / "logs" / "tokenize" / "mine" / "00000.log").read_text()  # the shard's job
    assert f"{source}:121: invalid JSON" in log, log

    source.write_text("\n".join(good) + "\n")
    result = snakemake(tmp_path, config_file, target)
    assert result.returncode == 0, output_of(result)
    assert len(IndexedDataset(tmp_path / RUN / "tokenized" / "mine_text_document")) == 200
    assert not (tmp_path / RUN / "corpus").exists()  # a local source is read where it is, never copied


def test_an_empty_corpus_stops_at_tokenization_naming_the_source(trained, tmp_path):
    source = tmp_path / "empty.jsonl"
    source.write_text('{"text": ""}\n' * 3)
    config_file = file_source_config(tmp_path, trained, source)
    result = snakemake(tmp_path, config_file, f"{RUN}/tokenized/mine_text_document.idx")
    assert result.returncode != 0
    log = (tmp_path / RUN / "logs" / "tokenize" / "mine.log").read_text()
    assert f"{source}: no documents to tokenize (3 lines: 3 with empty text" in log, log
    assert not (tmp_path / RUN / "tokenized" / "mine_text_document.idx").exists()
