"""What a training run says about a checkpoint: every stage that led to it, its data, tokenizer and time.

Read from each run directory's records (docs/architecture.md): ``config.resolved.yaml`` (``run_dir``,
``init.from`` and the ``data`` section: ``data_path``, ``split``, ``seq_length``, ``tokenizer_type``,
``tokenizer_model``), ``final.json`` (``tokens`` when the run finished at this checkpoint),
``metrics.jsonl`` (the measured speed of each logged window) and the checkpoint's own ``train_state``
(``step``, ``consumed_samples``). A run that started from another kotomamba run (``init.from``: a
pipeline's earlier stage) is followed back, so a card counts the tokens of every stage. When a pipeline
made the stages, its own record above them (``config.resolved.yaml`` with ``corpus`` and ``stages``)
says where their text came from.

A run records paths as it was given them, usually relative to the directory it was started from
(the pipeline's repository root); they are resolved against that directory, found from the
recorded ``run_dir``, so the records read the same from any working directory.
"""
from __future__ import annotations

import json
import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kotomamba.errors import UserError
from kotomamba.train.checkpoint_files import read_train_state
from kotomamba.train.run_dir import CheckpointLocation, RunDir, is_run_or_checkpoint, locate_checkpoint


@dataclass
class StageInfo:
    """One training run up to the checkpoint that was converted or that the next stage started from."""

    name: str
    step: int | None = None
    tokens: int | None = None
    seq_length: int | None = None
    data: list[tuple[float, str]] = field(default_factory=list)  # (weight, dataset name), no local paths
    train_seconds: float | None = None
    planned_steps: int | None = None  # the stage's train.steps, as its run directory records it

    @property
    def unfinished(self) -> bool:
        """The checkpoint is short of the steps planned for its stage (a stopped run, or an intermediate one)."""
        return self.step is not None and self.planned_steps is not None and self.step < self.planned_steps


@dataclass
class RunInfo:
    """Facts for the model card and the default tokenizer; ``None`` where the runs do not say."""

    checkpoint: str
    step: int | None = None
    stages: list[StageInfo] = field(default_factory=list)  # earliest first; the last one made the checkpoint
    init: str | None = None  # the first stage's starting weights when they are not a kotomamba run's
    split: str | None = None
    tokenizer_type: str | None = None
    tokenizer_model: str | None = None
    parameters: int | None = None
    corpus: list[str] = field(default_factory=list)  # where every stage's text came from, when a pipeline made them

    @property
    def tokens(self) -> int | None:
        """Tokens trained on over all stages (``None`` when a stage does not say)."""
        counts = [stage.tokens for stage in self.stages]
        return sum(counts) if counts and None not in counts else None

    def unfinished_note(self) -> str | None:
        """What the card and the command say when the checkpoint is short of its stage's planned steps, else None."""
        stage = self.stages[-1] if self.stages else None  # the stage that made the checkpoint
        if stage is None or not stage.unfinished:
            return None
        return (f"step {stage.step} of the {stage.planned_steps} planned for stage {stage.name!r}: unfinished "
                f"(training stopped there, or this is not the stage's last checkpoint)")

    @property
    def train_seconds(self) -> float | None:
        times = [stage.train_seconds for stage in self.stages]
        return sum(times) if times and None not in times else None


def started_from(run_dir: Path, recorded_run_dir: str | None) -> Path | None:
    """The directory a run was started from, against which its recorded relative paths resolve.

    The run recorded its own directory as it was given (``results/<run>/train/<stage>``); the run
    directory's absolute path ends with that, and what precedes it is where the run started. Tried as
    given (a ``results`` symlink keeps its name) and with links resolved. ``None`` (unknown) with an
    absolute record or a run directory moved since: relative paths can then only be taken from here.
    """
    if recorded_run_dir and not Path(recorded_run_dir).is_absolute():
        recorded = Path(os.path.normpath(recorded_run_dir)).parts
        for here in (Path(os.path.abspath(run_dir)), run_dir.resolve()):
            if len(here.parts) > len(recorded) and here.parts[-len(recorded):] == recorded:
                return Path(*here.parts[:-len(recorded)])
    return None


