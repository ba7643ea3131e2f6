"""The checks of a whole run that need more than the schema: every stage's trainer config, the model,
the first stage's ``init``, the tokenizer and the local corpus sources, before any job runs (remote
inputs are fetched by jobs: nothing here asks the network).

A stage's trainer config is the shared ``train`` merged with the stage's own plus what the pipeline
fixes (:data:`kotomamba.pipeline.config.PIPELINE_KEYS`). It is checked by the trainer's own rules
(:func:`kotomamba.train.config.build_config`), so ``snakemake -n`` refuses what the training job would
refuse, and each problem names the user's file, line and key path (``stages[1].train.optim.lr``), not
the ``train.yaml`` the pipeline generates from it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from kotomamba.data.download import is_remote
from kotomamba.errors import UserError
from kotomamba.pipeline.config import PIPELINE_KEYS, stage_train_config

Problem = tuple[list, str]  # (key path in the run config, message)


def _dotted_keys(mapping: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in mapping.items():
        keys.append(prefix + str(key))
        if isinstance(value, dict):
            keys.extend(_dotted_keys(value, f"{prefix}{key}."))
    return keys


def _has(config: dict, path: list) -> bool:
    node = config
    for part in path:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return False
    return True


def _written_at(config: dict, index: int, dotted: str) -> list:
    """The key path in the run config that the trainer key ``dotted`` of stage ``index`` comes from:
    the stage's own ``train``, else the shared one, else the run key the pipeline derives it from;
    the deepest key that exists wins."""
    parts = dotted.split(".")
    for depth in range(len(parts), 0, -1):
        head = parts[:depth]
        for base in (["stages", index, "train"], ["train"]):
            if _has(config, base + head):
                return base + head
        if ".".join(head) in PIPELINE_KEYS:
            return PIPELINE_KEYS[".".join(head)](config, index)
    return ["stages", index]


def _stage_problems(config: dict, index: int, locate: Callable[[list], str],
                    checked_stages: dict | None = None) -> list[Problem]:
    from kotomamba.train.config import accumulation_steps, build_config

    stage = config["stages"][index]
    problems = []
    for base in (["stages", index, "train"], ["train"]):
        written = config["train"] if base == ["train"] else stage["train"]
        for dotted in _dotted_keys(written):
            if dotted in PIPELINE_KEYS:
                source = ".".join(map(str, PIPELINE_KEYS[dotted](config, index)))
                problems.append((base + dotted.split("."), f"is set by the pipeline for every stage (from {source}); "
                                 "remove it here"))
    if problems:
        return problems

    def where(dotted: str) -> str:
        return f"{locate(_written_at(config, index, dotted))} (stage {stage['name']!r})"

    try:
        checked = build_config(stage_train_config(config, stage["name"]), where)
    except UserError as error:
        return [(None, str(error))]
    if checked_stages is not None:
        checked_stages[stage["name"]] = checked
    launch = config["launch"]
    try:  # the world size the training job will have, as configured
        accumulation_steps(checked.train, launch["nodes"] * launch["nproc_per_node"],
                           f"launch.nodes {launch['nodes']} x launch.nproc_per_node {launch['nproc_per_node']}")
    except UserError as error:
        return [(_written_at(config, index, "train.global_batch_size"), f"{error} (stage {stage['name']!r})")]
    return []


def _model_problems(config: dict) -> list[Problem]:
    import dataclasses

    from kotomamba.model.config import MambaConfig, configured

    known = {f.name for f in dataclasses.fields(MambaConfig)} | {"preset"}
    unknown = [key for key in config["model"] if key not in known]
    if unknown:
        return [(["model", key], f"not a model field (known: {', '.join(sorted(known))})") for key in unknown]
    try:
        configured(config["model"], config["tokenizer"].get("vocab_size"))
    except (UserError, TypeError, ValueError) as error:
        return [(["model", "preset"] if "preset" in config["model"] else ["model"], str(error))]
    return []


def _init_problems(config: dict) -> list[Problem]:
    from kotomamba.pipeline.inputs import init_references
    from kotomamba.train.run_dir import init_source_kind

    if len(init_references(config)) != 1 or is_remote(config["init"]):
        return []  # remote files: checked once fetched (remote_problems checks their names)
    path = Path(config["init"])
    if not path.exists():
        return [(["init"], f"{path} does not exist")]
    try:
        init_source_kind(path)
    except UserError as error:
        return [(["init"], str(error))]
    return []


def _tokenizer_problems(config: dict) -> list[Problem]:
    model = config["tokenizer"].get("model")
    if model and not is_remote(model) and not Path(model).exists():
        return [(["tokenizer", "model"], f"{model} does not exist")]
    return []


def _source_problems(config: dict) -> list[Problem]:
    from kotomamba.data.download import source_state

    problems = []
    for i, source in enumerate(config["corpus"]["sources"]):
        for j, url in enumerate(source.get("urls", [])):
            try:
                source_state([url])
            except UserError as error:
                problems.append((["corpus", "sources", i, "urls", j], str(error)))
    return problems


def run_problems(config: dict, locate: Callable[[list], str], inputs: bool = True) -> list[Problem]:
    """Every problem of a schema-valid run config, each as (key path or None, message); with
    ``inputs``, also the files it names that are missing.

    ``locate(path)`` turns a key path into ``"file:line"``; a message that already says where
    (a trainer check) comes with path ``None``.
    """
    problems = _model_problems(config)
    if inputs:
        problems += _init_problems(config) + _tokenizer_problems(config) + _source_problems(config)
    checked: dict = {}
    for index in range(len(config["stages"])):
        problems += _stage_problems(config, index, locate, checked)
    return problems + _split_problems(config, checked)


def _split_problems(config: dict, checked: dict) -> list[Problem]:
    """A ``data.split`` without a validation share, where something reads the valid split: the evaluate job's
    perplexity (``evaluate.eval_samples``) and each stage's evaluation during training
    (``EvalConfig.reads_valid_split``)."""
    from kotomamba.data.gpt_dataset import parse_split

    try:
        valid_share = parse_split(config["data"]["split"])[1]
    except UserError as error:
        return [(["data", "split"], str(error))]
    if valid_share > 0:
        return []
    readers = [f"evaluate.eval_samples {config['evaluate']['eval_samples']} (the evaluate job's perplexity)"] \
        if config["evaluate"]["eval_samples"] > 0 else []
    for name, stage in checked.items():
        e = stage.eval
        if e.reads_valid_split:
            readers.append(f"stage {name!r}'s eval (steps {e.steps}, interval {e.interval}, final {e.final})")
    if not readers:
        return []
    return [(["data", "split"], f"gives the valid split no documents, but it is read by {'; '.join(readers)}: "
                                "give it a share (e.g. 949,50,1)")]
