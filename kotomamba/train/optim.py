"""AdamW with two parameter groups: weight decay on matrices, none on ``A_log``, ``D``, biases, norms.

Mamba's ``A_log`` (the log of the state decay) and ``D`` (the skip weight) are the dynamics, not
"weights" to shrink; upstream marks them ``_no_weight_decay`` (mamba-ssm ``modules/mamba_simple.py``)
and users asked for it (the predecessor decayed them). Which names are excluded is configurable.
"""
from __future__ import annotations

from typing import Iterable

import torch

def is_no_decay(name: str, patterns: Iterable[str]) -> bool:
    """True when ``name`` (a parameter FQN) matches a pattern.

    A pattern matches a whole dotted component (``D`` matches ``mixer.D`` but not ``mixer.dt_proj``;
    ``A_log`` matches ``mixer.A_log``) or one ``_``-separated word of a component (``bias`` matches
    ``conv1d.bias`` and ``mixer.dt_bias``; ``norm`` matches ``norm_f``). Matching is case-sensitive.
    """
    parts = name.split(".")
    for pattern in patterns:
        for part in parts:
            words = part.split("_")
            if part == pattern or pattern in words:
                return True
    return False


def param_groups(model: torch.nn.Module, weight_decay: float, no_decay: Iterable[str]) -> list[dict]:
    """Two AdamW groups, ``decay`` and ``no_decay`` (the ``group`` key names them).

    Tied parameters (the embedding shared with ``lm_head``) appear once, under their first name.
    """
    no_decay = list(no_decay)
    decay_params, plain_params = [], []
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        if is_no_decay(name, no_decay):
            plain_params.append(param)
        else:
            decay_params.append(param)
    return [
        {"params": decay_params, "weight_decay": weight_decay, "group": "decay"},
        {"params": plain_params, "weight_decay": 0.0, "group": "no_decay"},
    ]


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas, eps: float,
                    no_decay: Iterable[str]) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (it updates the parameters in their own dtype: fp32 masters).

    On CUDA the fused implementation: one kernel per step instead of a pass per operation
    (bench/RESULTS.md has what the foreach implementation cost).
    """
    groups = param_groups(model, weight_decay, no_decay)
    fused = all(p.is_cuda for group in groups for p in group["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                             fused=fused or None)
