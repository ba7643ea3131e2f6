"""Our Triton selective scan (kotomamba/ops/selective_scan_triton.py) compiled on a GPU: the output, the final
state and every gradient against the float32 PyTorch twin ``selective_scan_ref``, and in bf16 against
mamba-ssm's ``selective_scan_fn`` on the same inputs, with mamba-ssm's own error from the twin as the
yardstick. Judged by relative error ||a - b|| / ||b||."""
from __future__ import annotations

import pytest
import torch

from relative import relative_error

pytestmark = pytest.mark.gpu

if torch.cuda.is_available():
    pytest.importorskip("triton", reason="needs triton")

from kotomamba.ops.selective_scan import selective_scan_ref  # noqa: E402

DEVICE = "cuda"
BLOCKINGS = [(4, 64, 4), (8, 32, 4), (2, 128, 4), (16, 16, 4)]


def inputs(batch, dim, seqlen, dstate, dtype, seed=0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, device=DEVICE, generator=g) * scale

    leaves = {"u": randn(batch, dim, seqlen).to(dtype), "delta": (randn(batch, dim, seqlen, scale=0.5) - 3).to(dtype),
              "A": -torch.rand(dim, dstate, device=DEVICE, generator=g) * 8 - 0.1,
              "B": randn(batch, dstate, seqlen).to(dtype), "C": randn(batch, dstate, seqlen).to(dtype),
              "D": randn(dim), "z": randn(batch, dim, seqlen).to(dtype), "delta_bias": randn(dim, scale=0.3)}
    return leaves, randn(batch, dim, seqlen), randn(batch, dim, dstate)


def outputs_and_grads(fn, leaves, cotangent, final_cotangent, upcast=False):
    leaves = {k: (v.float() if upcast else v).clone().requires_grad_(True) for k, v in leaves.items()}
    out, last = fn(**leaves, delta_softplus=True, return_last_state=True)
    loss = (out.float() * cotangent).sum() + (last.float() * final_cotangent).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return {"out": out, "last": last, **{"d" + k: g for k, g in zip(leaves, grads)}}


@pytest.mark.parametrize("blocking", BLOCKINGS)
def test_kernels_match_the_twin(blocking):
    """float32, a sequence no blocking divides, channels that some blockings do not divide."""
    from kotomamba.ops.selective_scan_triton import selective_scan_triton

    leaves, cot, final = inputs(2, 200, 1000, 16, torch.float32)
    got = outputs_and_grads(lambda **kw: selective_scan_triton(**kw, fwd_config=blocking, bwd_config=blocking),
                            leaves, cot, final)
    expected = outputs_and_grads(selective_scan_ref, leaves, cot, final)
    for key, value in expected.items():
        assert relative_error(got[key], value) < 1e-4, key


def test_kernels_match_mamba_ssm():
    """Model shapes (d_state 16), bf16: no further from the float32 twin than mamba-ssm's kernel is, give or
    take bf16 rounding."""
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    from kotomamba.ops.selective_scan_triton import selective_scan_triton

    leaves, cot, final = inputs(2, 512, 2048, 16, torch.bfloat16, seed=1)
    theirs = outputs_and_grads(selective_scan_fn, leaves, cot, final)
    got = outputs_and_grads(selective_scan_triton, leaves, cot, final)
    oracle = outputs_and_grads(selective_scan_ref, leaves, cot, final, upcast=True)
    for key, expected in oracle.items():
        error, theirs_error = relative_error(got[key], expected), relative_error(theirs[key], expected)
        assert error < 2 * theirs_error + 1e-2, f"{key}: ours {error:.2e}, mamba-ssm {theirs_error:.2e}"
