"""What a training run says about a checkpoint: its data, tokenizer and tokens seen.

Read from the run directory's records (docs/architecture.md): ``config.resolved.yaml`` (the
``data`` section: ``data_path``, ``split``, ``seq_length``, ``tokenizer_type``,
``tokenizer_model``), ``final.json`` (``tokens`` when the run finished at this checkpoint) and the
checkpoint's own ``train_state`` (``step``, ``consumed_samples``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kotomamba.convert.consolidate import CheckpointLocation, read_train_state
from kotomamba.errors import UserError
from kotomamba.train.run_dir import RunDir


@dataclass
class RunInfo:
    """Facts for the model card and the default tokenizer; ``None`` where the run does not say."""

    checkpoint: str
    step: int | None = None
    tokens: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    tokenizer_type: str | None = None
    tokenizer_model: str | None = None


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise UserError(f"{path}: {line}invalid YAML ({exc})") from exc
    return data if isinstance(data, dict) else {}


def read_run_info(location: CheckpointLocation) -> RunInfo:
    """Collect the run's facts about ``location``'s checkpoint (tolerates a bare checkpoint directory)."""
    info = RunInfo(checkpoint=location.checkpoint_dir.name)
    train_state = read_train_state(location.checkpoint_dir)
    info.step = train_state.get("step")
    if location.run_dir is None:
        return info
    run = RunDir(location.run_dir)
    resolved = run.config
    data = _read_yaml(resolved).get("data", {}) if resolved.is_file() else {}
    info.data = {k: data[k] for k in ("data_path", "split", "seq_length") if k in data}
    info.tokenizer_type, info.tokenizer_model = data.get("tokenizer_type"), data.get("tokenizer_model")
    final = run.final
    if final.is_file():
        record = json.loads(final.read_text(encoding="utf-8"))
        if Path(str(record.get("checkpoint"))).name == location.checkpoint_dir.name:
            info.tokens = record.get("tokens")
    if info.tokens is None and "consumed_samples" in train_state and "seq_length" in data:
        info.tokens = int(train_state["consumed_samples"]) * int(data["seq_length"])
    return info
