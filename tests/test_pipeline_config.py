"""The pipeline config: schema validation (defaults, unknown keys, types, line numbers) and stage composition."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kotomamba.errors import UserError
from kotomamba.pipeline import RunPaths, stage_train_config, validate

REPO = Path(__file__).resolve().parents[1]


def default_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_default_config_is_valid_and_defaults_are_filled():
    config = validate(default_config())
    assert config["tokenize"]["on_bad_line"] == "error"
    assert config["corpus"]["sources"][0]["weight"] == 1.0
    assert config["init"] is None


def edited_default(tmp_path, old: str, new: str, marker: str) -> tuple[str, Path, int]:
    """config.yaml with ``old`` replaced by ``new``, written as bad.yaml: (text, path, the line holding ``marker``)."""
    text = (REPO / "config.yaml").read_text().replace(old, new)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return text, path, next(i for i, l in enumerate(text.splitlines(), 1) if marker in l)


def test_unknown_key_is_rejected_with_path_and_line(tmp_path):
    text, path, line = edited_default(tmp_path, "  reset_at_eod: true", "  reset_at_eod: true\n  shuffle_docs: 3",
                                      "shuffle_docs")
    with pytest.raises(UserError) as info:
        validate(yaml.safe_load(text), str(path))
    assert f"{path}:{line}: data.shuffle_docs: unknown key" in str(info.value)


def test_a_misspelt_key_is_named_with_the_key_it_is_near(tmp_path):
    text, path, line = edited_default(tmp_path, "seed: 1234", "sed: 1234", "sed:")
    with pytest.raises(UserError) as info:
        validate(yaml.safe_load(text), str(path))
    assert f"{path}:{line}: sed: unknown key; did you mean `seed`?" in str(info.value)


def test_a_key_written_twice_is_refused_with_both_lines(tmp_path):
    """Snakemake's YAML loader keeps the last of a duplicated key; validate reads the file again and refuses it."""
    text, path, line = edited_default(tmp_path, "workers: 2", "workers: 2\n  workers: 3", "workers: 3")
    with pytest.raises(UserError, match=rf"bad.yaml:{line}: tokenize.workers: duplicate key \(first written at "
                                        rf"line {line - 1}"):
        validate(yaml.safe_load(text), str(path))


def test_wrong_type_names_the_nested_path(tmp_path):
    text, path, line = edited_default(tmp_path, "workers: 2", "workers: two", "workers")
    with pytest.raises(UserError, match=rf"bad.yaml:{line}: tokenize.workers: 'two' is not of type 'integer'"):
        validate(yaml.safe_load(text), str(path))


def test_document_resets_with_a_mamba1_model_are_refused_before_any_job(tmp_path):
    """config.yaml's own comment offers Mamba1; with its reset_at_eod: true the dry run must stop, naming that line."""
    text, path, line = edited_default(tmp_path, "ssm_cfg: {layer: Mamba2}", "ssm_cfg: {layer: Mamba1}", "reset_at_eod")
    with pytest.raises(UserError) as info:
        validate(yaml.safe_load(text), str(path))
    assert (f"{path}:{line}: data.reset_at_eod (stage 'pretrain'): field 'data.reset_at_eod' cannot be true for a "
            "Mamba1 model") in str(info.value)
    validate(yaml.safe_load(text.replace("reset_at_eod: true", "reset_at_eod: false")), str(path))


def test_unknown_stage_source_and_duplicate_stage_are_rejected():
    config = default_config()
    config["stages"].append(copy.deepcopy(config["stages"][0]))
    config["stages"][1]["sources"] = ["nope"]
    with pytest.raises(UserError) as info:
        validate(config)
    message = str(info.value)
    assert "stages[2].name: duplicate stage name 'pretrain'" in message
    assert "stages[1].sources[0]: unknown corpus source 'nope'" in message


