"""``kotomamba convert``: a training checkpoint or a released model -> hf, mamba_ssm or kotomamba.

Sources: a run directory (its ``checkpoints/latest``), one DCP checkpoint directory, or a model
directory (transformers Mamba/Mamba2, mamba-ssm or our export: anything
``MambaLM.from_pretrained`` reads). Targets: ``hf`` (transformers), ``mamba_ssm``, and
``kotomamba`` (an initial checkpoint for continual pretraining).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from kotomamba.convert.export import read_evaluation, write_hf, write_kotomamba_checkpoint, write_mamba_ssm
from kotomamba.convert.run_info import RunInfo, parameter_count, read_run_info
from kotomamba.data.remote_inputs import local_input
from kotomamba.data.tokenizer import build_tokenizer, check_fits
from kotomamba.errors import UserError, report
from kotomamba.train.checkpoint_files import load_model_state_dict
from kotomamba.train.run_dir import RunDir, is_run_or_checkpoint, locate_checkpoint
from kotomamba.train.run_lock import RunLock

TARGETS = ("hf", "mamba_ssm", "kotomamba")
_HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kotomamba convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True,
                        help="RUN_DIR, RUN_DIR/checkpoints/step_N, or a transformers / mamba-ssm model directory "
                             "(local, or a hub id org/name@revision)")
    parser.add_argument("--to", required=True, choices=TARGETS, dest="target")
    parser.add_argument("--output", required=True, help="directory to write (replaced atomically)")
    parser.add_argument("--tokenizer-type", default=None,
                        help="Megatron tokenizer type (default: the run's config.resolved.yaml, or the "
                             "tokenizer files of a model directory)")
    parser.add_argument("--tokenizer-model", default=None,
                        help="tokenizer model file / directory, URL[#sha256=<hex>] or hub id org/name@revision")
    parser.add_argument("--eval-json", default=None, help="`kotomamba evaluate` output for the model card")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                        help="cast floating-point weights (default: keep the stored dtype)")
    return parser


def _validated(config, state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The state dict as a MambaLM of ``config`` holds it (tied head restored); mismatches are UserErrors."""
    from kotomamba.model import MambaLM

    model = MambaLM(config, device="meta")
    model.to_empty(device="cpu")
    if config.tie_embeddings and "lm_head.weight" not in state:
        state = {**state, "lm_head.weight": state["backbone.embedding.weight"]}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"{source}: weights do not match model_config.json: {exc}") from exc
    return {key: tensor.detach() for key, tensor in model.state_dict().items()}


def _hf_tokenizer_in(directory: Path) -> tuple[str, str] | None:
    """The Hugging Face tokenizer files a directory holds (an export, or a converted initial checkpoint)."""
    if any((directory / name).is_file() for name in _HF_TOKENIZER_FILES):
        return "HuggingFaceTokenizer", str(directory)
    return None


def load_source(path: str) -> tuple[object, dict[str, torch.Tensor], RunInfo]:
    """(MambaConfig, state dict, run facts: the tokenizer the source names, if any, among them).

    A released model may be named where it lives (a hub id ``org/name@revision`` or URLs): it is fetched first.
    """
    directory = Path(local_input(path, "model"))
    if is_run_or_checkpoint(directory):
        location = locate_checkpoint(directory)
        # A run a trainer holds is read only after it ends: it may be rewriting latest or superseding the run.
        with RunLock(RunDir(location.run_dir or directory).lock).acquire(shared=True, purpose="a conversion"):
            config, state = load_model_state_dict(directory)
            info = read_run_info(location)
        if info.tokenizer_type is None and location.run_dir is not None:
            info.tokenizer_type, info.tokenizer_model = _hf_tokenizer_in(location.run_dir) or (None, None)
        state = _validated(config, state, str(location.checkpoint_dir))
    elif (directory / "config.json").is_file():
        from kotomamba.model import MambaLM

        model = MambaLM.from_pretrained(directory)
        config = model.config
        info = RunInfo(checkpoint=directory.name)
        info.tokenizer_type, info.tokenizer_model = _hf_tokenizer_in(directory) or (None, None)
        state = {key: tensor.detach() for key, tensor in model.state_dict().items()}
    else:
        raise UserError(f"{directory}: not a run directory (checkpoints/latest), a DCP checkpoint (.metadata) "
                        f"or a model directory (config.json)")
    info.parameters = parameter_count(config)
    return config, state, info


def convert(checkpoint: str, target: str, output: str, tokenizer_type: str | None = None,
            tokenizer_model: str | None = None, eval_json: str | None = None, dtype: str | None = None) -> RunInfo:
    """Library form of the command (see :func:`build_parser` for the arguments); returns the facts the card was
    written from."""
    if (tokenizer_type is None) != (tokenizer_model is None):
        raise UserError("--tokenizer-type and --tokenizer-model go together")
    config, state, info = load_source(checkpoint)
    if tokenizer_type is not None:
        info.tokenizer_type, info.tokenizer_model = tokenizer_type, tokenizer_model
    # A tokenizer named where it lives (the flag's, or a run's record) is fetched like the model.
    tokenizer = (info.tokenizer_type, local_input(info.tokenizer_model, "tokenizer")) if info.tokenizer_type else None
    if tokenizer is not None:
        check_fits(build_tokenizer(*tokenizer), config.vocab_size, tokenizer[1], checkpoint)
    if dtype is not None:
        cast = getattr(torch, dtype)
        state = {key: t.to(cast) if t.is_floating_point() else t for key, t in state.items()}
    evaluation = read_evaluation(eval_json)
    if target == "hf":
        if tokenizer is None:
            raise UserError(f"{checkpoint}: no tokenizer known for the transformers export; pass "
                            f"--tokenizer-type and --tokenizer-model")
        write_hf(config, state, output, tokenizer, info, evaluation)
    elif target == "mamba_ssm":
        write_mamba_ssm(config, state, output, tokenizer, info, evaluation)
    else:
        write_kotomamba_checkpoint(config, state, output, tokenizer)
    return info


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        info = convert(args.checkpoint, args.target, args.output, args.tokenizer_type, args.tokenizer_model,
                       args.eval_json, args.dtype)
    except UserError as exc:
        return report("convert", exc)
    print(f"kotomamba convert: wrote {args.target} to {args.output}")
    unfinished = info.unfinished_note()
    if unfinished:
        print(f"kotomamba convert: warning: {args.checkpoint}: {unfinished}", file=sys.stderr)
    return 0
