"""``kotomamba evaluate``: held-out perplexity, generated samples and lm-eval tasks, to one JSON file.

Output (written atomically)::

    {"model": DIR, "data": {"data_path", "split", "seq_length", "eval_samples", "seed", "reset_at_eod"},
     "perplexity": {"loss" (token-weighted mean), "perplexity" (exp(loss)), "tokens", "samples"},
     "baseline_init": {the same, for a freshly initialised model of the same config and seed},
     "sampling": {"temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens", "seed"} (always),
     "samples": [{"prompt", "completion", "text" (prompt + completion), "tokens"}],
     "lm_eval": {task: {metric: value}}}

Parts not asked for are left out. The pipeline's report and ``kotomamba convert --eval-json``
(the model card) read this file.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from kotomamba.errors import UserError, report
from kotomamba.evaluate.perplexity import heldout_loss
from kotomamba.io import check_output, write_json
from kotomamba.model.generation import SamplingConfig, load_model, load_tokenizer, resolve_device_dtype, sample_texts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kotomamba evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True,
                        help="model directory (MambaLM.from_pretrained), or a hub id org/name@revision")
    parser.add_argument("--data", nargs="+", default=None,
                        help="Megatron data prefixes (blended equally), or 'w1 p1 w2 p2' weights and prefixes "
                             "as in training")
    parser.add_argument("--split", default="949,50,1", help="train,valid,test document shares (default 949,50,1)")
    parser.add_argument("--seq-length", type=int, default=1024)
    parser.add_argument("--eval-samples", type=int, default=64, help="validation samples of seq-length tokens")
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1234, help="data shuffling, sampling and baseline init seed")
    parser.add_argument("--no-reset-at-eod", action="store_true",
                        help="do not reset a Mamba-2 model's state at document boundaries")
    parser.add_argument("--baseline-init", action="store_true",
                        help="also report the loss of a freshly initialised model of the same config and seed")
    parser.add_argument("--tokenizer-type", default=None, help="default: the HF tokenizer files in --model")
    parser.add_argument("--tokenizer-model", default=None,
                        help="tokenizer file or directory, URL or hub id org/name@revision (default: --model)")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt for samples (repeatable)")
    parser.add_argument("--prompts-file", default=None, help="prompts, one per line")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 means greedy (default 1.0: sampling)")
    parser.add_argument("--top-k", type=int, default=0, help="0 = off (default)")
    parser.add_argument("--top-p", type=float, default=1.0, help="1.0 = off (default)")
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--lm-eval-tasks", default="", help="comma-separated lm-eval task names ('' = none)")
    parser.add_argument("--lm-eval-include-path", default=None, help="directory with local lm-eval task YAMLs")
    parser.add_argument("--lm-eval-limit", type=int, default=None, help="at most this many documents per task")
    parser.add_argument("--lm-eval-num-fewshot", type=int, default=None)
    parser.add_argument("--lm-eval-batch-size", type=int, default=8)
    parser.add_argument("--lm-eval-max-length", type=int, default=2048)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--output", required=True, help="JSON file to write (atomic)")
    return parser


def _prompts(args) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts_file:
        prompts += _prompt_lines(Path(args.prompts_file))
    return prompts


def _prompt_lines(path: Path) -> list[str]:
    """The prompts of a prompts file: its lines that are not blank, read as UTF-8, a byte order mark at its
    start (as some Windows editors save) no part of the first. A file of none is refused: samples were asked for."""
    from kotomamba.data.jsonl_lines import read_past_bom

    try:
        with open(path, "rb") as handle:
            data = read_past_bom(handle) + handle.read()
    except OSError as exc:
        raise UserError(f"{path}: cannot read the prompts file ({exc.strerror})") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UserError(f"{path}: line {line}: invalid UTF-8; save the prompts file as UTF-8") from exc
    prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"{path}: no prompts in the prompts file (one a line; it has only blank lines)")
    return prompts


def _is_weight(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def data_path(words: list[str]) -> str:
    """Megatron's blend string from ``--data``: prefixes without weights get weight 1 each; words
    that include weights are Megatron's ``w1 p1 w2 p2`` (parse_data_path checks them)."""
    words = [word for item in words for word in item.split()]
    if len(words) > 1 and not any(_is_weight(word) for word in words):
        return " ".join(f"1 {prefix}" for prefix in words)
    return " ".join(words)


def _require_lm_eval() -> None:
    """Fail before the model and data are loaded when the harness the tasks need is not installed."""
    import importlib

    try:
        importlib.import_module("lm_eval")
    except ModuleNotFoundError as exc:
        raise UserError(f"--lm-eval-tasks needs lm-evaluation-harness, which is not installed ({exc}); "
                        f"install the extra: pip install 'kotomamba[lmeval]'") from exc


