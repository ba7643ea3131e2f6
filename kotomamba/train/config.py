"""The training configuration: one YAML file mapped onto dataclasses, plus dotted CLI overrides.

``load_config(path, overrides)`` reads the YAML file, applies ``a.b=c`` overrides (values parsed as
YAML, so ``optim.betas=[0.9,0.99]`` and ``init.from=null`` work), checks every key and type against the
dataclasses below (unknown keys are errors) and returns a :class:`TrainConfig`. Errors are
:class:`kotomamba.errors.UserError` naming the file, line and dotted field (or the override).

The ``model`` section is a free mapping of ``MambaConfig`` fields plus ``preset``; it is checked
against ``MambaConfig`` when the model is built (:func:`kotomamba.train.build.configured_model`) and,
in the pipeline, before any job runs.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from kotomamba.errors import UserError
from kotomamba.io import parse_yaml, yaml_problem
from kotomamba.model.config import MambaConfig, configured
from kotomamba.train.step_choice import config_refusals

Precision = Literal["auto", "bf16", "fp16", "fp32"]
# Parameter-name patterns with no weight decay (kotomamba.train.optim.is_no_decay says how they match).
DEFAULT_NO_DECAY = ("A_log", "D", "dt_bias", "bias", "norm", "embedding")


@dataclass
class InitConfig:
    """Where the initial weights come from (continual pretraining, training stages)."""

    from_: str | None = field(default=None, metadata={"key": "from"})
    """``null`` (random init), a kotomamba run dir or checkpoint dir (model weights only: a stage's
    predecessor), or a transformers / mamba-ssm model directory."""
    resize_vocab: bool = False
    """Allow the source's vocabulary size to differ from the tokenizer's: rows are copied for the
    shared ids, new rows keep their fresh initialisation."""


@dataclass
class DataConfig:
    """Megatron-style indexed data (see ``kotomamba.data.gpt_dataset``)."""

    data_path: Union[str, list] = "1.0 results/default/tokenized/corpus_text_document"
    """Megatron ``"w1 prefix1 w2 prefix2"`` string, or a list of the same tokens."""
    split: str = "949,50,1"
    seq_length: int = 128
    tokenizer_type: str = "SentencePieceTokenizer"
    tokenizer_model: str = "results/default/tokenizer/tokenizer.model"
    reset_at_eod: bool = True
    """Mark packed documents with ``seq_idx`` so Mamba-2 resets its state at each EOD."""
    cache_dir: str | None = None
    """Where sample indices are cached; ``null`` means ``<run_dir>/index_cache``."""


@dataclass
class TrainLoopConfig:
    """Batch sizes, length of the stage and the loop's safety nets."""

    micro_batch_size: int = 4
    global_batch_size: int = 16
    """Samples per optimizer step over all ranks; must be a multiple of micro_batch_size x world size."""
    steps: int = 200
    """Total optimizer steps of this stage."""
    max_steps_this_job: int | None = None
    """Stop after this many steps in this process (checkpoint, exit 0, no final.json): a segment."""
    grad_clip: float | None = 1.0
    """Global gradient-norm clipping threshold over all shards; ``null`` or 0 disables clipping."""
    skip_ranges: list = field(default_factory=list)
    """``[[start, end], ...]`` inclusive ranges of step numbers (1-based, as ``step`` in
    ``metrics.jsonl``) whose batches are consumed but not trained on: no forward, no update; the
    learning-rate schedule and the data order go on as if the steps had been taken."""
    max_consecutive_nonfinite: int = 10
    """Abort (after a checkpoint) when this many steps in a row had a non-finite loss or gradient."""
    wall_time_budget_s: float | None = None
    """Seconds this job may run; it checkpoints and exits with the requeue code before running out."""


@dataclass
class OptimConfig:
    """AdamW with decoupled weight decay, excluding ``no_decay`` parameters."""

    lr: float = 1.0e-3
    min_lr: float = 1.0e-5
    weight_decay: float = 0.1
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1.0e-8
    no_decay: list = field(default_factory=lambda: list(DEFAULT_NO_DECAY))
    """Parameter-name components (split on ``.``) or name suffixes that get no weight decay."""
    master_dtype: Literal["fp32", "bf16"] = "fp32"
    """Dtype of the weights the optimizer updates; ``bf16`` only when explicitly wanted."""