def test_stage_configs_chain_and_merge():
    config = validate(default_config())
    first = stage_train_config(config, "pretrain")
    second = stage_train_config(config, "long-context")
    paths = RunPaths(config)
    assert first["init"]["from"] is None
    assert second["init"]["from"] == paths.stage_dir("pretrain")
    assert first["data"]["seq_length"] == 128 and second["data"]["seq_length"] == 256
    assert second["train"]["micro_batch_size"] == 4 and second["train"]["global_batch_size"] == 16
    assert first["data"]["data_path"] == f"1.0 {paths.tokenized_prefix('pydoc')}"
    assert first["run_dir"] == "results/default/train/pretrain"


def test_snakefile_rejects_a_bad_config_before_any_job(tmp_path):
    pytest.importorskip("snakemake")  # Python >= 3.11
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: default\nbogus: 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(bad)],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode != 0
    assert "bogus: unknown key" in result.stdout + result.stderr


def test_dry_run_lists_every_stage(tmp_path):
    pytest.importorskip("snakemake")  # Python >= 3.11
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--profile", str(REPO / "profiles" / "local"),
         "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "all", "--configfile", str(REPO / "config.yaml")],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    for rule in ("corpus", "tokenizer", "tokenize", "stage_config", "train", "convert", "evaluate", "report"):
        assert f"rule {rule}:" in result.stdout


def test_a_vocabulary_without_room_for_the_text_is_refused_before_any_job(tmp_path):
    """The trainer's own check (byte fallback's pieces and the special tokens), at the config's line."""
    text, path, line = edited_default(tmp_path, "vocab_size: 4000", "vocab_size: 40", "vocab_size")
    with pytest.raises(UserError) as info:
        validate(yaml.safe_load(text), str(path))
    assert f"{path}:{line}: tokenizer.vocab_size: --vocab-size 40 leaves no room" in str(info.value)
    validate(yaml.safe_load(text.replace("vocab_size: 40", "vocab_size: 261")), str(path))


def test_a_split_without_a_validation_share_is_refused_while_something_evaluates(tmp_path):
    text, path, line = edited_default(tmp_path, 'split: "949,50,1"', 'split: "1000,0,0"', "split:")
    with pytest.raises(UserError) as info:
        validate(yaml.safe_load(text), str(path))
    message = str(info.value)
    assert f"{path}:{line}: data.split: gives the valid split no documents" in message
    assert "evaluate.eval_samples 32" in message and "stage 'pretrain'" in message
    validate(yaml.safe_load(text.replace('"1000,0,0"', '"1000,1,0"')), str(path))


def test_an_empty_json_keys_is_refused_at_its_line(tmp_path):
    text, path, line = edited_default(tmp_path, "json_keys: [text]", "json_keys: []", "json_keys")
    with pytest.raises(UserError, match=rf"bad.yaml:{line}: tokenize.json_keys: \[\] should be non-empty"):
        validate(yaml.safe_load(text), str(path))


@pytest.mark.parametrize("given, minutes", [("1h", 60), ("90m", 90), ("45", 45), (20, 20)])
def test_runtimes_are_read_as_snakemake_reads_them(given, minutes):
    config = default_config()
    config["resources"] = {"corpus": {"runtime": given, "max_runtime": "2h"}}
    assert validate(config)["resources"]["corpus"] == {"runtime": minutes, "max_runtime": 120}


def test_a_runtime_that_is_no_time_span_is_refused_at_its_line(tmp_path):
    text, path, line = edited_default(tmp_path, "launch:\n", 'resources:\n  corpus: {runtime: "soon"}\nlaunch:\n',
                                      "soon")
    with pytest.raises(UserError, match=rf"bad.yaml:{line}: resources.corpus.runtime: 'soon' is not a time span"):
        validate(yaml.safe_load(text), str(path))


