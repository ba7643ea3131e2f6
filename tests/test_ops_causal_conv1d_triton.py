"""Our Triton causal convolution (kotomamba/ops/causal_conv1d_triton.py) against its PyTorch twin
``causal_conv1d_ref``, output and every gradient, on CPU under Triton's interpreter
(``TRITON_INTERPRET=1`` is read when a kernel is defined, so the kernels run in a fresh process; see
tests/test_ops_ssd_triton.py). The twin runs in float64; the kernels in float32. On a GPU, also against
causal-conv1d: tests/gpu/test_gpu_conv.py."""
from __future__ import annotations

import pytest
import torch

from interpreted_kernels import assert_relative, documents, run_interpreted

from kotomamba.ops.causal_conv1d import causal_conv1d_ref

pytest.importorskip("triton", reason="the kernels' CPU check needs the triton package (the test extra has it)")

RUN_KERNEL = """
import sys, torch
from kotomamba.ops.causal_conv1d_triton import causal_conv1d_triton
results = {}
for name, case in torch.load(sys.argv[1]).items():
    leaves = {k: v.clone().requires_grad_(True) for k, v in case["leaves"].items()}
    y = causal_conv1d_triton(leaves["x"], leaves["weight"], leaves.get("bias"), **case["options"])
    grads = torch.autograd.grad((y * case["dy"]).sum(), list(leaves.values()))
    results[name] = {"y": y.detach(), **{"d" + k: g for k, g in zip(leaves, grads)}}
torch.save(results, sys.argv[2])
"""


def case(seed: int, batch: int, seqlen: int, dim: int, width: int, config: tuple[int, ...],
         cuts: list[list[int]] | None = None, bias: bool = True, activation: str | None = "silu",
         strided: bool = False) -> dict:
    """Random inputs x [batch, seqlen, dim] through blocking ``config``; ``cuts``: per row, the positions
    where a new document starts; ``strided``: x as a slice of a wider row, as Mamba-2's split leaves it."""
    g = torch.Generator().manual_seed(seed)
    if strided:
        x = torch.randn(batch, seqlen, dim + 7, generator=g)[..., 3 : 3 + dim]
    else:
        x = torch.randn(batch, seqlen, dim, generator=g)
    leaves = {"x": x, "weight": torch.randn(dim, width, generator=g) * 0.5}
    if bias:
        leaves["bias"] = torch.randn(dim, generator=g) * 0.3
    options = {"activation": activation, "config": config}
    if cuts is not None:
        options["seq_idx"] = documents(batch, seqlen, cuts)
    return {"leaves": leaves, "options": options, "dy": torch.randn(batch, seqlen, dim, generator=g)}


# Documents that start inside a tile, on a tile's first and last position, one-token documents and
# documents shorter than the filter; partial tiles along positions and channels; no bias; no activation;
# filter widths 2 to 4 (3: taps padded to 4 in the weight gradient's registers); x as a strided slice;
# one to four tiles per backward program, programs with tiles past the end.
CASES = {
    "documents": dict(seed=1, batch=2, seqlen=50, dim=24, width=4, config=(16, 16, 4, 1),
                      cuts=[[20, 33, 34], [16, 31, 47, 48, 49]]),
    "one-document": dict(seed=2, batch=2, seqlen=37, dim=40, width=4, config=(16, 32, 4, 2)),
    "no-bias-no-activation": dict(seed=3, batch=1, seqlen=40, dim=16, width=3, config=(8, 16, 4, 2), bias=False,
                                  activation=None, cuts=[[2, 5]]),
    "strided": dict(seed=4, batch=2, seqlen=70, dim=48, width=4, config=(16, 32, 4, 3), cuts=[[5], [64]],
                    strided=True),
    "width-two": dict(seed=5, batch=2, seqlen=19, dim=20, width=2, config=(16, 16, 4, 4), cuts=[[1, 18], []]),
}


@pytest.fixture(scope="module")
def kernel_results(tmp_path_factory):
    """Every case through the interpreted kernels, in one fresh process."""
    cases = {name: case(**arguments) for name, arguments in CASES.items()}
    return run_interpreted(RUN_KERNEL, cases, tmp_path_factory.mktemp("conv_kernel"))


@pytest.mark.parametrize("name", list(CASES))
def test_kernels_match_the_reference(kernel_results, name):
    inputs = case(**CASES[name])
    leaves = {k: v.double().requires_grad_(True) for k, v in inputs["leaves"].items()}
    options = dict(inputs["options"])
    options.pop("config")
    y = causal_conv1d_ref(leaves["x"].transpose(1, 2), leaves["weight"], leaves.get("bias"), **options).transpose(1, 2)
    grads = torch.autograd.grad((y * inputs["dy"].double()).sum(), list(leaves.values()))
    expected = {"y": y, **{"d" + k: g for k, g in zip(leaves, grads)}}
    assert_relative(kernel_results[name], expected, 1e-5)


def test_documents_do_not_leak(kernel_results):
    """The first output of each document equals a convolution of that position alone (the check the
    relative error above could hide in a small share of positions)."""
    inputs = case(**CASES["documents"])
    x, weight, bias = (inputs["leaves"][k] for k in ("x", "weight", "bias"))
    y = kernel_results["documents"]["y"]
    for row, start in ((0, 20), (0, 33), (0, 34), (1, 48), (1, 49)):
        alone = torch.nn.functional.silu(bias + weight[:, -1] * x[row, start])
        torch.testing.assert_close(y[row, start], alone, rtol=1e-5, atol=1e-5)


def test_unknown_activation_is_refused():
    from kotomamba.ops.causal_conv1d_triton import causal_conv1d_triton

    with pytest.raises(ValueError, match="activation"):
        causal_conv1d_triton(torch.randn(1, 4, 8), torch.randn(8, 4), activation="relu")
