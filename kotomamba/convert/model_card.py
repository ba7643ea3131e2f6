"""The export's README.md: parameters, tokens seen and training time over all stages, each stage's
sequence length and datasets (by name: local paths mean nothing to a reader), configuration and
evaluation scores.

The evaluation JSON is ``kotomamba evaluate``'s output (``kotomamba.evaluate.cli``):
``{"perplexity": {"loss", "perplexity", "tokens"}, "baseline_init": {...}, "lm_eval": {task: {metric:
value}}, "samples": [{"prompt", "completion", "text"}]}``; every part is optional.
"""
from __future__ import annotations

import json
from typing import Any

from kotomamba.convert.run_info import RunInfo


def _front_matter(fmt: str) -> str:
    library = "transformers" if fmt == "hf" else "mamba-ssm"
    return f"---\nlibrary_name: {library}\npipeline_tag: text-generation\ntags:\n- mamba\n- kotomamba\n---\n"


def duration(seconds: float) -> str:
    """``1 h 02 min``, ``3 min 20 s``, ``12 s`` or ``0.4 s``: how long, at the precision that matters."""
    if seconds < 9.95:  # what rounds to "10.0 s" is shown as 10 s
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _blend(data: list[tuple[float, str]]) -> str:
    return "; ".join(f"{weight:.3g} `{name}`" for weight, name in data) if data else "n/a"


def _stage_table(info: RunInfo) -> list[str]:
    lines = ["| stage | steps | sequence length | tokens | training time | data (weight, dataset) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for stage in info.stages:
        cells = [stage.name, stage.step, stage.seq_length, f"{stage.tokens:,}" if stage.tokens is not None else None,
                 duration(stage.train_seconds) if stage.train_seconds is not None else None, _blend(stage.data)]
        lines.append("| " + " | ".join("n/a" if cell is None else str(cell) for cell in cells) + " |")
    return lines


def _data_lines(info: RunInfo) -> list[str]:
    lines = []
    if info.parameters is not None:
        lines.append(f"- Parameters: {info.parameters:,}")
    stages = f" over {len(info.stages)} stages" if len(info.stages) > 1 else ""
    lines.append(f"- Tokens seen: {info.tokens:,}{stages}" if info.tokens is not None else "- Tokens seen: unknown")
    if info.init:
        lines.append(f"- Initialised from: `{info.init}` (its own training is not counted here)")
    lengths = sorted({stage.seq_length for stage in info.stages if stage.seq_length is not None})
    if lengths:
        lines.append("- Sequence length: " + ", ".join(str(length) for length in lengths)
                     + (" (per stage below)" if len(info.stages) > 1 else ""))
    if info.train_seconds is not None:
        lines.append(f"- Training time: {duration(info.train_seconds)} (the logged training steps, "
                     f"evaluations and checkpoints; start-up excluded)")
    if info.corpus:
        lines.append("- Corpus: " + "; ".join(info.corpus))
    if info.split:
        lines.append(f"- Train/valid/test split: {info.split}")
    if info.tokenizer_type:
        lines.append(f"- Tokenizer: {info.tokenizer_type} (its files are in this directory)")
    unfinished = info.unfinished_note()
    lines.append(f"- Checkpoint: `{info.checkpoint}`" + (f" ({unfinished})" if unfinished else
                                                        f" (step {info.step})" if info.step is not None else ""))
    if info.stages and any(stage.step is not None for stage in info.stages):
        lines += ["", *_stage_table(info)]
    return lines


def _evaluation_lines(evaluation: dict[str, Any] | None) -> list[str]:
    if not evaluation:
        return ["Not evaluated (pass `--eval-json` from `kotomamba evaluate` to record scores here)."]
    lines = ["| evaluation | metric | value |", "| --- | --- | --- |"]
    for label, key in (("held-out", "perplexity"), ("held-out, untrained model", "baseline_init")):
        part = evaluation.get(key)
        if part:
            lines.append(f"| {label} | loss | {part['loss']:.4f} |")
            lines.append(f"| {label} | perplexity | {part['perplexity']:.2f} |")
    for task, metrics in sorted((evaluation.get("lm_eval") or {}).items()):
        for metric, value in sorted(metrics.items()):
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            lines.append(f"| {task} | {metric} | {shown} |")
    samples = evaluation.get("samples") or []
    if samples:
        sampling = evaluation.get("sampling") or {}
        named = (("temperature", "temperature"), ("top-k", "top_k"), ("top-p", "top_p"))
        settings = ", ".join(f"{name} {sampling[key]}" for name, key in named if key in sampling)
        lines += ["", f"Samples ({settings}, as in `generation_config.json`):" if settings else "Samples:", ""]
        for sample in samples[:4]:
            lines += ["```", sample["text"], "```"]
    return lines


def _usage(fmt: str, layer: str) -> list[str]:
    if fmt == "hf":
        return ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                "tokenizer = AutoTokenizer.from_pretrained(PATH)",
                f"model = AutoModelForCausalLM.from_pretrained(PATH)  # {layer} -> "
                f"{'Mamba2ForCausalLM' if layer == 'Mamba2' else 'MambaForCausalLM'}",
                "```", "", "or `kotomamba generate --model PATH --prompt TEXT`."]
    return ["```python", "from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel",
            "model = MambaLMHeadModel.from_pretrained(PATH)", "```", "",
            "or `kotomamba generate --model PATH --prompt TEXT`."]


def model_card(fmt: str, config_dict: dict[str, Any], info: RunInfo, evaluation: dict[str, Any] | None) -> str:
    """README.md text for an export in format ``fmt`` ("hf" or "mamba_ssm")."""
    layer = config_dict.get("ssm_cfg", {}).get("layer", "Mamba1")
    lines = [_front_matter(fmt), f"# {layer.replace('Mamba', 'Mamba-')} language model (kotomamba)", "",
             "Pretrained with kotomamba (Mamba pretraining pipeline).", "", "## Training", ""]
    lines += _data_lines(info)
    lines += ["", "## Configuration (mamba-ssm `config.json`)", "", "```json",
              json.dumps(config_dict, indent=2, sort_keys=True), "```", "", "## Evaluation", ""]
    lines += _evaluation_lines(evaluation)
    lines += ["", "## Usage", ""] + _usage(fmt, layer)
    if fmt == "hf" and layer == "Mamba2" and config_dict.get("ssm_cfg", {}).get("ngroups", 1) > 1:
        lines += ["", "Needs transformers >= 5.23: earlier versions normalise the gated RMSNorm over all "
                  f"{config_dict['ssm_cfg']['ngroups']} groups at once instead of per group, and give other logits."]
    return "\n".join(lines) + "\n"