@pytest.mark.parametrize("given, message", [
    ("{runtme: 60}", "resources.train.runtme: unknown resource `runtme`, which no profile reads; did you mean `runtime`?"),
    ("{sge_mpi: mpi}", "resources.train.sge_mpi: unknown resource `sge_mpi`, which no profile reads; did you mean"),
    ("{runtime: 0}", "resources.train.runtime: 0 is not a positive number of minutes"),
    ("{runtime: -5}", "resources.train.runtime: -5 is not a positive number of minutes"),
    ("{mem_mb: 16G}", "resources.train.mem_mb: '16G' is not a positive whole number of megabytes"),
    ("{gpus_per_node: two}", "resources.train.gpus_per_node: 'two' is not a whole number of at least 0"),
    ("{nodes: 2}", "resources.train.nodes: 2 nodes, but the job runs on 1 (launch.nodes)"),
])
def test_a_resource_no_scheduler_would_take_is_refused_at_its_line(tmp_path, given, message):
    """Snakemake passes resources on as given: a misspelt name was read by nobody, runtime 0 asked for no wall
    time and -5 for `h_rt=-1:55:00`, and resources.train.nodes asked for nodes that `launch` never used."""
    text, path, line = edited_default(tmp_path, "launch:\n", f"resources:\n  train: {given}\nlaunch:\n", given)
    with pytest.raises(UserError) as info:
        validate(yaml.safe_load(text), str(path))
    assert f"{path}:{line}: {message}" in str(info.value)


def test_a_gpu_request_smaller_than_the_processes_per_node_is_refused():
    config = default_config()
    config["launch"] = {**config["launch"], "device": "gpu", "nproc_per_node": 2}
    config["resources"] = {"train": {"gres": "gpu:h100:1"}}
    with pytest.raises(UserError, match=r"resources.train.gres: 'gpu:h100:1' gives a node 1 GPU\(s\) for "
                                        r"launch.nproc_per_node 2 processes"):
        validate(copy.deepcopy(config))
    config["resources"] = {"train": {"gres": "gpu:h100:2", "cpus_per_task": 64, "mem_mb": 400000, "runtime": "12h",
                                     "slurm_partition": "gpu", "sge_extra": "-notify", "abci_group": "g"},
                           "tokenize": {"mem": "16GB", "disk_mib": 2048}}  # Snakemake's own forms of sizes
    assert validate(config)["resources"]["train"]["runtime"] == 720


def test_a_key_written_twice_is_refused_naming_both_lines(tmp_path):
    """A second `train:` under a stage would silently drop the first one's micro_batch_size."""
    text, path, _ = edited_default(tmp_path, "      schedule: {warmup_steps: 5}",
                                      "      schedule: {warmup_steps: 5}\n    train:\n      data: {seq_length: 256}",
                                      "warmup_steps: 5")
    lines = text.splitlines()
    second = max(i for i, l in enumerate(lines, 1) if l == "    train:")
    first = max(i for i, l in enumerate(lines, 1) if l == "    train:" and i < second)
    with pytest.raises(UserError) as info:
        validate(yaml.safe_load(text), str(path))
    assert f"{path}:{second}: stages[1].train: duplicate key (first written at line {first}" in str(info.value)


def test_a_bad_command_line_value_is_blamed_on_the_command_line(tmp_path):
    """`--config seed=abc` over config.yaml's valid `seed: 1234`: the error names --config, not config.yaml's line."""
    config = default_config()
    config["seed"] = "abc"
    with pytest.raises(UserError) as info:
        validate(config, str(REPO / "config.yaml"), command_line={"seed": "abc"})
    assert "--config seed=abc (command line): seed: 'abc' is not of type 'integer'" in str(info.value)
    assert "config.yaml:" not in str(info.value)


def test_snakefile_blames_a_bad_config_value_on_the_command_line(tmp_path):
    pytest.importorskip("snakemake")  # Python >= 3.11
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
         "--configfile", str(REPO / "config.yaml"), "--config", "seed=abc"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode != 0
    assert "--config seed=abc (command line): seed: 'abc' is not of type 'integer'" in result.stdout + result.stderr
