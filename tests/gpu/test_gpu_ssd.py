"""Our Triton SSD scan (kotomamba/ops/ssd_triton.py) compiled on a GPU: outputs and every gradient
against the float32 PyTorch twin, and against mamba-ssm's ``mamba_chunk_scan_combined`` on the same
inputs. Judged by relative error ||a - b|| / ||b||; in bf16 against the float32 twin, with the error
of a bf16 reference (ours or mamba-ssm's) as the yardstick (see tests/gpu/test_gpu_model.py)."""
from __future__ import annotations

import pytest
import torch

from relative import relative_error

pytestmark = pytest.mark.gpu

if torch.cuda.is_available():
    pytest.importorskip("triton", reason="needs triton")

from kotomamba.ops.ssd import ssd_chunk_scan_ref  # noqa: E402

DEVICE = "cuda"


def inputs(batch, seqlen, heads, groups, headdim, dstate, dtype, with_init=True, seed=0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, device=DEVICE, generator=g) * scale

    leaves = {"x": randn(batch, seqlen, heads, headdim).to(dtype),
              "dt": randn(batch, seqlen, heads, scale=0.5).to(dtype),
              "A": -torch.rand(heads, device=DEVICE, generator=g) * 4 - 0.5,
              "B": randn(batch, seqlen, groups, dstate).to(dtype), "C": randn(batch, seqlen, groups, dstate).to(dtype),
              "D": randn(heads), "dt_bias": randn(heads, scale=0.5)}
    if with_init:
        leaves["initial_states"] = randn(batch, heads, headdim, dstate)
    cotangents = {"y": randn(batch, seqlen, heads, headdim), "final": randn(batch, heads, headdim, dstate)}
    return leaves, cotangents


def packed(batch, seqlen, cuts):
    seq_idx = torch.zeros(batch, seqlen, dtype=torch.int32, device=DEVICE)
    for c in cuts:
        seq_idx[:, c:] += 1
    return seq_idx


def outputs_and_grads(fn, leaves, cotangents, upcast=False):
    leaves = {k: (v.detach().float() if upcast else v.detach().clone()).requires_grad_(True) for k, v in leaves.items()}
    y, final = fn(**leaves)
    loss = (y.float() * cotangents["y"]).sum() + (final.float() * cotangents["final"]).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return {"y": y, "final": final, **{"d" + k: g for k, g in zip(leaves, grads)}}


def ours(seq_idx, fwd_config=None, bwd_config=None, split_bwd_config=None):
    """Our op; with the configs left out, its default blocking (and the walking backward)."""
    from kotomamba.ops.ssd_triton import ssd_chunk_scan_triton

    configs = {k: v for k, v in (("fwd_config", fwd_config), ("bwd_config", bwd_config),
                                 ("split_bwd_config", split_bwd_config)) if v is not None}
    return lambda **t: ssd_chunk_scan_triton(**t, dt_softplus=True, seq_idx=seq_idx, return_final_states=True,
                                             **configs)


def twin(seq_idx):
    return lambda **t: ssd_chunk_scan_ref(**t, chunk_size=64, dt_softplus=True, seq_idx=seq_idx,
                                          return_final_states=True)


