"""Mamba-2's mixer function (kotomamba/ops/split_conv_scan.py: our convolution, SSD scan and gated norm in one
autograd function) on CPU under Triton's interpreter (in a fresh process: see tests/interpreted_kernels.py):
output and every gradient against its twin ``mamba2_split_conv1d_scan_ref`` in float64, with and without
documents (on a GPU, also against mamba-ssm's function: tests/gpu/test_gpu_conv.py)."""
from __future__ import annotations

import pytest
import torch

from interpreted_kernels import assert_relative, documents, run_interpreted

from kotomamba.ops.fused import mamba2_split_conv1d_scan_ref

pytest.importorskip("triton", reason="the kernels' CPU check needs the triton package (the test extra has it)")

RUN_MIXER = """
import sys, torch
from kotomamba.ops.split_conv_scan import mamba2_split_conv_scan
results = {}
for name, case in torch.load(sys.argv[1]).items():
    leaves = {k: v.clone().requires_grad_(True) for k, v in case["leaves"].items()}
    y = mamba2_split_conv_scan(**leaves, **case["options"])
    grads = torch.autograd.grad((y * case["dy"]).sum(), list(leaves.values()))
    results[name] = {"y": y.detach(), **{"d" + k: g for k, g in zip(leaves, grads)}}
torch.save(results, sys.argv[2])
"""


def case(seed: int, batch: int, seqlen: int, nheads: int, headdim: int, ngroups: int, dstate: int,
         cuts: list[list[int]] | None) -> dict:
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    d_inner = nheads * headdim
    conv_dim, d_model = d_inner + 2 * ngroups * dstate, d_inner // 2
    leaves = {"zxbcdt": randn(batch, seqlen, 2 * d_inner + 2 * ngroups * dstate + nheads),
              "conv1d_weight": randn(conv_dim, 4, scale=0.5), "conv1d_bias": randn(conv_dim, scale=0.2),
              "dt_bias": randn(nheads, scale=0.5), "A": -torch.rand(nheads, generator=g) * 4 - 0.5, "D": randn(nheads),
              "norm_weight": 1 + randn(d_inner, scale=0.1), "out_proj_weight": randn(d_model, d_inner, scale=d_inner ** -0.5)}
    options = dict(chunk_size=256, headdim=headdim, ngroups=ngroups, norm_eps=1e-5, out_proj_bias=None,
                   seq_idx=None if cuts is None else documents(batch, seqlen, cuts).to(torch.int32),
                   dt_limit=(0.0, float("inf")))
    return {"leaves": leaves, "options": options, "dy": randn(batch, seqlen, d_model)}


# Documents of one and two tokens and a row without a reset; no documents; two groups of three heads (a
# zxbcdt row of 230 elements, strides not multiples of 8).
CASES = {
    "documents": dict(seed=1, batch=2, seqlen=80, nheads=4, headdim=32, ngroups=1, dstate=16,
                      cuts=[[30, 31, 33], []]),
    "no-documents": dict(seed=2, batch=1, seqlen=70, nheads=4, headdim=32, ngroups=1, dstate=16, cuts=None),
    "two-groups": dict(seed=3, batch=2, seqlen=50, nheads=6, headdim=16, ngroups=2, dstate=16,
                       cuts=[[10], [2, 3, 40]]),
}


def twin(c: dict) -> dict:
    leaves = {k: v.double().requires_grad_(True) for k, v in c["leaves"].items()}
    y = mamba2_split_conv1d_scan_ref(**leaves, **c["options"])
    grads = torch.autograd.grad((y * c["dy"].double()).sum(), list(leaves.values()))
    return {"y": y.detach(), **{"d" + k: g for k, g in zip(leaves, grads)}}


def test_the_mixer_matches_its_twin(tmp_path):
    cases = {name: case(**spec) for name, spec in CASES.items()}
    got = run_interpreted(RUN_MIXER, cases, tmp_path)
    for name, c in cases.items():
        assert_relative(got[name], twin(c), 1e-4)
