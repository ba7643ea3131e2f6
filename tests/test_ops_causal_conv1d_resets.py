"""Document resets patched onto a resetless causal convolution (kotomamba/ops/causal_conv1d_resets.py),
on CPU under Triton's interpreter (in a fresh process: see tests/interpreted_kernels.py). The resetless
convolution is the twin ``causal_conv1d_ref`` without ``seq_idx`` (on a GPU it is causal-conv1d's channel-last
kernel: tests/gpu/test_gpu_conv.py); patched, its output and every gradient must be the twin's with
``seq_idx``, in float64."""
from __future__ import annotations

import pytest
import torch

from interpreted_kernels import assert_relative, documents, run_interpreted

from kotomamba.ops.causal_conv1d import causal_conv1d_ref

pytest.importorskip("triton", reason="the kernels' CPU check needs the triton package (the test extra has it)")

RUN_KERNEL = """
import sys, torch
from kotomamba.ops.causal_conv1d import causal_conv1d_ref
from kotomamba.ops.causal_conv1d_resets import document_starts, patch_backward, patch_forward, stash_gradient
results = {}
for name, case in torch.load(sys.argv[1]).items():
    o = case["options"]
    silu, config, seq_idx = o["activation"] is not None, o["config"], o["seq_idx"].to(torch.int32)
    starts = document_starts(seq_idx)
    leaves = {k: v.clone().requires_grad_(True) for k, v in case["leaves"].items()}
    x, weight, bias = leaves["x"], leaves["weight"], leaves.get("bias")
    # The resetless convolution and its backward, as causal-conv1d's kernels would give them.
    y = causal_conv1d_ref(x.transpose(1, 2), weight, bias, None, o["activation"]).transpose(1, 2)
    patched = y.detach().clone()
    patch_forward(x.detach(), weight.detach(), None if bias is None else bias.detach(), seq_idx, starts, patched, silu,
                  config)
    dy = case["dy"].clone()
    stash = stash_gradient(dy, seq_idx, starts, weight.shape[1], config)
    grads = dict(zip(leaves, torch.autograd.grad((y * dy).sum(), list(leaves.values()))))
    dx = grads["x"].contiguous()
    dw, dbias = patch_backward(x.detach(), weight.detach(), None if bias is None else bias.detach(), seq_idx, starts,
                               stash, dx, silu, config)
    results[name] = {"y": patched, "dx": dx, "dweight": grads["weight"] + dw, "starts": tuple(starts)}
    if bias is not None:
        results[name]["dbias"] = grads["bias"] + dbias
torch.save(results, sys.argv[2])
"""


def case(seed: int, batch: int, seqlen: int, dim: int, width: int, config: tuple[int, ...], cuts: list[list[int]],
         bias: bool = True, activation: str | None = "silu", strided: bool = False) -> dict:
    """Random float32 inputs x [batch, seqlen, dim]; ``cuts``: per row, the positions where a new document
    starts; ``strided``: x as a slice of a wider row, as Mamba-2's split leaves it."""
    g = torch.Generator().manual_seed(seed)
    if strided:
        x = torch.randn(batch, seqlen, dim + 7, generator=g)[..., 3 : 3 + dim]
    else:
        x = torch.randn(batch, seqlen, dim, generator=g)
    leaves = {"x": x, "weight": torch.randn(dim, width, generator=g) * 0.5}
    if bias:
        leaves["bias"] = torch.randn(dim, generator=g) * 0.3
    options = {"activation": activation, "config": config, "seq_idx": documents(batch, seqlen, cuts)}
    return {"leaves": leaves, "options": options, "dy": torch.randn(batch, seqlen, dim, generator=g)}


# One-, two- and three-token documents (windows cut short by the next reset), a reset at a row's second
# and last positions, a row without resets; partial channel tiles; no bias; no activation; filter widths 2
# to 4 (3: taps padded to 4); x as a strided slice; one channel tile per program, all of them in one
# program's loop, and two per program with the last program's second past the channels; a row longer than
# document_starts' block, with resets on both sides of the block's edges.
CASES = {
    "documents": dict(seed=1, batch=3, seqlen=50, dim=40, width=4, config=(16, 4, 1),
                      cuts=[[20, 33, 34], [1, 15, 16, 31, 47, 48, 49], []]),
    "no-bias-no-activation": dict(seed=3, batch=1, seqlen=40, dim=16, width=3, config=(16, 4, 0), bias=False,
                                  activation=None, cuts=[[2, 5, 6]]),
    "width-2": dict(seed=5, batch=2, seqlen=33, dim=24, width=2, config=(8, 4, 2), cuts=[[1, 16], [31, 32]]),
    "strided": dict(seed=4, batch=2, seqlen=70, dim=48, width=4, config=(32, 4, 0), cuts=[[5], [62, 64]],
                    strided=True),
    "long-row": dict(seed=6, batch=2, seqlen=2100, dim=8, width=4, config=(8, 4, 1),
                     cuts=[[5, 1022, 1024, 1025, 2047, 2048, 2099], [1023]]),
}


def twin(c: dict) -> dict:
    leaves = {k: v.double().requires_grad_(True) for k, v in c["leaves"].items()}
    o = c["options"]
    y = causal_conv1d_ref(leaves["x"].transpose(1, 2), leaves["weight"], leaves.get("bias"), o["seq_idx"],
                          o["activation"]).transpose(1, 2)
    grads = torch.autograd.grad((y * c["dy"].double()).sum(), list(leaves.values()))
    names = {"x": "dx", "weight": "dweight", "bias": "dbias"}
    return {"y": y.detach(), **{names[k]: g for k, g in zip(leaves, grads)}}


def test_patched_resets_match_the_twin(tmp_path):
    from kotomamba.ops.causal_conv1d_resets import document_starts_ref

    cases = {name: case(**spec) for name, spec in CASES.items()}
    got = run_interpreted(RUN_KERNEL, cases, tmp_path)
    for name, c in cases.items():
        (starts, counts), expected = got[name].pop("starts"), document_starts_ref(c["options"]["seq_idx"])
        assert counts.tolist() == expected.counts.tolist() == [len(cut) for cut in CASES[name]["cuts"]]
        for row, count in enumerate(counts.tolist()):
            assert starts[row, :count].tolist() == expected.starts[row, :count].tolist() == CASES[name]["cuts"][row]
        assert_relative(got[name], twin(c), 1e-5)


def test_the_resetless_convolution_differs_near_resets():
    """The patch is needed: without it, the outputs after a reset and all three gradients differ from
    the twin's (so the test above would notice a patch that does nothing)."""
    c = case(**CASES["documents"])
    expected = twin(c)
    leaves = {k: v.double().requires_grad_(True) for k, v in c["leaves"].items()}
    y = causal_conv1d_ref(leaves["x"].transpose(1, 2), leaves["weight"], leaves["bias"], None, "silu").transpose(1, 2)
    grads = torch.autograd.grad((y * c["dy"].double()).sum(), list(leaves.values()))
    for key, value in zip(["y", "dx", "dweight", "dbias"], [y.detach(), *grads]):
        error = ((value - expected[key]).norm() / expected[key].norm()).item()
        assert error > 1e-3, key
