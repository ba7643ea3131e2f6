"""The pipeline's run configuration: schema validation with defaults, and what each stage is given.

The Snakefile calls :func:`validate` before any job runs, so an unknown key or a wrong type stops the
whole workflow with a message naming the file, line and key path (``stages[1].train``). Paths of every
artifact are derived here, in one place, so rules and tests agree on them.
"""
from __future__ import annotations

import copy
import difflib
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from kotomamba.errors import UserError
from kotomamba.io import parse_yaml

RESULTS = "results"


@lru_cache(maxsize=1)
def load_schema() -> dict:
    """The JSON schema (written as YAML) that every pipeline config must satisfy."""
    text = resources.files("kotomamba.pipeline").joinpath("config.schema.yaml").read_text()
    return yaml.safe_load(text)


def _format_path(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _depth_and_line(path: list, config_file: str) -> tuple[int, int | None]:
    """How many parts of ``path`` ``config_file`` holds, and the 1-based line of the deepest one."""
    if not Path(config_file).is_file():
        return 0, None
    node = yaml.compose(Path(config_file).read_text())
    line = node.start_mark.line + 1 if node is not None else None
    for depth, part in enumerate(path):
        if isinstance(node, yaml.MappingNode):
            match = [v for k, v in node.value if k.value == part]
            if not match:
                key_match = [k for k, _ in node.value if k.value == part]
                return (depth + 1, key_match[0].start_mark.line + 1) if key_match else (depth, line)
            node = match[0]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return depth, line
        line = node.start_mark.line + 1
    return len(path), line


def _config_files(config_files) -> list[str]:
    if not config_files:
        return []
    return [str(config_files)] if isinstance(config_files, (str, Path)) else [str(f) for f in config_files]


def _located(path: list, config_files) -> tuple[str | None, int | None]:
    """The config file that sets ``path`` (the last of several that go deepest: later files override
    earlier ones) and the line there."""
    best: tuple[str | None, int | None, int] = (None, None, -1)
    for config_file in _config_files(config_files):
        depth, line = _depth_and_line(path, config_file)
        if depth >= best[2]:
            best = (config_file, line, depth)
    return best[0], best[1]


def _from_command_line(path: list, command_line: dict | None) -> bool:
    """Whether ``--config`` (Snakemake's ``command_line`` values, merged over the files) sets ``path``."""
    node = command_line
    if not node or not path:
        return False
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
        if not isinstance(node, dict):
            return True
    return True


def locate(path: list, config_files, command_line: dict | None = None) -> str:
    """``file:line: key.path`` of a run-config key, for messages: the file of several that sets it, or
    ``--config KEY=VALUE`` where the command line's ``command_line`` values set it."""
    if _from_command_line(path, command_line):
        return f"--config {path[0]}={command_line[path[0]]} (command line): {_format_path(path)}"
    where, line = _located(path, config_files)
    return f"{where or 'config'}{f':{line}' if line else ''}: {_format_path(path)}"


def _with_defaults(validator_class):
    """A validator class that also fills in the schema's ``default`` values (the jsonschema FAQ recipe)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def validate(config: dict, config_file: str | list | None = None, inputs: bool = True,
             command_line: dict | None = None) -> dict:
    """Validate ``config`` in place against the schema, filling defaults; raise UserError on problems.

    Every error is reported, each with its key path and, when ``config_file`` is given (one file or the
    list merged in order), the file and line that set it, or the ``--config`` value where ``command_line``
    (Snakemake's ``--config`` values, merged over the files) sets it. ``inputs_override`` is applied and removed
    (:mod:`kotomamba.pipeline.inputs`). Cross-field rules the schema cannot express (stage names unique,
    referenced sources exist) follow, then every stage's trainer config and, with ``inputs``, the files
    the user provides (local corpus sources, tokenizer, the model to start from) relative to the working
    directory. Nothing is downloaded and no network is asked.
    """
    from kotomamba.pipeline.inputs import apply_overrides, remote_problems, respell_local_inputs
    from kotomamba.pipeline.resources import problems as resource_problems

    for path in _config_files(config_file):
        if Path(path).is_file():  # Snakemake's loader kept the last of a key written twice: refuse it here
            try:
                parse_yaml(Path(path).read_text(), path)
            except yaml.YAMLError:
                pass  # Snakemake has already refused a file that is not YAML
    errors = sorted(_Validator(load_schema()).iter_errors(config), key=lambda e: list(e.absolute_path))
    problems: list = []
    for error in errors:
        path = list(error.absolute_path)
        if error.validator == "additionalProperties":
            known = list(error.schema.get("properties", {}))
            for key in sorted(set(error.instance) - set(known)):
                near = difflib.get_close_matches(str(key), known, n=1)
                problems.append((path + [key], f"unknown key; did you mean `{near[0]}`?" if near else "unknown key"))
            continue
        problems.append((path, error.message))
    if not problems:
        problems += apply_overrides(config) + remote_problems(config) + _runtime_problems(config)
        respell_local_inputs(config)
        problems += resource_problems(config) if not problems else []
    problems += _cross_field_problems(config) if not problems else []
    if not problems:
        from kotomamba.pipeline.stage_check import run_problems

        for path, message in run_problems(config, lambda p: locate(p, config_file, command_line), inputs):
            problems.append((path, message))
    if problems:
        lines = [f"{locate(path, config_file, command_line)}: {message}" if path is not None else message
                 for path, message in problems]
        raise UserError("invalid pipeline configuration:\n  " + "\n  ".join(lines))
    return config


RUNTIME_KEYS = ("runtime", "max_runtime")  # minutes, or a time span as Snakemake takes it ("1h", "90m")


def runtime_minutes(value) -> int | float:
    """Minutes of a rule's ``runtime``: a number as it is, a string as Snakemake reads one (a number of minutes,
    or a time span such as ``1h``, ``90m``, ``2d``: humanfriendly's, rounded to whole minutes, at least 1)."""
    if not isinstance(value, str):
        return value
    from humanfriendly import InvalidTimespan, parse_timespan

    stripped = value.strip()
    if stripped.isdecimal():
        return int(stripped)
    try:
        return max(int(round(parse_timespan(stripped)) / 60), 1)
    except InvalidTimespan:
        raise UserError(f"{value!r} is not a time span (minutes, or such as 1h, 90m, 2d)") from None


def _runtime_problems(config: dict) -> list:
    """Turn ``resources.<rule>.runtime`` / ``max_runtime`` strings into minutes, in place (the rules compute
    retries' runtimes from them); returns the ones that are no time span."""
    problems = []
    for rule, settings in config["resources"].items():
        for key in RUNTIME_KEYS:
            if key in settings:
                try:
                    settings[key] = runtime_minutes(settings[key])
                except UserError as error:
                    problems.append((["resources", rule, key], str(error)))
    return problems


def _cross_field_problems(config: dict) -> list:
    problems = []
    names = [source["name"] for source in config["corpus"]["sources"]]
    for i, name in enumerate(names):
        if names.index(name) != i:
            path = ["corpus", "sources", i, "name"]
            problems.append((path, f"duplicate source name {name!r}"))
    for i, source in enumerate(config["corpus"]["sources"]):
        if "sha256" in source and len(source["sha256"]) != len(source.get("urls", [])):
            path = ["corpus", "sources", i, "sha256"]
            problems.append((path, "needs exactly one checksum per entry of urls"))
    stage_names = [stage["name"] for stage in config["stages"]]
    for i, stage in enumerate(config["stages"]):
        if stage_names.index(stage["name"]) != i:
            path = ["stages", i, "name"]
            problems.append((path, f"duplicate stage name {stage['name']!r}"))
        for j, source in enumerate(stage.get("sources", [])):
            if source not in names:
                path = ["stages", i, "sources", j]
                problems.append((path, f"unknown corpus source {source!r}"))
    for j, source in enumerate(config["tokenizer"].get("train_sources", [])):
        if source not in names:
            path = ["tokenizer", "train_sources", j]
            problems.append((path, f"unknown corpus source {source!r}"))
    return problems + _tokenizer_settings_problems(config["tokenizer"])


def _tokenizer_settings_problems(tokenizer: dict) -> list:
    """What ``kotomamba train-tokenizer`` would refuse of the tokenizer the pipeline trains (``model`` null), by
    its own check and with the settings its job passes (the others at the trainer's defaults)."""
    import inspect

    from kotomamba.data.train_tokenizer import check_settings, train_tokenizer

    if tokenizer["model"]:
        return []
    defaults = inspect.signature(train_tokenizer).parameters
    try:
        check_settings(tokenizer["vocab_size"], tokenizer["model_type"], defaults["character_coverage"].default,
                       defaults["input_sentence_size"].default)
    except UserError as error:
        return [(["tokenizer", "vocab_size"], str(error))]
    return []


def deep_merge(base: dict, override: dict) -> dict:
    """A new dict: ``override`` merged into ``base`` recursively (override wins on leaves)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class RunPaths:
    """Where each artifact of a run lives: ``results/<run>/<stage of the pipeline>/...``."""

    def __init__(self, config: dict):
        self.config = config
        self.root = f"{RESULTS}/{config['run']}"
        self._shards: dict[str, list] = {}

    def corpus(self, source: str) -> str:
        """The corpus file a builtin source is written to."""
        return f"{self.root}/corpus/{source}.jsonl"

    def shards(self, source: str) -> list:
        """The shards of ``source`` in order (:func:`kotomamba.data.shards.source_shards`), globs
        expanded once per run."""
        from kotomamba.data.shards import source_shards

        if source not in self._shards:
            entry = next(s for s in self.config["corpus"]["sources"] if s["name"] == source)
            self._shards[source] = source_shards(entry)
        return self._shards[source]

    def shard(self, source: str, shard_id: str):
        return self.shards(source)[int(shard_id)]

    def downloaded_shard(self, source: str, shard_id: str, compression: str) -> str:
        """Where an http(s) shard is kept as published, named by its index and compression suffix."""
        return f"{self.root}/corpus/{source}/{shard_id}.jsonl{compression}"

    def shard_file(self, shard) -> str:
        """The file a shard's text is read from: the download, the user's own file, or the builtin corpus."""
        if shard.is_builtin:
            return self.corpus(shard.source)
        if shard.is_download:
            return self.downloaded_shard(shard.source, shard.id, shard.compression)
        return shard.local_path

    def corpus_files(self, source: str) -> list[str]:
        """Every file ``source``'s text is read from, in order (the user's local files included)."""
        return [self.shard_file(shard) for shard in self.shards(source)]

    def corpus_artifacts(self, source: str) -> list[str]:
        """The corpus files the pipeline writes for ``source``: downloads and the builtin corpus."""
        return [self.shard_file(shard) for shard in self.shards(source) if shard.is_builtin or shard.is_download]

    def shard_prefix(self, source: str, shard_id: str) -> str:
        """A shard's tokenized output prefix: ``<prefix>_<key>_document.{bin,idx}`` per json key."""
        return f"{self.root}/tokenized/{source}/{shard_id}"

    def shard_datasets(self, source: str, shard_id: str) -> list[str]:
        """A shard's ``.bin`` and ``.idx`` for every json key."""
        prefix = self.shard_prefix(source, shard_id)
        return [f"{prefix}_{key}_document.{ext}" for key in self.config["tokenize"]["json_keys"] for ext in ("bin", "idx")]

    def shard_summary(self, source: str, shard_id: str) -> str:
        """A shard's counts (lines, documents, tokens, bad lines, seconds) as JSON, which the merge sums."""
        return f"{self.shard_prefix(source, shard_id)}.json"

    @property
    def tokenizer_dir(self) -> str:
        return f"{self.root}/tokenizer"

    @property
    def tokenizer_model(self) -> str:
        """The tokenizer every later stage uses: the configured file (fetched, if remote), or the one the
        pipeline trains."""
        remote = self.remote_inputs("tokenizer")
        if remote:
            return self.input_file("tokenizer", next(iter(remote)))
        return self.config["tokenizer"]["model"] or f"{self.tokenizer_dir}/tokenizer.model"

    def remote_inputs(self, kind: str) -> dict:
        """The remote files of ``kind`` (tokenizer, init): name -> (source, key path in the run config)."""
        from kotomamba.pipeline.inputs import remote_sources

        return remote_sources(self.config, kind)

    def input_file(self, kind: str, name: str) -> str:
        """Where a remote tokenizer or initial-checkpoint file is kept once fetched."""
        return f"{self.root}/inputs/{kind}/{name}"

    @property
    def input_lock(self) -> str:
        """The sha256 of every remote input as first downloaded (:mod:`kotomamba.data.input_lock`)."""
        return f"{self.root}/inputs.lock.yaml"

    @property
    def init_dir(self) -> str | None:
        """The directory the first stage starts from: ``init`` as given, or where its remote files are kept."""
        if self.remote_inputs("init"):
            return f"{self.root}/inputs/init"
        return self.config.get("init")

    @property
    def init_files(self) -> list[str]:
        """What the first stage waits for: the fetched files of a remote ``init``, or the local directory."""
        remote = self.remote_inputs("init")
        if remote:
            return [self.input_file("init", name) for name in remote]
        return [self.config["init"]] if self.config.get("init") else []

    def merged_prefix(self, source: str) -> str:
        """The prefix ``kotomamba merge-datasets`` writes ``source``'s merged datasets under (it adds
        ``_<key>_document``: :meth:`tokenized_prefix`)."""
        return f"{self.root}/tokenized/{source}"

    def tokenized_prefix(self, source: str, key: str | None = None) -> str:
        """The merged dataset of ``source`` that training reads (``data.data_path``)."""
        key = key or self.config["tokenize"]["json_keys"][0]
        return f"{self.merged_prefix(source)}_{key}_document"

    def stage_dir(self, stage: str) -> str:
        return f"{self.root}/train/{stage}"

    def stage_config(self, stage: str) -> str:
        from kotomamba.train.run_dir import RunDir

        return str(RunDir(self.stage_dir(stage)).stage_config)

    def stage_final(self, stage: str) -> str:
        from kotomamba.train.run_dir import RunDir

        return str(RunDir(self.stage_dir(stage)).final)

    @property
    def last_stage(self) -> str:
        return self.config["stages"][-1]["name"]

    def export_dir(self, fmt: str) -> str:
        return f"{self.root}/export/{fmt}"

    @property
    def eval_json(self) -> str:
        return f"{self.root}/eval/eval.json"

    @property
    def report(self) -> str:
        return f"{self.root}/report/report.md"

    @property
    def report_plot(self) -> str:
        return f"{self.root}/report/loss.png"

    @property
    def resolved_config(self) -> str:
        """The pipeline's record of the whole run's config, under the name a run directory gives its own
        (``convert`` looks for it above a stage's run directory)."""
        from kotomamba.train.run_dir import RunDir

        return str(RunDir(self.root).config)

    @property
    def manifest(self) -> str:
        return f"{self.root}/manifest.json"


def stage_index(config: dict, stage: str) -> int:
    for i, entry in enumerate(config["stages"]):
        if entry["name"] == stage:
            return i
    raise UserError(f"no stage named {stage!r}; stages are {[s['name'] for s in config['stages']]}")


def stage_sources(config: dict, stage: str) -> list[str]:
    entry = config["stages"][stage_index(config, stage)]
    return entry.get("sources") or [source["name"] for source in config["corpus"]["sources"]]


def data_path(config: dict, sources: list[str]) -> str:
    """Megatron's blend string ``"w1 prefix1 w2 prefix2"`` for the given corpus sources."""
    paths = RunPaths(config)
    weights = {source["name"]: source.get("weight", 1.0) for source in config["corpus"]["sources"]}
    return " ".join(f"{weights[name]} {paths.tokenized_prefix(name)}" for name in sources)


def _stage_name(config: dict, index: int) -> str:
    return config["stages"][index]["name"]


# The trainer keys the pipeline sets for every stage: dotted key -> (the run-config key it comes
# from, its value). A stage's own `train` may not set them (stage_check refuses it).
_FIXED = {
    "run_dir": (lambda c, i: ["run"], lambda c, i: RunPaths(c).stage_dir(_stage_name(c, i))),
    "seed": (lambda c, i: ["seed"], lambda c, i: c["seed"]),
    "model": (lambda c, i: ["model"], lambda c, i: c["model"]),
    "init.from": (lambda c, i: ["init"] if i == 0 else ["stages", i - 1, "name"],
                  lambda c, i: RunPaths(c).init_dir if i == 0 else RunPaths(c).stage_dir(_stage_name(c, i - 1))),
    "data.data_path": (lambda c, i: ["stages", i, "sources"] if "sources" in c["stages"][i] else ["corpus", "sources"],
                       lambda c, i: data_path(c, stage_sources(c, _stage_name(c, i)))),
    "data.split": (lambda c, i: ["data", "split"], lambda c, i: c["data"]["split"]),
    "data.tokenizer_type": (lambda c, i: ["tokenizer", "type"], lambda c, i: c["tokenizer"]["type"]),
    "data.tokenizer_model": (lambda c, i: ["tokenizer", "model"], lambda c, i: RunPaths(c).tokenizer_model),
    "data.reset_at_eod": (lambda c, i: ["data", "reset_at_eod"], lambda c, i: c["data"]["reset_at_eod"]),
}
PIPELINE_KEYS = {dotted: source for dotted, (source, _) in _FIXED.items()}


def stage_train_config(config: dict, stage: str) -> dict[str, Any]:
    """The trainer config of one stage: shared `train` merged with the stage's, plus what the DAG fixes.

    The first stage starts from ``init`` (null: from scratch); every later stage starts from the
    previous stage's final checkpoint.
    """
    index = stage_index(config, stage)
    fixed: dict[str, Any] = {}
    for dotted, (_, value) in _FIXED.items():
        *parents, leaf = dotted.split(".")
        holder = fixed
        for part in parents:
            holder = holder.setdefault(part, {})
        holder[leaf] = value(config, index)
    merged = deep_merge(config["train"], config["stages"][index].get("train", {}))
    return deep_merge(merged, fixed)


def write_stage_config(train_config: dict, path: str) -> None:
    """Write one stage's trainer config as YAML, atomically (``kotomamba train --config`` reads it)."""
    from kotomamba.io import atomic_write

    with atomic_write(path) as handle:
        handle.write("# Written by the pipeline from config.yaml; `kotomamba train --config <this file>` reruns the stage.\n")
        yaml.safe_dump(train_config, handle, sort_keys=False)


def write_run_record(config: dict, inputs: list[str], config_path: str, manifest_path: str) -> None:
    """The run's resolved config (defaults filled; `--configfile` it to reproduce the run) and manifest
    (code revision, package versions, checksums of the corpus, tokenizer and tokenized data)."""
    from kotomamba.io import atomic_write, write_json
    from kotomamba.manifest import build_manifest

    with atomic_write(config_path) as handle:
        handle.write("# The validated config of this run, defaults filled in: `snakemake --configfile <this file> all`\n")
        yaml.safe_dump(config, handle, sort_keys=False)
    launch = config["launch"]
    write_json(manifest_path, build_manifest(inputs, run=config["run"], seed=config["seed"],
                                             world_size=launch["nodes"] * launch["nproc_per_node"]))