def recorded_path(value: str, start: Path | None) -> str:
    """A path from a run's records, made usable here: relative ones are joined to the run's start (if known).

    Kept as recorded when nothing exists there: it may be a hub name (``org/model``) or missing, which
    the reader then reports under the recorded name.
    """
    if Path(value).is_absolute() or start is None:
        return value
    joined = start / value
    return str(joined) if joined.exists() else value


_TOKENIZER_FILE_SUFFIXES = (".model", ".json", ".txt", ".vocab")


def _tokenizer_path(value: str, tokenizer_type: str | None, start: Path | None, record: Path) -> str:
    """The run's tokenizer as usable here; a relative file that is gone is named with the record.

    A Hugging Face hub name (``org/name``) also looks relative: only a SentencePiece model or a
    name with a tokenizer file's suffix is known to be a file.
    """
    from kotomamba.data.tokenizer import SENTENCEPIECE_TYPES

    usable = recorded_path(value, start)
    if Path(usable).exists() or Path(value).is_absolute():
        return usable
    if tokenizer_type in SENTENCEPIECE_TYPES or Path(value).suffix in _TOKENIZER_FILE_SUFFIXES:
        where = (f"is not in {start}, the directory the run was started from (as its run_dir tells)" if start
                 else "is relative to the directory the run was started from, which its run_dir no longer tells "
                      "(the run directory was moved), and is not here")
        raise UserError(f"{record}: data.tokenizer_model: {value} {where}; pass --tokenizer-type and "
                        f"--tokenizer-model")
    return usable


def training_seconds(metrics_file: Path, up_to_step: int | None = None) -> float | None:
    """Seconds of a run's training loop: the sum of its logged windows (tokens in the window / tokens/s).

    A window runs from one logged step to the next and so includes evaluations and checkpoint writes;
    start-up and the time before a resumed job's first window are not counted.
    """
    from kotomamba.train.metrics_file import read_metrics

    if not metrics_file.is_file():
        return None
    seconds, previous_tokens = 0.0, 0
    for record in read_metrics(metrics_file, note_torn=False):
        if "tokens_per_s" not in record or "tokens" not in record:
            continue
        if up_to_step is not None and record["step"] > up_to_step:
            break
        if record["tokens_per_s"]:
            seconds += (record["tokens"] - previous_tokens) / record["tokens_per_s"]
        previous_tokens = record["tokens"]
    return seconds


def dataset_names(data_path: Any) -> list[tuple[float, str]]:
    """``(weight, dataset name)`` of a Megatron blend: the prefixes' file names, not their local paths."""
    from kotomamba.data.gpt_dataset import parse_data_path

    if not data_path:
        return []
    return [(weight, Path(prefix).name) for weight, prefix in parse_data_path(data_path)]


def parameter_count(config) -> int:
    """Parameters of a ``MambaConfig``'s model, a tied LM head counted once (built on ``meta``: no memory)."""
    from kotomamba.model import MambaLM

    return sum(p.numel() for p in MambaLM(config, device="meta").parameters())


def _stage_info(location: CheckpointLocation) -> tuple[StageInfo, dict, Path | None]:
    """(the stage, its ``config.resolved.yaml`` contents, the directory its run started from if known)."""
    train_state = read_train_state(location.checkpoint_dir)
    run_dir = location.run_dir
    stage = StageInfo(name=(run_dir or location.checkpoint_dir).name, step=train_state.get("step"))
    if run_dir is None:
        return stage, {}, None
    config = RunDir(run_dir).read_config() or {}
    data = config.get("data") or {}
    stage.seq_length = data.get("seq_length")
    planned = (config.get("train") or {}).get("steps")
    stage.planned_steps = planned if isinstance(planned, int) and not isinstance(planned, bool) else None
    stage.data = dataset_names(data.get("data_path"))
    final = RunDir(run_dir).final
    if final.is_file():
        record = json.loads(final.read_text(encoding="utf-8"))
        if Path(str(record.get("checkpoint"))).name == location.checkpoint_dir.name:
            stage.tokens = record.get("tokens")
    if stage.tokens is None and "consumed_samples" in train_state and stage.seq_length:
        stage.tokens = int(train_state["consumed_samples"]) * int(stage.seq_length)
    stage.train_seconds = training_seconds(RunDir(run_dir).metrics, stage.step)
    return stage, config, started_from(run_dir, config.get("run_dir"))


