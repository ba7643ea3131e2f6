"""Our Triton selective scan (kotomamba/ops/selective_scan_triton.py, and its backward in Gluon,
kotomamba/ops/selective_scan_gluon.py) compiled on a GPU: the output, the final state and every gradient against the
float32 PyTorch twin ``selective_scan_ref``, and in bf16 against mamba-ssm's ``selective_scan_fn`` on the same
inputs, with mamba-ssm's own error from the twin as the yardstick. Judged by relative error ||a - b|| / ||b||."""
from __future__ import annotations

import functools
import importlib.util

import pytest
import torch

from relative import relative_error

pytestmark = pytest.mark.gpu

if torch.cuda.is_available():
    pytest.importorskip("triton", reason="needs triton")

from kotomamba.ops.selective_scan import selective_scan_ref  # noqa: E402

DEVICE = "cuda"
BLOCKINGS = [(64, 32, 4, 4), (32, 16, 2, 2), (16, 64, 1, 8), (128, 32, 8, 1)]


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


@pytest.mark.parametrize("fwd,bwd", [((16, 16, 1, 16), (8, 16, 1, 4)), ((16, 16, 1, 16), (8, 16, 1, 8)),
                                     ((16, 32, 1, 16), (8, 32, 1, 8)), ((16, 64, 1, 16), (8, 64, 1, 16)),
                                     ((16, 32, 1, 16), (16, 32, 2, 8)), ((16, 32, 1, 16), (32, 32, 4, 8))])
def test_the_gluon_backward_matches_the_twin(fwd, bwd):
    """kotomamba/ops/selective_scan_gluon.py's backward, float32, a sequence no block divides, channels its 8 a warp
    do not divide."""
    pytest.importorskip("triton.experimental.gluon", reason="needs Triton's Gluon (triton.experimental.gluon)")
    from kotomamba.ops.selective_scan_triton import selective_scan_triton

    leaves, cot, final = inputs(2, 200, 1000, 16, torch.float32, seed=2)
    got = outputs_and_grads(lambda **kw: selective_scan_triton(**kw, fwd_config=fwd, bwd_config=bwd,
                                                               bwd_kernel="gluon"), leaves, cot, final)
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
    oracle = outputs_and_grads(selective_scan_ref, leaves, cot, final, upcast=True)
    ours = {"triton": functools.partial(selective_scan_triton, bwd_kernel="triton")}
    if importlib.util.find_spec("triton.experimental.gluon"):
        ours["gluon"] = functools.partial(selective_scan_triton, bwd_kernel="gluon")
    for name, fn in ours.items():
        got = outputs_and_grads(fn, leaves, cot, final)
        for key, expected in oracle.items():
            error, theirs_error = relative_error(got[key], expected), relative_error(theirs[key], expected)
            assert error < 2 * theirs_error + 1e-2, f"{name}, {key}: ours {error:.2e}, mamba-ssm {theirs_error:.2e}"


def test_the_mixer_matches_mamba_ssm():
    """Mamba-1's mixer after in_proj at a model's shapes (d_model 512, d_state 16), under bf16 autocast as the
    trainer runs it: ours (kotomamba/ops/mamba_inner.py) no further from the float32 twin than mamba-ssm's
    ``mamba_inner_fn``, give or take bf16 rounding."""
    from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn

    from kotomamba.ops.fused import mamba1_inner_ref
    from kotomamba.ops.mamba_inner import mamba1_inner_triton

    g = torch.Generator(device=DEVICE).manual_seed(2)
    batch, d_model, dstate, seqlen, dt_rank, width = 2, 512, 16, 1024, 32, 4
    d_inner = 2 * d_model

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, device=DEVICE, generator=g) * scale

    leaves = {"xz": randn(batch, 2 * d_inner, seqlen).bfloat16(), "conv1d_weight": randn(d_inner, 1, width, scale=0.5),
              "conv1d_bias": randn(d_inner, scale=0.1), "x_proj_weight": randn(dt_rank + 2 * dstate, d_inner,
                                                                                scale=d_inner**-0.5),
              "dt_proj_weight": randn(d_inner, dt_rank, scale=dt_rank**-0.5),
              "out_proj_weight": randn(d_model, d_inner, scale=d_inner**-0.5), "out_proj_bias": None,
              "A": -torch.arange(1, dstate + 1, device=DEVICE, dtype=torch.float32).repeat(d_inner, 1),
              "D": torch.ones(d_inner, device=DEVICE), "dt_bias": randn(d_inner, scale=0.5) - 4}
    cotangent = randn(batch, seqlen, d_model)

    def theirs(xz, conv1d_weight, conv1d_bias, x_proj_weight, dt_proj_weight, out_proj_weight, out_proj_bias, A, D,
               dt_bias):
        return mamba_inner_fn(xz, conv1d_weight, conv1d_bias, x_proj_weight, dt_proj_weight, out_proj_weight,
                              out_proj_bias, A, None, None, D, delta_bias=dt_bias, delta_softplus=True)

    def run(fn, upcast=False):
        given = {k: None if v is None else (v.float() if upcast else v).clone().requires_grad_(True)
                 for k, v in leaves.items()}
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=not upcast):
            out = fn(**given)
        trained = {k: v for k, v in given.items() if v is not None}
        grads = torch.autograd.grad((out.float() * cotangent).sum(), list(trained.values()))
        return {"out": out, **{"d" + k: grad for k, grad in zip(trained, grads)}}

    got, other, oracle = run(mamba1_inner_triton), run(theirs), run(mamba1_inner_ref, upcast=True)
    for key, expected in oracle.items():
        error, theirs_error = relative_error(got[key], expected), relative_error(other[key], expected)
        assert error < 2 * theirs_error + 1e-2, f"{key}: ours {error:.2e}, mamba-ssm {theirs_error:.2e}"
