"""Our channel-last convolution with document resets (kotomamba/ops/conv_triton.py), and the Mamba-2 mixer
function around it, our SSD scan and gated norm (kotomamba/ops/split_conv_scan.py), compiled on a GPU: outputs and every gradient
against causal-conv1d / mamba-ssm's ``mamba_split_conv1d_scan_combined`` on the same inputs, and against
the float32 PyTorch twins. Judged by relative error ||a - b|| / ||b||."""
from __future__ import annotations

import pytest
import torch

from relative import relative_error

pytestmark = pytest.mark.gpu

if torch.cuda.is_available():
    pytest.importorskip("triton", reason="needs triton")

from kotomamba.ops.causal_conv1d import causal_conv1d_ref  # noqa: E402
from kotomamba.ops.fused import mamba2_split_conv1d_scan_ref  # noqa: E402

DEVICE = "cuda"


def documents(batch: int, seqlen: int, seed: int) -> torch.Tensor:
    """seq_idx [batch, seqlen] int32 with documents of 1 to 300 tokens."""
    g = torch.Generator().manual_seed(seed)
    seq_idx = torch.zeros(batch, seqlen, dtype=torch.int32)
    for row in range(batch):
        start = 0
        while start < seqlen:
            start += int(torch.randint(1, 300, (1,), generator=g))
            seq_idx[row, start:] += 1
    return seq_idx.to(DEVICE)


def grads_of(fn, leaves: dict, dy: torch.Tensor) -> dict:
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in leaves.items()}
    y = fn(**leaves)
    grads = torch.autograd.grad((y.float() * dy).sum(), list(leaves.values()))
    return {"y": y, **{"d" + k: g for k, g in zip(leaves, grads)}}


# (forward, backward) blockings: the defaults, and the others the op benchmark times.
BLOCKINGS = [None, ((64, 128, 1), (64, 64, 1)), ((32, 256, 1), (32, 128, 1))]


@pytest.mark.parametrize("blocking", BLOCKINGS, ids=["default", "64.128.1-64.64.1", "32.256.1-32.128.1"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seed", [1, 2, None])
def test_conv_matches_causal_conv1d_and_the_twin(dtype, seed, blocking):
    """seed: of the documents; None: no documents."""
    from causal_conv1d import causal_conv1d_fn

    from kotomamba.ops.conv_triton import BWD_CONFIG, FWD_CONFIG, causal_conv1d_channel_last

    fwd_config, bwd_config = blocking or (FWD_CONFIG, BWD_CONFIG)

    torch.manual_seed(0)
    batch, seqlen, dim = 3, 1000, 1792 + 40
    row = torch.randn(batch, seqlen, dim + 24, device=DEVICE).to(dtype)
    leaves = {"x": row[..., 8 : 8 + dim], "weight": torch.randn(dim, 4, device=DEVICE) * 0.5,
              "bias": torch.randn(dim, device=DEVICE) * 0.2}
    seq_idx = None if seed is None else documents(batch, seqlen, seed)
    dy = torch.randn(batch, seqlen, dim, device=DEVICE)
    ours = grads_of(lambda x, weight, bias: causal_conv1d_channel_last(x, weight, bias, seq_idx, "silu",
                                                                                 fwd_config, bwd_config), leaves, dy)
    theirs = grads_of(lambda x, weight, bias: causal_conv1d_fn(x.transpose(1, 2), weight, bias, seq_idx=seq_idx,
                                                               activation="silu").transpose(1, 2), leaves, dy)
    twin = grads_of(lambda x, weight, bias: causal_conv1d_ref(x.float().transpose(1, 2), weight, bias, seq_idx,
                                                              "silu").transpose(1, 2), leaves, dy)
    for key in twin:
        yardstick = max(relative_error(theirs[key], twin[key]), 1e-6)
        error = relative_error(ours[key], twin[key])
        assert error < 2 * yardstick + 1e-5, (key, error, yardstick)


def mixer_inputs(batch: int, seqlen: int, nheads: int, headdim: int, ngroups: int, dstate: int, seed: int = 0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, device=DEVICE, generator=g) * scale

    d_inner, d_model = nheads * headdim, nheads * headdim // 2
    conv_dim = d_inner + 2 * ngroups * dstate
    return {"zxbcdt": randn(batch, seqlen, 2 * d_inner + 2 * ngroups * dstate + nheads),
            "conv1d_weight": randn(conv_dim, 4, scale=0.5), "conv1d_bias": randn(conv_dim, scale=0.2),
            "dt_bias": randn(nheads, scale=0.5), "A": -torch.rand(nheads, device=DEVICE, generator=g) * 4 - 0.5,
            "D": randn(nheads), "norm_weight": 1 + randn(d_inner, scale=0.1),
            "out_proj_weight": randn(d_model, d_inner, scale=d_inner ** -0.5)}, d_model


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("resets", [False, True])
@pytest.mark.parametrize("ngroups", [1, 2])
def test_mixer_matches_mamba_ssm_and_the_twin(autocast, resets, ngroups):
    from mamba_ssm.ops.triton.ssd_combined import mamba_split_conv1d_scan_combined

    from kotomamba.ops.split_conv_scan import mamba2_split_conv_scan

    # With two groups, 6 heads: a zxbcdt row of 1,030 elements (strides not multiples of 8).
    batch, seqlen, nheads, headdim, dstate = 2, 1024, 8 if ngroups == 1 else 6, 64, 64
    leaves, d_model = mixer_inputs(batch, seqlen, nheads, headdim, ngroups, dstate)
    seq_idx = documents(batch, seqlen, 2) if resets else None
    dy = torch.randn(batch, seqlen, d_model, device=DEVICE)
    options = dict(chunk_size=256, headdim=headdim, ngroups=ngroups, norm_eps=1e-5, out_proj_bias=None,
                   seq_idx=seq_idx, dt_limit=(0.0, float("inf")))

    def ours(**t):
        with torch.autocast("cuda", torch.bfloat16, enabled=autocast):
            return mamba2_split_conv_scan(**t, **options)

    def theirs(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, norm_weight, out_proj_weight):
        with torch.autocast("cuda", torch.bfloat16, enabled=autocast):
            return mamba_split_conv1d_scan_combined(
                zxbcdt.to(torch.bfloat16) if autocast else zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D,
                options["chunk_size"], seq_idx=seq_idx, activation="silu", rmsnorm_weight=norm_weight,
                rmsnorm_eps=options["norm_eps"], outproj_weight=out_proj_weight, headdim=headdim, ngroups=ngroups,
                norm_before_gate=False)

    def ours_cast(zxbcdt, **rest):
        return ours(zxbcdt=zxbcdt.to(torch.bfloat16) if autocast else zxbcdt, **rest)

    got = grads_of(ours_cast, leaves, dy)
    reference = grads_of(theirs, leaves, dy)
    twin = grads_of(lambda **t: mamba2_split_conv1d_scan_ref(**t, **options), leaves, dy)
    for key in twin:
        assert got[key].dtype == reference[key].dtype, key
        yardstick = max(relative_error(reference[key], twin[key]), 1e-5)
        error = relative_error(got[key], twin[key])
        assert error < 1.5 * yardstick + 1e-4, (key, error, yardstick)
