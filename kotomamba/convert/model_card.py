"""The export's README.md: data, tokens seen, configuration and evaluation scores.

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


def _data_lines(info: RunInfo) -> list[str]:
    lines = []
    data_path = info.data.get("data_path")
    if data_path:
        tokens = data_path.split() if isinstance(data_path, str) else [str(t) for t in data_path]
        pairs = list(zip(tokens[0::2], tokens[1::2])) if len(tokens) > 1 else [("1", tokens[0])]
        lines.append("- Data (weight, Megatron prefix): " + "; ".join(f"{w} `{p}`" for w, p in pairs))
    if "split" in info.data:
        lines.append(f"- Train/valid/test split: {info.data['split']}")
    if "seq_length" in info.data:
        lines.append(f"- Sequence length: {info.data['seq_length']}")
    if info.tokenizer_type:
        lines.append(f"- Tokenizer: {info.tokenizer_type} `{info.tokenizer_model}`")
    lines.append(f"- Tokens seen: {info.tokens:,}" if info.tokens is not None else "- Tokens seen: unknown")
    lines.append(f"- Checkpoint: `{info.checkpoint}`" + (f" (step {info.step})" if info.step is not None else ""))
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
        lines += ["", "Samples:", ""]
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
