"""The reproduction configs in configs/: each is a valid pipeline config whose stages are valid trainer configs,
each states the published recipe it claims (checked here against the papers' numbers), and configs/smoke.yaml
turns each into a tiny CPU run of the same layer type."""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from kotomamba.data.download import parse_source
from kotomamba.data.hub import parse_hub_file
from kotomamba.model.config import preset
from kotomamba.pipeline import deep_merge, stage_train_config, validate
from kotomamba.pipeline.inputs import references
from kotomamba.train.config import load_config
from kotomamba.train.flops import param_count

from config_paths import CONFIGS, EXPECTED, RUN_CONFIGS, SMOKE

SEQ = 2048

# The published recipes, with where each number comes from (Mamba: arXiv 2312.00752 Table 12, App. E.2.1/E.2.3;
# Mamba-2: arXiv 2405.21060 Table 9, App. D.2/D.3; the 2.8B Mamba LR: state-spaces/mamba#144).
# name: (layer, d_model, n_layer, nominal parameters, peak LR, tokens per step, published batch?)
STATE_SPACES = {
    "mamba-130m": ("Mamba1", 768, 24, 130e6, 3e-3, 2**19, True),
    "mamba-370m": ("Mamba1", 1024, 48, 370e6, 1.5e-3, 2**19, True),
    "mamba-790m": ("Mamba1", 1536, 48, 790e6, 1.25e-3, 2**19, True),
    "mamba-1.4b": ("Mamba1", 2048, 48, 1.4e9, 1e-3, 2**20, True),
    "mamba-2.8b": ("Mamba1", 2560, 64, 2.8e9, 4.8e-4, 2**20, False),
    "mamba2-130m": ("Mamba2", 768, 24, 130e6, 3e-3, 2**19, True),
    "mamba2-370m": ("Mamba2", 1024, 48, 370e6, 1.5e-3, 2**19, True),
    "mamba2-780m": ("Mamba2", 1536, 48, 780e6, 1.25e-3, 2**19, True),
    "mamba2-1.3b": ("Mamba2", 2048, 48, 1.3e9, 1e-3, 2**20, True),
    "mamba2-2.7b": ("Mamba2", 2560, 64, 2.7e9, 8e-4, 2**20, True),
}
PREDECESSOR = {  # the project notes on the predecessor's launch scripts
    "kotomamba-2.8b-ja-en": dict(nodes=8, gpus=8, micro=8, gbs=1024, steps=191_000, lr=8e-4, min_lr=1e-5,
                                 precision="bf16", init=False, tokenizer="SentencePieceTokenizer",
                                 weights={"ja": 200, "en": 200}),
    "kotomamba-2.8b-slimpj-ct": dict(nodes=128, gpus=4, micro=2, gbs=1024, steps=95_500, lr=6e-5, min_lr=6e-6,
                                     precision="fp16", init=True, tokenizer="HuggingFaceTokenizer",
                                     weights={"ja": 180, "en": 20}),
}
LM_EVAL_MAMBA = ["lambada_openai", "hellaswag", "piqa", "arc_easy", "arc_challenge", "winogrande"]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def smoked(path: Path) -> dict:
    """The run config with configs/smoke.yaml merged over it, as `--configfile RUN smoke.yaml` does."""
    return validate(deep_merge(load(path), load(SMOKE)), inputs=False)


def trainer_configs(config: dict, tmp_path: Path):
    """Each stage's trainer config, written and read back by the trainer's own loader."""
    for stage in config["stages"]:
        path = tmp_path / f"{config['run']}-{stage['name']}.yaml"
        path.write_text(yaml.safe_dump(stage_train_config(config, stage["name"])))
        yield load_config(path)


def model_config(config: dict):
    fields = copy.deepcopy(config["model"])
    return preset(fields.pop("preset"), **fields)


def test_every_published_run_has_a_config():
    names = {p.stem for p in RUN_CONFIGS}
    assert names == set(STATE_SPACES) | set(PREDECESSOR)


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.stem)
def test_config_is_valid_and_its_stages_are_valid_trainer_configs(path, tmp_path):
    config = validate(load(path), str(path), inputs=False)  # checked here without the data
    assert config["run"] == path.stem
    for train in trainer_configs(config, tmp_path):
        assert train.data.seq_length == SEQ
        assert train.train.global_batch_size % (train.train.micro_batch_size * config["launch"]["nproc_per_node"]
                                                * config["launch"]["nodes"]) == 0
        assert train.train.grad_clip == 1.0 and train.optim.weight_decay == 0.1 and train.optim.betas == [0.9, 0.95]
        assert train.schedule.style == "cosine" and train.optim.master_dtype == "fp32"


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.stem)
def test_config_names_no_machine_path_or_environment_variable(path):
    text = path.read_text()
    for forbidden in ("/work", "/tmp", "/root", "/home", "${", "$HOME"):
        assert forbidden not in text
    # Every input is either the user's (under data/, relative to where snakemake runs) or a hub file at a
    # named revision (a commit hash where one is known).
    for _, reference in references(load(path)):
        assert reference.startswith("data/") or parse_hub_file(parse_source(reference).location), reference


