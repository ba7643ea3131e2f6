"""The run report: loss curves of every training stage (PNG) and a markdown page with the model's size,
the stages' summaries (steps, sequence length, tokens, training time) and their totals, the evaluation
scores (trained vs untrained) and generated samples.

Reads each stage's ``metrics.jsonl``, ``final.json``, ``config.resolved.yaml`` and ``model_config.json``
(layout: docs/architecture.md) and the JSON of ``kotomamba evaluate``. Usage (the report rule):
    python report.py --stage-dirs DIR... --eval EVAL.json --output report.md --plot loss.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes or CI
import matplotlib.pyplot as plt

from kotomamba.convert.model_card import duration
from kotomamba.convert.run_info import StageInfo, parameter_count, read_stage
from kotomamba.errors import UserError
from kotomamba.io import atomic_write
from kotomamba.train.metrics_file import read_metrics as read_metrics_file
from kotomamba.train.run_dir import RunDir, read_model_config


def read_metrics(stage_dir: Path) -> tuple[list[dict], list[dict]]:
    """(train records, eval records) of one stage, in step order; eval records get the train records'
    token count at their step (the trainer logs tokens with the train metrics only)."""
    train, evals = [], []
    try:
        records = read_metrics_file(RunDir(stage_dir).metrics, note_torn=False)
    except UserError as error:
        raise SystemExit(str(error)) from None
    for record in records:
        if "val_loss" in record:
            evals.append(record)
        elif "loss" in record:
            train.append(record)
    if train:
        tokens_per_step = train[-1]["tokens"] / train[-1]["step"]
        for record in evals:
            record.setdefault("tokens", record["step"] * tokens_per_step)
    return train, evals


def plot_losses(stages: list[tuple[str, list[dict], list[dict]]], plot_path: Path) -> None:
    """Train and validation loss against tokens seen; stages follow each other on one axis."""
    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=110)
    offset = 0
    for name, train, evals in stages:
        if train:
            axis.plot([offset + r["tokens"] for r in train], [r["loss"] for r in train], label=f"{name}: train")
        if evals:
            axis.plot([offset + r["tokens"] for r in evals], [r["val_loss"] for r in evals], "o--",
                      label=f"{name}: validation")
        last = max([r["tokens"] for r in train + evals], default=0)
        offset += last
        axis.axvline(offset, color="grey", linewidth=0.5)
    axis.set_xlabel("tokens seen")
    axis.set_ylabel("cross-entropy (nats/token)")
    axis.set_title("kotomamba training loss")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    with atomic_write(plot_path, "wb") as handle:
        figure.savefig(handle, format="png")
    plt.close(figure)


def _cells(*cells) -> str:
    return "| " + " | ".join("n/a" if cell is None else str(cell) for cell in cells) + " |"


def _count(value: int | None) -> str | None:
    return None if value is None else f"{value:,}"


def _total(values: list):
    return None if None in values else sum(values)


def markdown(stages, finals, infos: list[StageInfo], parameters: int, evaluation, plot_name: str) -> str:
    lines = ["# kotomamba run report", "", f"Model: {parameters:,} parameters.", "", f"![loss curves]({plot_name})",
             "", "## Training stages", "",
             "Training time: the logged training steps with their evaluations and checkpoints (start-up excluded).",
             "", "| stage | steps | sequence length | tokens | training time | final validation loss |",
             "| --- | --- | --- | --- | --- | --- |"]
    tokens = [final.get("tokens") for final in finals]
    seconds = [info.train_seconds for info in infos]
    for (name, _, _), final, info in zip(stages, finals, infos):
        val = final.get("val_loss")
        lines.append(_cells(name, final["step"], info.seq_length, _count(final.get("tokens")),
                            None if info.train_seconds is None else duration(info.train_seconds),
                            None if val is None else f"{val:.4f}"))
    if len(stages) > 1:
        total_seconds = _total(seconds)
        lines.append(_cells("**all stages**", sum(final["step"] for final in finals), "", _count(_total(tokens)),
                            None if total_seconds is None else duration(total_seconds), ""))
    trained = evaluation["perplexity"]
    lines += ["", f"## Evaluation (held-out split, {trained['tokens']:,} tokens)", "",
              "| model | loss | perplexity |", "| --- | --- | --- |",
              f"| trained | {trained['loss']:.4f} | {trained['perplexity']:.2f} |"]
    if "baseline_init" in evaluation:
        base = evaluation["baseline_init"]
        lines.append(f"| untrained (same config and seed) | {base['loss']:.4f} | {base['perplexity']:.2f} |")
    if evaluation.get("lm_eval"):
        lines += ["", "## lm-evaluation-harness", "", "```json", json.dumps(evaluation["lm_eval"], indent=2), "```"]
    if evaluation.get("samples"):
        lines += ["", "## Samples", ""]
        for sample in evaluation["samples"]:
            lines += [f"**{sample['prompt']}**", "", "```text", sample["prompt"] + sample["completion"], "```", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage-dirs", nargs="+", required=True, type=Path)
    parser.add_argument("--eval", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--plot", required=True, type=Path)
    args = parser.parse_args(argv)

    stages = [(d.name, *read_metrics(d)) for d in args.stage_dirs]
    finals = [json.loads(RunDir(d).final.read_text()) for d in args.stage_dirs]
    infos = [read_stage(d) for d in args.stage_dirs]
    parameters = parameter_count(read_model_config(args.stage_dirs[-1]))
    evaluation = json.loads(args.eval.read_text())
    plot_losses(stages, args.plot)
    plot_name = args.plot.name if args.plot.parent == args.output.parent else str(args.plot)
    with atomic_write(args.output) as handle:
        handle.write(markdown(stages, finals, infos, parameters, evaluation, plot_name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
