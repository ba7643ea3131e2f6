"""What the trainer starts from: the model configuration and the full initial weights.

Initial weights are made once, on rank 0 (a seeded fresh init, a previous stage's checkpoint, or a
released mamba-ssm / transformers model), and broadcast into the shards, so every world size
trains the same model from the same numbers.
"""
from __future__ import annotations

from pathlib import Path

import torch

from kotomamba.errors import UserError
from kotomamba.model.config import MambaConfig
from kotomamba.model.pretrained import read_config
from kotomamba.train.checkpoint_files import read_model_state_dict
from kotomamba.train.config import TrainConfig, configured_at, located, reset_refusal, where_written
from kotomamba.train.run_dir import init_source_kind, read_model_config, resolve_checkpoint

EMBEDDING_KEYS = ("backbone.embedding.weight", "lm_head.weight")


def configured_model(config: TrainConfig, tokenizer_vocab: int) -> MambaConfig:
    """``preset`` plus the other ``model`` keys; ``vocab_size`` absent or null: the tokenizer's."""
    where = where_written(config)
    vocab = config.model.get("vocab_size")
    if vocab is not None and vocab < tokenizer_vocab:
        raise located(where, "model.vocab_size",
                      f"{vocab} is smaller than the tokenizer's vocabulary ({tokenizer_vocab})")
    return configured_at(config.model, tokenizer_vocab, where)


def _kotomamba_config(path: Path) -> MambaConfig:
    try:
        return read_model_config(resolve_checkpoint(path))
    except UserError as exc:
        raise UserError(f"init.from: {path}: {exc}") from exc


def source_model_and_state(config: TrainConfig, tokenizer_vocab: int, device: torch.device
                           ) -> tuple[MambaConfig, dict[str, torch.Tensor]]:
    """(model config, full state dict) to start from; called on rank 0 only.

    With ``init.from`` the architecture is the source's (the ``model`` section is not used); the
    vocabulary is resized to the tokenizer's when ``init.resize_vocab`` is set, and must otherwise
    cover the tokenizer's ids.
    """
    from kotomamba.model.lm import MambaLM

    if config.init.from_ is None:
        model_config = configured_model(config, tokenizer_vocab)
        torch.manual_seed(config.seed)
        model = MambaLM(model_config, device=device)
        return model_config, {k: v.detach() for k, v in model.state_dict().items()}
    path = Path(config.init.from_)
    if init_source_kind(path) == "kotomamba":
        source_config = _kotomamba_config(path)
        state = read_model_state_dict(resolve_checkpoint(path))
    else:
        source = MambaLM.from_pretrained(path)
        source_config = source.config
        state = {k: v.detach() for k, v in source.state_dict().items()}
    if source_config.vocab_size == tokenizer_vocab:
        return source_config, state
    if not config.init.resize_vocab:
        if tokenizer_vocab <= source_config.vocab_size:
            return source_config, state
        raise UserError(
            f"init.from: {path} has a vocabulary of {source_config.vocab_size} but the tokenizer has "
            f"{tokenizer_vocab} ids; set init.resize_vocab: true to resize the embedding"
        )
    target_config = MambaConfig.from_dict({**source_config.to_dict(), "vocab_size": tokenizer_vocab})
    torch.manual_seed(config.seed)
    fresh = MambaLM(target_config, device=device).state_dict()
    for key in EMBEDDING_KEYS:
        if key in state and key in fresh:
            rows = min(state[key].shape[0], fresh[key].shape[0], tokenizer_vocab)
            fresh[key][:rows] = state[key][:rows].to(fresh[key].dtype)
            state[key] = fresh[key]
    return target_config, state


def check_sources(config: TrainConfig) -> None:
    """Raise a ``UserError`` unless every input of the run exists and its model can be built.

    Called on rank 0 before the run directory changes (nothing is superseded or rewritten for a
    config that cannot train): the data files, the tokenizer, the model preset or ``init.from``.
    """
    from kotomamba.data.gpt_dataset import parse_data_path
    from kotomamba.data.tokenizer import build_tokenizer

    where = where_written(config)
    for _, prefix in parse_data_path(config.data.data_path):
        for suffix in (".idx", ".bin"):
            if not Path(prefix + suffix).is_file():
                raise located(where, "data.data_path", f"{prefix}{suffix}: no such file")
    if not Path(config.data.tokenizer_model).exists():  # before the tokenizer's own message, which names its CLI flag
        raise located(where, "data.tokenizer_model", f"{config.data.tokenizer_model}: no such file")
    try:
        tokenizer = build_tokenizer(config.data.tokenizer_type, config.data.tokenizer_model)
    except UserError as exc:
        raise located(where, "data.tokenizer_model", str(exc)) from None
    if config.init.from_ is None:
        model, source = configured_model(config, tokenizer.vocab_size), "the model section"
    else:
        path = Path(config.init.from_)
        if not path.is_dir():
            raise located(where, "init.from", f"{path}: no such directory")
        model = _kotomamba_config(path) if init_source_kind(path) == "kotomamba" else read_config(path)[0]
        source = f"init.from {path}"
    refusal = reset_refusal(config, model, source)
    if refusal:
        raise located(where, "data.reset_at_eod", refusal)