@pytest.mark.parametrize("name", sorted(STATE_SPACES))
def test_state_spaces_config_follows_the_paper(name, tmp_path):
    layer, d_model, n_layer, nominal, lr, tokens_per_step, _ = STATE_SPACES[name]
    config = validate(load(CONFIGS / f"{name}.yaml"), inputs=False)
    (train,) = trainer_configs(config, tmp_path)
    model = model_config(config)
    assert (model.layer, model.d_model, model.n_layer, model.vocab_size) == (layer, d_model, n_layer, 50277)
    assert abs(param_count(model.to_dict()) / nominal - 1) < 0.05  # the names round the real counts (1.4b: 1.37B)
    assert config["corpus"]["sources"][0]["name"] == "pile"
    assert config["tokenizer"] == {**config["tokenizer"], "type": "HuggingFaceTokenizer"}
    tokenizer = parse_source(config["tokenizer"]["model"])
    assert re.fullmatch(r"hf://EleutherAI/gpt-neox-20b@[0-9a-f]{40}/tokenizer\.json", tokenizer.location)
    assert tokenizer.sha256 is not None
    shards = [parse_hub_file(parse_source(url).location) for url in config["corpus"]["sources"][0]["urls"]]
    assert [shard.path for shard in shards] == [f"train/{i:02d}.jsonl.zst" for i in range(30)]  # the Pile's 30
    assert {(shard.repo_type, shard.repo_id) for shard in shards} == {("dataset", shards[0].repo_id)}
    assert train.train.global_batch_size * SEQ == tokens_per_step
    tokens = train.train.steps * tokens_per_step
    assert 300e9 <= tokens < 300e9 + tokens_per_step  # 300B tokens, rounded up to whole steps
    assert train.optim.lr == pytest.approx(lr) and train.optim.min_lr == 1e-5
    assert train.schedule.warmup_steps == round(train.train.steps / 10)
    assert train.precision == "bf16" and config["init"] is None
    expected_tasks = LM_EVAL_MAMBA + (["openbookqa"] if layer == "Mamba2" else [])
    assert config["evaluate"]["lm_eval_tasks"] == expected_tasks


@pytest.mark.parametrize("name", sorted(PREDECESSOR))
def test_predecessor_config_follows_its_launch_script(name, tmp_path):
    facts = PREDECESSOR[name]
    config = validate(load(CONFIGS / f"{name}.yaml"), inputs=False)
    (train,) = trainer_configs(config, tmp_path)
    assert (config["launch"]["nodes"], config["launch"]["nproc_per_node"]) == (facts["nodes"], facts["gpus"])
    assert (train.train.micro_batch_size, train.train.global_batch_size) == (facts["micro"], facts["gbs"])
    assert train.train.steps == facts["steps"] and train.schedule.warmup_steps == 2000
    assert (train.optim.lr, train.optim.min_lr, train.optim.eps) == (facts["lr"], facts["min_lr"], 1e-6)
    assert train.precision == facts["precision"] and train.parallel.activation_checkpointing
    assert (train.checkpoint.interval, train.eval.interval, train.eval.steps) == (500, 100, 10)
    assert (config["init"] is not None) == facts["init"]
    assert config["tokenizer"]["type"] == facts["tokenizer"]
    assert {s["name"]: s["weight"] for s in config["corpus"]["sources"]} == facts["weights"]
    model = model_config(config)
    assert (model.layer, model.d_model, model.n_layer) == ("Mamba1", 2560, 64)


def test_expected_scores_cover_every_state_spaces_run_and_add_up():
    expected = load(EXPECTED)
    assert set(expected) == set(STATE_SPACES)
    for name, entry in expected.items():
        tasks = LM_EVAL_MAMBA + (["openbookqa"] if name.startswith("mamba2-") else [])
        accuracies = [next(v for k, v in entry[task].items() if k.startswith("acc")) for task in tasks]
        assert all(0 < a < 100 for a in accuracies) and entry["pile_ppl"] > 1
        mean = sum(accuracies) / len(accuracies)
        if "note" in entry:  # the paper's printed average differs from its columns: the note gives the mean
            assert f"{mean:.2f}" in entry["note"]
        else:
            assert abs(mean - entry["average"]) < 0.051, name


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.stem)
def test_smoke_override_makes_a_tiny_cpu_run_of_the_same_layer(path, tmp_path):
    config = smoked(path)
    published = model_config(validate(load(path), inputs=False))
    model = model_config(config)
    assert model.layer == published.layer
    assert (model.n_layer, model.d_model) == (2, 64)
    assert config["run"] == "smoke" and config["init"] is None
    assert [s.get("builtin") for s in config["corpus"]["sources"]] == ["python-docstrings"]
    assert config["tokenizer"]["type"] == "SentencePieceTokenizer" and config["tokenizer"]["model"] is None
    assert config["launch"] == {"nodes": 1, "nproc_per_node": 2, "device": "cpu"}
    (train,) = trainer_configs(config, tmp_path)
    assert train.train.steps == 50 and train.data.seq_length == 64 and train.precision == "auto"
    assert train.optim.lr == load(path)["train"]["optim"]["lr"]  # the recipe's own optimizer settings stay
