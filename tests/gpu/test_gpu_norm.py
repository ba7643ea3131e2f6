"""Our Triton RMSNorms (kotomamba/ops/norm_triton.py) compiled on a GPU: outputs and every gradient against
mamba-ssm's ``rms_norm_fn`` / ``rmsnorm_fn`` on the same inputs and against the float32 twins, at a model's
widths. Judged by relative error ||a - b|| / ||b||, with mamba-ssm's own error against the twin as the
yardstick."""
from __future__ import annotations

import pytest
import torch

from relative import relative_error

pytestmark = pytest.mark.gpu

if torch.cuda.is_available():
    pytest.importorskip("triton", reason="needs triton")

from kotomamba.ops.norm import add_rms_norm_ref, gated_rms_norm_ref  # noqa: E402

DEVICE = "cuda"


def outputs_and_grads(fn, leaves: dict, cotangents: list) -> dict:
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in leaves.items()}
    out = fn(**leaves)
    outs = out if isinstance(out, tuple) else (out,)
    grads = torch.autograd.grad(sum((o.float() * c).sum() for o, c in zip(outs, cotangents)), list(leaves.values()))
    return {**{f"out{i}": o for i, o in enumerate(outs)}, **{"d" + k: g for k, g in zip(leaves, grads)}}


def check(ours: dict, theirs: dict, twin: dict) -> None:
    for key in twin:
        assert ours[key].dtype == theirs[key].dtype, key
        yardstick = max(relative_error(theirs[key], twin[key]), 1e-6)
        error = relative_error(ours[key], twin[key])
        assert error < 2 * yardstick + 1e-5, (key, error, yardstick)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("first_block", [False, True])
@pytest.mark.parametrize("width", [768, 2560])
def test_add_rms_norm_matches_mamba_ssm_and_the_twin(dtype, first_block, width):
    from mamba_ssm.ops.triton.layer_norm import rms_norm_fn

    from kotomamba.ops.norm_triton import add_rms_norm_triton

    torch.manual_seed(0)
    leaves = {"x": torch.randn(4, 1000, width, device=DEVICE).to(dtype) * 2,
              "weight": 1 + torch.randn(width, device=DEVICE) * 0.3}
    if not first_block:
        leaves["residual"] = torch.randn(4, 1000, width, device=DEVICE)
    cotangents = [torch.randn(4, 1000, width, device=DEVICE) for _ in range(2)]
    options = dict(eps=1e-5, prenorm=True, residual_in_fp32=True)
    ours = outputs_and_grads(lambda **t: add_rms_norm_triton(**t, **options), leaves, cotangents)
    theirs = outputs_and_grads(lambda x, weight, residual=None: rms_norm_fn(x, weight, None, residual=residual,
                                                                           **options), leaves, cotangents)
    twin = outputs_and_grads(lambda **t: add_rms_norm_ref(**{k: v.float() for k, v in t.items()}, **options),
                             leaves, cotangents)
    check(ours, theirs, {k: v for k, v in twin.items()})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("width, ngroups", [(1536, 1), (5120, 1), (4096, 8)])
def test_gated_rms_norm_matches_mamba_ssm_and_the_twin(dtype, width, ngroups):
    from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn

    from kotomamba.ops.norm_triton import gated_rms_norm_triton

    torch.manual_seed(1)
    leaves = {"x": torch.randn(4, 1000, width, device=DEVICE).to(dtype), "z": torch.randn(4, 1000, width,
                                                                                          device=DEVICE).to(dtype),
              "weight": 1 + torch.randn(width, device=DEVICE) * 0.3}
    cotangents = [torch.randn(4, 1000, width, device=DEVICE)]
    size = width // ngroups
    ours = outputs_and_grads(lambda **t: gated_rms_norm_triton(**t, eps=1e-5, group_size=size), leaves, cotangents)
    theirs = outputs_and_grads(lambda x, z, weight: rmsnorm_fn(x, weight, None, z=z, eps=1e-5, group_size=size,
                                                               norm_before_gate=False), leaves, cotangents)
    twin = outputs_and_grads(lambda x, z, weight: gated_rms_norm_ref(x.float(), z.float(), weight, 1e-5, size),
                             leaves, cotangents)
    check(ours, theirs, twin)