def _validation_dataset(args, vocab_size: int):
    """The validation split's samples, refused before the model reads any when a prefix's split is shorter than
    one sample (every sample the same few documents repeated: a perplexity of copying, where the trainer only
    warns, as its val_loss is not its product) or a sample holds an id past the model's ``vocab_size`` (data
    tokenized with another tokenizer: an index error in the embedding)."""
    from kotomamba.data.gpt_dataset import build_gpt_datasets, short_of_a_sample

    _, valid, _ = build_gpt_datasets(data_path(args.data), args.split, args.seq_length, args.seed,
                                     num_samples=(0, args.eval_samples, 0), cache_dir=None,
                                     reset_at_eod=not args.no_reset_at_eod)
    short = short_of_a_sample(valid)
    if short:
        raise UserError(f"{'; '.join(short)}: every sample would repeat the same documents, so the perplexity "
                        f"would measure copying; add documents, or give the valid split a larger share by --split "
                        f"({args.split!r}) or a shorter --seq-length")
    top = max(int(valid[i]["tokens"].max()) for i in range(len(valid)))
    if top >= vocab_size:
        raise UserError(f"--data {' '.join(args.data)}: the validation split holds token id {top}, past the "
                        f"{vocab_size} ids of the model {args.model}: tokenized with another tokenizer")
    return valid


def _baseline_loss(model, args, valid, use_seq_idx: bool) -> dict:
    from kotomamba.model import MambaLM

    device = next(model.parameters()).device
    torch.manual_seed(args.seed)
    fresh = MambaLM(model.config, device=device, dtype=next(model.parameters()).dtype).eval()
    return heldout_loss(fresh, valid, args.micro_batch_size, use_seq_idx)


def evaluate(args) -> dict:
    """Run every part the arguments ask for; returns the JSON-ready result."""
    if args.eval_samples < 0 or args.micro_batch_size < 1 or args.seq_length < 1:
        raise UserError("--eval-samples must be >= 0, --micro-batch-size and --seq-length >= 1")
    check_output(args.output, "--output")  # before the model is loaded and evaluated
    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p, args.repetition_penalty)
    tasks = [task.strip() for task in args.lm_eval_tasks.split(",") if task.strip()]
    prompts = _prompts(args)
    if tasks:
        _require_lm_eval()
    device, dtype = resolve_device_dtype(args.device, args.dtype)
    model = load_model(args.model, device, dtype)
    # Before the perplexity is computed: a tokenizer that is missing or does not fit the model would lose it.
    if prompts or tasks:
        tokenizer = load_tokenizer(args.model, args.tokenizer_type, args.tokenizer_model, model.config.vocab_size)
    result: dict = {"model": str(args.model)}
    if args.data and args.eval_samples > 0:
        valid = _validation_dataset(args, model.config.vocab_size)
        use_seq_idx = model.config.resets_at_documents and not args.no_reset_at_eod
        result["data"] = {"data_path": data_path(args.data), "split": args.split, "seq_length": args.seq_length,
                          "eval_samples": args.eval_samples, "seed": args.seed, "reset_at_eod": use_seq_idx}
        result["perplexity"] = heldout_loss(model, valid, args.micro_batch_size, use_seq_idx)
        if args.baseline_init:
            result["baseline_init"] = _baseline_loss(model, args, valid, use_seq_idx)
    # Recorded even without prompts: the export's generation_config.json takes its sampling from here.
    result["sampling"] = {**dataclasses.asdict(sampling), "max_new_tokens": args.max_new_tokens, "seed": args.seed}
    if prompts:
        result["samples"] = sample_texts(model, tokenizer, prompts, args.max_new_tokens, sampling, args.seed)
    if tasks:
        from kotomamba.evaluate.lm_eval_bridge import run_tasks

        result["lm_eval"] = run_tasks(model, tokenizer, tasks, args.lm_eval_include_path,
                                      args.lm_eval_batch_size, args.lm_eval_max_length, args.lm_eval_limit,
                                      args.lm_eval_num_fewshot, args.seed)
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = evaluate(args)
    except UserError as exc:
        return report("evaluate", exc)
    write_json(args.output, result)
    for name, key in (("trained", "perplexity"), ("untrained", "baseline_init")):
        if key in result:
            part = result[key]
            print(f"{name}: validation loss {part['loss']:.4f}, perplexity {part['perplexity']:.2f} "
                  f"over {part['tokens']} tokens")
    for task, metrics in result.get("lm_eval", {}).items():
        print(f"{task}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))
    return 0