def read_stage(run_dir: str | os.PathLike) -> StageInfo:
    """One run directory's stage at its latest checkpoint (the pipeline's report reads each stage so)."""
    return _stage_info(locate_checkpoint(run_dir))[0]


def _pipeline_record(run_dir: Path) -> dict:
    """The pipeline run's config that made ``run_dir`` as one of its stages, ``{}`` if none did.

    The pipeline keeps its record (``config.resolved.yaml`` with ``corpus`` and ``stages``) in a
    directory above its stages' run directories; the nearest one naming this stage is it.
    """
    for directory in run_dir.resolve().parents:
        try:
            config = RunDir(directory).read_config()
        except UserError:  # some other directory's broken file: not this run's record, and no reason to fail
            continue
        stages = (config or {}).get("stages") or []
        if "corpus" in (config or {}) and any(isinstance(s, dict) and s.get("name") == run_dir.name for s in stages):
            return config
    return {}


def describe_source(source: dict) -> str:
    """A corpus source as a reader can look it up: a builtin by name, published URLs as they are, local
    files only as such (their paths mean nothing elsewhere)."""
    if source.get("builtin"):
        return f"{source['name']}: built-in corpus `{source['builtin']}`"
    urls = [str(url) for url in source.get("urls") or []]
    public = [url for url in urls if urllib.parse.urlsplit(url).scheme in ("http", "https")]
    parts = [f"<{url}>" for url in public[:3]]
    if len(public) > 3:
        parts.append(f"and {len(public) - 3} more URLs")
    if len(urls) > len(public):
        parts.append(f"{len(urls) - len(public)} local file(s) or pattern(s), not published")
    return f"{source['name']}: " + ", ".join(parts)


def _corpus(run_dir: Path) -> list[str]:
    config = _pipeline_record(run_dir)
    stage = next((s for s in config.get("stages") or [] if s.get("name") == run_dir.name), {})
    sources = (config.get("corpus") or {}).get("sources") or []
    used = stage.get("sources") or [source.get("name") for source in sources]
    return [describe_source(source) for source in sources if source.get("name") in used]


def read_run_info(location: CheckpointLocation) -> RunInfo:
    """Collect the facts about ``location``'s checkpoint and every earlier stage it was trained from.

    The tokenizer is the last stage's (what the model was last trained with).
    """
    info = RunInfo(checkpoint=location.checkpoint_dir.name)
    stage, config, start = _stage_info(location)
    info.step = stage.step
    data = config.get("data") or {}
    info.split = data.get("split")
    info.tokenizer_type = data.get("tokenizer_type")
    if data.get("tokenizer_model"):
        info.tokenizer_model = _tokenizer_path(str(data["tokenizer_model"]), info.tokenizer_type, start,
                                               RunDir(location.run_dir).config)
    info.stages.append(stage)
    run_dirs = [location.run_dir] if location.run_dir is not None else []
    seen = {location.checkpoint_dir.resolve()}
    while (init := (config.get("init") or {}).get("from")) is not None:
        source = Path(recorded_path(str(init), start))
        location = locate_checkpoint(source) if is_run_or_checkpoint(source) else None
        if location is None or location.run_dir is None or not RunDir(location.run_dir).config.is_file():
            # Not a training run (a released model, or one converted to an initial checkpoint): named, not
            # followed; a hub id as given, a local directory by its name.
            info.init = source.name if source.exists() else str(init)
            break
        if location.checkpoint_dir.resolve() in seen:  # records edited into a loop: stop rather than spin
            break
        seen.add(location.checkpoint_dir.resolve())
        stage, config, start = _stage_info(location)
        info.stages.insert(0, stage)
        run_dirs.insert(0, location.run_dir)
    info.corpus = list(dict.fromkeys(line for run_dir in run_dirs for line in _corpus(run_dir)))
    return info