def mamba_ssm(seq_idx):
    combined = pytest.importorskip("mamba_ssm.ops.triton.ssd_combined", reason="needs mamba-ssm built for this GPU")
    return lambda **t: combined.mamba_chunk_scan_combined(**t, chunk_size=256, dt_softplus=True, seq_idx=seq_idx,
                                                          return_final_states=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_seq_idx", [False, True])
@pytest.mark.parametrize("fwd_config, bwd_config, split", [
    ((32, 64, 4), (32, 32, 4), None), ((64, 32, 8), (64, 16, 8), None), ((16, 16, 4), (16, 32, 4, 168), None),
    # The split backward (fields as SPLIT_BWD_DEFAULT's): its default; blocks of 32 with two column blocks,
    # the state in two chunks and float32 state gradients; blocks of 128; the forward's states kept; dB
    # and dC summed from shares (two column blocks); the parallel launch in two parts, in one launch (two
    # column blocks, shares, float32 state gradients) and in two launches (the forward's states kept), the
    # second with 4 or 2 heads per program (added atomically; summed from shares); in one launch with a
    # register cap that spills; in neighbouring programs of one launch.
    ((32, 64, 4), None, ()), ((32, 64, 4), None, (32, 16, 32, 4, 32, 4, 32, 4, 1)),
    ((32, 64, 4), None, (128, 32, 32, 8)), ((32, 64, 4), None, (64, 64, 16, 8, 64, 4, 64, 4, 0, 1)),
    ((32, 64, 4), None, (64, 16, 16, 4, 64, 4, 64, 4, 0, 0, 1)),
    ((32, 64, 4), None, (32, 16, 32, 4, 32, 4, 32, 4, 1, 0, 1, 1)),
    ((32, 64, 4), None, (64, 64, 16, 8, 64, 4, 64, 4, 0, 1, 0, 2)),
    ((32, 64, 4), None, (64, 64, 32, 8, 64, 4, 64, 4, 0, 1, 0, 2, 4)),
    ((32, 64, 4), None, (64, 16, 16, 4, 64, 4, 64, 4, 0, 0, 1, 2, 2)),
    ((32, 64, 4), None, (64, 64, 32, 8, 64, 4, 64, 4, 0, 1, 0, 1, 0, 128)),
    ((32, 64, 4), None, (64, 64, 16, 8, 64, 4, 64, 4, 0, 1, 0, 3)),
    # The head-looping launches: two column blocks of the dx launch and of the rerun, all heads of a group
    # per dB / dC program, summed from shares; the forward's states kept, 2 heads per program of either
    # launch, dB and dC added atomically, float32 state gradients.
    ((32, 64, 4), None, (64, 32, 64, 4, 64, 4, 16, 4, 0, 0, 1, 4, 0, 0, 1, 8)),
    ((32, 64, 4), None, (64, 64, 32, 4, 64, 4, 64, 4, 1, 1, 0, 4, 2, 0, 2)),
])
def test_kernels_match_the_twin(dtype, with_seq_idx, fwd_config, bwd_config, split):
    b, L, h, g, p, n = 2, 300, 8, 2, 32, 64
    seq_idx = packed(b, L, [40, 128, 200, 201]) if with_seq_idx else None
    leaves, cot = inputs(b, L, h, g, p, n, dtype)
    got = outputs_and_grads(ours(seq_idx, fwd_config, bwd_config, split), leaves, cot)
    oracle = outputs_and_grads(twin(seq_idx), leaves, cot, upcast=True)
    floor = outputs_and_grads(twin(seq_idx), leaves, cot) if dtype == torch.bfloat16 else None
    for key, expected in oracle.items():
        assert got[key].shape == expected.shape and torch.isfinite(got[key]).all(), key
        error = relative_error(got[key], expected)
        # float32 operands meet TF32 in tl.dot: about 3e-4 per product.
        bound = 5e-3 if floor is None else 2 * relative_error(floor[key], expected) + 2e-2
        assert error < bound, f"{key}: relative error {error:.2e} >= {bound:.2e}"


@pytest.mark.parametrize("with_seq_idx", [False, True])
@pytest.mark.parametrize("split", [None, (), (32, 64, 128, 4), (128, 64, 32, 8), (64, 64, 16, 8, 64, 4, 64, 4, 0, 1),
                                   (64, 64, 16, 8, 64, 4, 64, 4, 0, 0, 1), (64, 64, 32, 8, 64, 4, 64, 4, 0, 1),
                                   (64, 64, 16, 16, 64, 4, 64, 4, 0, 1, 0, 1),
                                   (64, 64, 16, 8, 64, 4, 64, 4, 0, 1, 0, 2), (64, 64, 32, 4, 64, 4, 64, 4, 0, 1, 0, 2),
                                   (64, 64, 32, 16, 64, 4, 64, 4, 0, 1, 0, 2, 8),
                                   (64, 64, 16, 8, 64, 4, 64, 4, 0, 1, 0, 3),
                                   (64, 64, 128, 4, 64, 4, 64, 4, 0, 0, 1, 4, 0, 0, 1, 8)])
def test_kernels_match_mamba_ssm(with_seq_idx, split):
    """Model shapes (head dim 64, d_state 128, one group), bf16: no further from the float32 twin than
    mamba-ssm's kernels are, give or take bf16 rounding. mamba-ssm takes initial states only without
    seq_idx. ``split``: the walking backward (None) or the split one with this blocking (() its default)."""
    b, L, h, g, p, n = 2, 1024, 8, 1, 64, 128
    seq_idx = packed(b, L, [100, 256, 700]) if with_seq_idx else None
    leaves, cot = inputs(b, L, h, g, p, n, torch.bfloat16, with_init=not with_seq_idx, seed=1)
    theirs = outputs_and_grads(mamba_ssm(seq_idx), leaves, cot)
    got = outputs_and_grads(ours(seq_idx, split_bwd_config=split), leaves, cot)
    oracle = outputs_and_grads(twin(seq_idx), leaves, cot, upcast=True)
    for key, expected in oracle.items():
        error, theirs_error = relative_error(got[key], expected), relative_error(theirs[key], expected)
        assert error < 2 * theirs_error + 1e-2, f"{key}: ours {error:.2e}, mamba-ssm {theirs_error:.2e}"