@dataclass
class LossScaleConfig:
    """The dynamic loss scale of ``precision: fp16`` (see ``kotomamba.train.loss_scale``)."""

    initial: float = 2.0**16
    growth_interval: int = 2000
    """Double the scale after this many steps in a row without an overflow."""


@dataclass
class ScheduleConfig:
    """Learning rate: linear warmup, then ``style`` down to ``optim.min_lr``."""

    style: Literal["cosine", "linear", "constant", "wsd"] = "cosine"
    warmup_steps: int = 20
    decay_steps: int | None = None
    """Step at which the LR reaches min_lr; ``null`` means ``train.steps``."""
    wsd_decay_fraction: float = 0.1
    """WSD: fraction of the post-warmup steps spent in the final (linear) decay."""


@dataclass
class ParallelConfig:
    """How the model is spread over ranks (FSDP2 or replicas) and made cheaper (checkpointing, compile)."""

    data_parallel: Literal["auto", "fsdp", "replicate"] = "auto"
    """Several processes: ``fsdp`` shards the model (``strategy`` says how); ``replicate`` keeps all of it on
    every rank and averages the gradients by all-reduce, so the micro-steps can be CUDA-graphed; ``auto``
    replicates on GPUs when the weights, gradients and AdamW state take at most a quarter of one GPU's
    memory, else shards (always shards on CPU). The job's log says which and why
    (``kotomamba.train.parallelize.choose_data_parallel``). Checkpoints are the same either way: a run
    resumes under the other choice."""
    strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD"] = "FULL_SHARD"
    """How FSDP shards, when ``data_parallel`` chooses it."""
    hybrid_shard_size: int | None = None
    """HYBRID_SHARD: ranks per shard group (``null``: the ranks of one node, LOCAL_WORLD_SIZE)."""
    activation_checkpointing: bool = False
    activation_checkpointing_interval: int = 1
    """Selective checkpointing: recompute every n-th block only (1: every block)."""
    compile: bool = False
    """``torch.compile`` each block. Mamba-1 gained nothing from it while it ran mamba-ssm's selective-scan
    extension, which its graph breaks at; not measured since it runs our scan (bench/RESULTS.md has what was
    measured per layer type)."""
    cuda_graph: Union[bool, Literal["auto"]] = "auto"
    """Capture each micro-batch's forward and backward as a CUDA graph and replay it: for models whose eager
    step waits on the host. It needs a GPU per process, replicated parameters (``data_parallel``) when there
    are several processes, and none of ``compile``, activation checkpointing or fp16. ``auto``: graphed wherever that holds, else eager; ``true``: graphed, an error where it cannot
    be; ``false``: eager. The job's log says which step runs and why (``kotomamba.train.step_choice``)."""


@dataclass
class EvalConfig:
    interval: int = 50
    """Evaluate on the validation split every this many steps (0: never during training)."""
    steps: int = 10
    """Validation batches (of global_batch_size samples) per evaluation."""
    final: bool = True

    @property
    def reads_valid_split(self) -> bool:
        """Whether training evaluates at all, during the run or at its end: the valid split is built only then."""
        return self.steps > 0 and (self.interval > 0 or self.final)


@dataclass
class CheckpointConfig:
    interval: int = 100
    """Save every this many steps (0: only at the end, on a signal and at segment ends)."""
    keep_last: int = 2
    """Keep this many complete checkpoints (0: keep all)."""
    async_: bool = field(default=False, metadata={"key": "async"})
    """Write with ``dcp.async_save`` (training continues while the files are written)."""


@dataclass
class WandbConfig:
    mode: Literal["online", "offline", "disabled"] = "disabled"
    project: str | None = None
    entity: str | None = None
    name: str | None = None


@dataclass
class LoggingConfig:
    interval: int = 10
    wandb: WandbConfig = field(default_factory=WandbConfig)
    tensorboard: bool = False
    """Write TensorBoard events to ``<run_dir>/tensorboard``."""


