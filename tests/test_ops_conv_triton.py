"""Our channel-last causal convolution's kernels (kotomamba/ops/conv_triton.py) on CPU under Triton's
interpreter (in a fresh process: see tests/interpreted_kernels.py): output and every gradient against the
twin ``causal_conv1d_ref`` in float64, with and without documents (on a GPU: tests/gpu/test_gpu_conv.py)."""
from __future__ import annotations

import pytest
import torch

from interpreted_kernels import assert_relative, documents, run_interpreted

from kotomamba.ops.causal_conv1d import causal_conv1d_ref

pytest.importorskip("triton", reason="the kernels' CPU check needs the triton package (the test extra has it)")

RUN_KERNEL = """
import sys, torch
from kotomamba.ops.conv_triton import causal_conv1d_channel_last, conv_backward, conv_forward
results = {}
for name, case in torch.load(sys.argv[1]).items():
    o = case["options"]
    leaves = {k: v.clone().requires_grad_(True) for k, v in case["leaves"].items()}
    x, weight, bias = leaves["x"], leaves["weight"], leaves.get("bias")
    y = causal_conv1d_channel_last(x, weight, bias, o["seq_idx"], o["activation"], o["fwd"], o["bwd"])
    grads = dict(zip(leaves, torch.autograd.grad((y * case["dy"]).sum(), list(leaves.values()))))
    results[name] = {"y": y.detach(), "dx": grads["x"], "dweight": grads["weight"]}
    if bias is not None:
        results[name]["dbias"] = grads["bias"]
    if o["into"]:  # dx written into a slice of a wider row, as the mixer's gradient buffer lies
        row = torch.full((*x.shape[:2], x.shape[2] + 5), 7.0)
        seq_idx = None if o["seq_idx"] is None else o["seq_idx"].to(torch.int32)
        # The weight and bias as strided views (what a caller may hand over): the same values.
        strided_weight = weight.detach().t().contiguous().t()
        strided_bias = None if bias is None else torch.stack([bias.detach()] * 2, 1)[:, 0]
        conv_backward(x.detach(), strided_weight, strided_bias, seq_idx, case["dy"],
                      o["activation"] is not None, dx=row[..., 2 : 2 + x.shape[2]], config=o["bwd"])
        results[name]["dx-into"] = row
        results[name]["y-strided"] = conv_forward(x.detach(), strided_weight, strided_bias, seq_idx,
                                                  o["activation"] is not None, o["fwd"])
torch.save(results, sys.argv[2])
"""


def case(seed: int, batch: int, seqlen: int, dim: int, width: int, cuts: list[list[int]] | None,
         fwd: tuple[int, ...] = (8, 16, 1), bwd: tuple[int, ...] = (8, 16, 1), bias: bool = True,
         activation: str | None = "silu", strided: bool = False, into: bool = False) -> dict:
    """Random float32 inputs x [batch, seqlen, dim]; ``cuts``: per row, the positions where a new document
    starts (None: no seq_idx); ``strided``: x as a slice of a wider row, as Mamba-2's split leaves it."""
    g = torch.Generator().manual_seed(seed)
    if strided:
        x = torch.randn(batch, seqlen, dim + 7, generator=g)[..., 3 : 3 + dim]
    else:
        x = torch.randn(batch, seqlen, dim, generator=g)
    leaves = {"x": x, "weight": torch.randn(dim, width, generator=g) * 0.5}
    if bias:
        leaves["bias"] = torch.randn(dim, generator=g) * 0.3
    seq_idx = None if cuts is None else documents(batch, seqlen, cuts)
    options = {"activation": activation, "seq_idx": seq_idx, "fwd": fwd, "bwd": bwd, "into": into}
    return {"leaves": leaves, "options": options, "dy": torch.randn(batch, seqlen, dim, generator=g)}


# One-, two- and three-token documents (windows cut short by the next reset), resets at a row's second and
# last positions and on both sides of the chunks' edges, a row without resets; no documents at all; partial
# channel tiles and chunks; no bias; no activation; widths 1 to 4; x as a strided slice; dx written into a
# wider row, the weight and bias as strided views.
CASES = {
    "documents": dict(seed=1, batch=3, seqlen=50, dim=40, width=4,
                      cuts=[[15, 16, 17, 33, 34], [1, 8, 16, 31, 47, 48, 49], []]),
    "no-documents": dict(seed=2, batch=2, seqlen=37, dim=20, width=4, cuts=None, into=True),
    "no-bias-no-activation": dict(seed=3, batch=1, seqlen=40, dim=16, width=3, bias=False, activation=None,
                                  cuts=[[2, 5, 6]]),
    "width-2": dict(seed=5, batch=2, seqlen=33, dim=24, width=2, cuts=[[1, 16], [31, 32]]),
    "width-1": dict(seed=6, batch=1, seqlen=20, dim=8, width=1, cuts=[[3, 4]]),
    "strided-into": dict(seed=4, batch=2, seqlen=70, dim=48, width=4, cuts=[[5, 31, 32], [62, 64]], strided=True,
                         into=True, fwd=(16, 32, 2), bwd=(32, 32, 2)),
}


def twin(c: dict) -> dict:
    leaves = {k: v.double().requires_grad_(True) for k, v in c["leaves"].items()}
    o = c["options"]
    y = causal_conv1d_ref(leaves["x"].transpose(1, 2), leaves["weight"], leaves.get("bias"), o["seq_idx"],
                          o["activation"]).transpose(1, 2)
    grads = torch.autograd.grad((y * c["dy"].double()).sum(), list(leaves.values()))
    names = {"x": "dx", "weight": "dweight", "bias": "dbias"}
    return {"y": y.detach(), **{names[k]: g for k, g in zip(leaves, grads)}}


@pytest.mark.slow
def test_kernels_match_the_twin(tmp_path):
    cases = {name: case(**spec) for name, spec in CASES.items()}
    got = run_interpreted(RUN_KERNEL, cases, tmp_path)
    for name, c in cases.items():
        expected = twin(c)
        if c["options"]["into"]:
            row = got[name].pop("dx-into")
            dim = c["leaves"]["x"].shape[2]
            assert (row[..., :2] == 7).all() and (row[..., 2 + dim :] == 7).all(), name  # nothing beside the slice
            assert_relative({"dx": row[..., 2 : 2 + dim], "y": got[name].pop("y-strided")},
                            {"dx": expected["dx"], "y": expected["y"]}, 1e-5)
        assert_relative(got[name], expected, 1e-5)


def test_the_twin_differs_with_documents():
    """The documents matter at these cases: without them the output and all three gradients differ from the
    twin's (so the test above would notice kernels that ignore seq_idx)."""
    c = case(**CASES["documents"])
    expected = twin(c)
    c["options"]["seq_idx"] = None
    unreset = twin(c)
    for key, value in unreset.items():
        error = ((value - expected[key]).norm() / expected[key].norm()).item()
        assert error > 1e-3, key


@pytest.mark.parametrize("width", [0, 5])
def test_widths_past_the_taps_are_refused(width):
    from kotomamba.ops.conv_triton import causal_conv1d_channel_last

    with pytest.raises(ValueError, match="widths 1 to 4"):
        causal_conv1d_channel_last(torch.zeros(1, 8, 4), torch.zeros(4, width), None, None, "silu")