@dataclass
class TrainConfig:
    """The whole ``kotomamba train`` configuration (one YAML file)."""

    run_dir: str = "results/default/train/pretrain"
    seed: int = 1234
    model: dict = field(default_factory=lambda: {"preset": "tiny"})
    """``MambaConfig`` fields; ``preset`` names a preset the other keys override."""
    init: InitConfig = field(default_factory=InitConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: Precision = "auto"
    """``auto`` (bf16 on CUDA, fp32 on CPU), ``bf16`` (fp32 master weights, fp32 reduction), ``fp16``
    (fp32 master weights with a global dynamic loss scale), ``fp32``."""
    loss_scale: LossScaleConfig = field(default_factory=LossScaleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    env: dict = field(default_factory=dict)
    """Environment variables set before CUDA / Triton start (``TRITON_LIBCUDA_PATH``, ...)."""

    def to_dict(self) -> dict:
        """The config as plain YAML-able data, with the YAML key names (``from``, ``async``)."""
        return _to_plain(self)


def _key(f: dataclasses.Field) -> str:
    return f.metadata.get("key", f.name)


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {_key(f): _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    return obj


class _Where:
    """Turns a dotted field name into "file:line" (YAML node marks) or "override 'a.b=c'"."""

    def __init__(self, source: str, lines: dict[str, int], overrides: dict[str, str]):
        self.source, self.lines, self.overrides = source, lines, overrides

    def __call__(self, dotted: str) -> str:
        for key in (dotted, *_parents(dotted)):
            if key in self.overrides:
                return f"command-line override {self.overrides[key]!r}"
            if key in self.lines:
                return f"{self.source}:{self.lines[key]}"
        return self.source


def _parents(dotted: str) -> list[str]:
    parts = dotted.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def _node_lines(node: yaml.Node, prefix: str = "") -> dict[str, int]:
    """Map each dotted key of a composed YAML mapping to its 1-based line number."""
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            dotted = f"{prefix}{key_node.value}"
            lines[dotted] = key_node.start_mark.line + 1
            lines.update(_node_lines(value_node, dotted + "."))
    return lines


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read ``path`` (or only defaults when ``None``), apply ``overrides``, validate, return the config."""
    source = str(path) if path is not None else "<defaults>"
    raw: dict = {}
    lines: dict[str, int] = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise UserError(f"{path}: cannot read the training config ({exc})") from exc
        try:
            raw, node = parse_yaml(text, str(path))
        except yaml.YAMLError as exc:
            raise UserError(f"{path}: not valid YAML: {yaml_problem(exc)}") from exc
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise UserError(f"{path}:1: the training config must be a mapping of sections")
        lines = _node_lines(node)
    applied: dict[str, str] = {}
    for item in overrides:
        dotted, sep, value = item.partition("=")
        if not sep or not dotted:
            raise UserError(f"command-line override {item!r}: expected dotted.key=value")
        try:
            parsed = yaml.safe_load(value) if value else ""
        except yaml.YAMLError as exc:
            raise UserError(f"command-line override {item!r}: value is not valid YAML: {yaml_problem(exc)}") from exc
        _set_dotted(raw, dotted, parsed, item)
        applied[dotted] = item
    return build_config(raw, _Where(source, lines, applied))


def build_config(raw: dict, where) -> TrainConfig:
    """Check ``raw`` (a training config as plain data) and return it as a :class:`TrainConfig`.

    ``where(dotted)`` says where a field was written (``"file:line"``), for the error message; the
    pipeline passes one that points into the user's run config instead of a generated file.
    """
    config = _build(TrainConfig, raw, "", where)
    _check(config, where)
    config._where = where  # not a field: for the checks of the files it names, at start-up (where_written)
    return config


def _set_dotted(raw: dict, dotted: str, value: Any, item: str) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"command-line override {item!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type, raw: Any, prefix: str, where: _Where):
    name = prefix.rstrip(".") or "config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{where(name)}: field {name!r} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {_key(f): f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        dotted = prefix + str(unknown[0])
        raise UserError(
            f"{where(dotted)}: unknown field {dotted!r}; known fields of {name!r}: {', '.join(sorted(fields))}"
        )
    values = {}
    for key, f in fields.items():
        if key not in raw:
            continue
        tp = hints[f.name]
        dotted = prefix + key
        if dataclasses.is_dataclass(tp):
            values[f.name] = _build(tp, raw[key], dotted + ".", where)
        else:
            values[f.name] = _coerce(tp, raw[key], dotted, where)
    return cls(**values)


def _coerce(tp: Any, value: Any, dotted: str, where: _Where) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin is Union or type(tp).__name__ == "UnionType":
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, dotted, where)
            except UserError:
                continue
        names = " or ".join(_type_name(o) for o in options)
        raise UserError(f"{where(dotted)}: field {dotted!r} must be {names}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise UserError(f"{where(dotted)}: field {dotted!r} must be one of {list(choices)}, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # PyYAML reads "1e-3" (no dot) as a string; accept the usual float spellings.
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is list or origin is list:
        if isinstance(value, list):
            return list(value)
    elif tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
    expected = getattr(tp, "__name__", str(tp))
    raise UserError(f"{where(dotted)}: field {dotted!r} must be {expected}, got {value!r}")


def _type_name(tp: Any) -> str:
    """How an error message names a type: ``null``, ``bool``, a literal's choices (``'auto'``)."""
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) is Literal:
        return " or ".join(repr(choice) for choice in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _check(config: TrainConfig, where: _Where) -> None:
    """Cross-field rules that do not depend on the world size (that one is :func:`accumulation_steps`)."""

    def fail(dotted: str, message: str) -> None:
        raise UserError(f"{where(dotted)}: field {dotted!r} {message}")

    t = config.train
    for dotted, value in (
        ("train.micro_batch_size", t.micro_batch_size),
        ("train.global_batch_size", t.global_batch_size),
        ("train.steps", t.steps),
        ("data.seq_length", config.data.seq_length),
        ("train.max_consecutive_nonfinite", t.max_consecutive_nonfinite),
        ("parallel.activation_checkpointing_interval", config.parallel.activation_checkpointing_interval),
        ("loss_scale.initial", config.loss_scale.initial),
        ("loss_scale.growth_interval", config.loss_scale.growth_interval),
    ):
        if value < 1:
            fail(dotted, f"must be at least 1, got {value}")
    try:  # whatever the world size, one process must divide it (start-up checks the actual world)
        accumulation_steps(t, 1, "one process")
    except UserError as exc:
        raise UserError(f"{where('train.global_batch_size')}: {exc}") from None
    if t.max_steps_this_job is not None and t.max_steps_this_job < 1:
        fail("train.max_steps_this_job", f"must be null or at least 1, got {t.max_steps_this_job}")
    if t.grad_clip is not None and t.grad_clip < 0:
        fail("train.grad_clip", f"must be null or >= 0, got {t.grad_clip}")
    if t.wall_time_budget_s is not None and t.wall_time_budget_s <= 0:
        fail("train.wall_time_budget_s", f"must be null or positive, got {t.wall_time_budget_s}")
    for item in t.skip_ranges:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in item)
            or item[0] > item[1]
            or item[0] < 1
        ):
            fail("train.skip_ranges", f"must be a list of [start, end] step pairs with 1 <= start <= end, got {item!r}")
    o = config.optim
    if len(o.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in o.betas):
        fail("optim.betas", f"must be two numbers in [0, 1), got {o.betas!r}")
    if not all(isinstance(n, str) and n for n in o.no_decay):
        fail("optim.no_decay", f"must be a list of parameter-name patterns, got {o.no_decay!r}")
    if o.lr <= 0 or o.min_lr < 0 or o.min_lr > o.lr:
        fail("optim.min_lr", f"must satisfy 0 <= min_lr <= lr, got lr={o.lr}, min_lr={o.min_lr}")
    if o.weight_decay < 0 or o.eps <= 0:
        fail("optim.weight_decay", "and optim.eps must be non-negative / positive")
    s = config.schedule
    decay = s.decay_steps if s.decay_steps is not None else t.steps
    if s.warmup_steps < 0 or s.warmup_steps > decay:
        fail("schedule.warmup_steps", f"must be between 0 and the decay steps ({decay}), got {s.warmup_steps}")
    if not 0 <= s.wsd_decay_fraction <= 1:
        fail("schedule.wsd_decay_fraction", f"must be in [0, 1], got {s.wsd_decay_fraction}")
    for dotted, value in (
        ("eval.interval", config.eval.interval),
        ("eval.steps", config.eval.steps),
        ("checkpoint.interval", config.checkpoint.interval),
        ("checkpoint.keep_last", config.checkpoint.keep_last),
    ):
        if value < 0:
            fail(dotted, f"must be >= 0, got {value}")
    if config.logging.interval < 1:
        fail("logging.interval", f"must be at least 1, got {config.logging.interval}")
    if not all(isinstance(k, str) and isinstance(v, (str, int, float)) for k, v in config.env.items()):
        fail("env", "must map variable names to string values")
    if not isinstance(config.model.get("preset", ""), str):
        fail("model.preset", "must be a preset name")
    if config.init.from_ is None:  # a model to start from is read at start-up (build.check_sources)
        model = configured_at(config.model, None, where)
        refusal = reset_refusal(config, model, "the model section")
        if refusal:
            fail("data.reset_at_eod", refusal)
    if config.parallel.cuda_graph is True:
        # What the config alone rules out fails now; one process on a GPU is checked at start-up.
        for setting, why in config_refusals(config):
            fail("parallel.cuda_graph", f"cannot be true with {setting} ({why}); set one of them otherwise, "
                 "or parallel.cuda_graph: auto")


def located(where, dotted: str, message: str) -> UserError:
    """``file:line: a.b: message``: an error about the field ``dotted``, where the user wrote it."""
    return UserError(f"{where(dotted)}: {dotted}: {message}")


def where_written(config: TrainConfig):
    """Where ``config``'s fields were written (:class:`_Where`, or the pipeline's mapper), for the checks made
    after loading (:func:`kotomamba.train.build.check_sources`); a config made in code says only its field."""
    return getattr(config, "_where", None) or (lambda dotted: "training config")


# "model preset 'x': field 'y': ..." / "model config: field 'y': ..." (kotomamba.model.config): the field named.
_MODEL_FIELD = re.compile(r"^(?:model preset '[^']*'|model config): field '(?P<field>[^']+)': (?P<rest>.*)$", re.S)


def configured_at(model: dict, vocab_size: int | None, where) -> MambaConfig:
    """:func:`kotomamba.model.config.configured` for a config's ``model`` section, its errors naming the line
    and the field (``model.d_model``) the user wrote."""
    try:
        return configured(model, vocab_size)
    except UserError as exc:
        text = str(exc)
        match = _MODEL_FIELD.match(text)
        if match:
            raise located(where, f"model.{match['field']}", match["rest"]) from None
        if text.startswith("model preset "):
            raise located(where, "model.preset", text[len("model "):]) from None
        raise located(where, "model", text) from None
    except (TypeError, ValueError) as exc:
        raise located(where, "model", f"cannot build the model ({exc})") from None


def reset_refusal(config: TrainConfig, model: MambaConfig, source: str) -> str | None:
    """Why ``data.reset_at_eod`` cannot be true for ``model`` (where it comes from: ``source``), or None."""
    if not config.data.reset_at_eod or model.resets_at_documents:
        return None
    return (f"cannot be true for a {model.layer} model ({source}): its layers have no state reset at document "
            "boundaries; set data.reset_at_eod: false, or train a Mamba2 model")


def accumulation_steps(train: TrainLoopConfig, world_size: int, world: str | None = None) -> int:
    """Micro-batches each rank accumulates per optimizer step: global / (micro x world size).

    The one owner of the rule that the global batch divides evenly over every process: the trainer
    applies it at start-up to the actual world size, the pipeline's config check before any job runs
    to ``launch.nodes x launch.nproc_per_node``. ``world`` says what the world size is made of, for
    the message (default ``world size N``).

    Raises:
        UserError: ``global_batch_size`` is not a multiple of ``micro_batch_size x world_size``; the
            message names the fields, not where they were written (the caller says that).
    """
    per_step = train.micro_batch_size * world_size
    if train.global_batch_size % per_step:
        raise UserError(f"global_batch_size {train.global_batch_size} must be a multiple of micro_batch_size "
                        f"{train.micro_batch_size} x {world or f'world size {world_size}'} = {per_step}")
    return train.global_batch_size // per_step


def dump_config(config: TrainConfig) -> str:
    """The resolved config as YAML text (what ``config.resolved.yaml`` holds)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=None)
