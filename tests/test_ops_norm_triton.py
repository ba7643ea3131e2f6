"""Our Triton RMSNorms (kotomamba/ops/norm_triton.py) against their PyTorch twins ``add_rms_norm_ref`` and
``gated_rms_norm_ref``, outputs and every gradient, on CPU under Triton's interpreter (a fresh process;
see tests/interpreted_kernels.py). The twins run in float64, the kernels in float32."""
from __future__ import annotations

import pytest
import torch

from interpreted_kernels import assert_relative, run_interpreted

from kotomamba.ops.norm import add_rms_norm_ref, gated_rms_norm_ref

pytest.importorskip("triton", reason="the kernels' CPU check needs the triton package (the test extra has it)")

RUN_KERNEL = """
import sys, torch
from kotomamba.ops.norm_triton import add_rms_norm_triton, gated_rms_norm_triton
results = {}
for name, case in torch.load(sys.argv[1]).items():
    leaves = {k: v.clone().requires_grad_(True) for k, v in case["leaves"].items()}
    fn = gated_rms_norm_triton if "z" in leaves else add_rms_norm_triton
    out = fn(**leaves, **case["options"])
    outs = out if isinstance(out, tuple) else (out,)
    loss = sum((o * c).sum() for o, c in zip(outs, case["cotangents"]))
    grads = torch.autograd.grad(loss, list(leaves.values()))
    results[name] = {**{f"out{i}": o.detach() for i, o in enumerate(outs)},
                     **{"d" + k: g for k, g in zip(leaves, grads)},
                     **{f"dtype{i}": torch.empty(0, dtype=o.dtype) for i, o in enumerate(outs)}}
torch.save(results, sys.argv[2])
"""


def case(seed: int, rows: tuple[int, ...], width: int, residual: bool = False, prenorm: bool = False,
         residual_in_fp32: bool = False, gated: bool = False, group_size: int | None = None) -> dict:
    g = torch.Generator().manual_seed(seed)
    leaves = {"x": torch.randn(*rows, width, generator=g) * 2, "weight": 1 + torch.randn(width, generator=g) * 0.3}
    if gated:
        leaves["z"] = torch.randn(*rows, width, generator=g)
        options = {"group_size": group_size, "eps": 1e-5}
        outputs = 1
    else:
        if residual:
            leaves["residual"] = torch.randn(*rows, width, generator=g)
        options = {"prenorm": prenorm, "residual_in_fp32": residual_in_fp32, "eps": 1e-5}
        outputs = 2 if prenorm else 1
    cotangents = [torch.randn(*rows, width, generator=g) for _ in range(outputs)]
    return {"leaves": leaves, "options": options, "cotangents": cotangents}


# More rows than the backward's 4 programs (rows left over for the last one), rows in two leading dims,
# widths that are not powers of two, with and without residual and prenorm output, groups.
CASES = {
    "add-prenorm": dict(seed=1, rows=(3, 7), width=48, residual=True, prenorm=True),
    "add-no-prenorm": dict(seed=2, rows=(9,), width=40, residual=True),
    "first-block": dict(seed=3, rows=(2, 5), width=32, prenorm=True, residual_in_fp32=True),
    "plain": dict(seed=4, rows=(6,), width=24),
    "gated": dict(seed=5, rows=(2, 9), width=48, gated=True),
    "gated-groups": dict(seed=6, rows=(11,), width=96, gated=True, group_size=24),
}


@pytest.fixture(scope="module")
def kernel_results(tmp_path_factory):
    cases = {name: case(**arguments) for name, arguments in CASES.items()}
    return run_interpreted(RUN_KERNEL, cases, tmp_path_factory.mktemp("norm_kernel"))


@pytest.mark.parametrize("name", list(CASES))
def test_kernels_match_the_reference(kernel_results, name):
    inputs = case(**CASES[name])
    leaves = {k: v.double().requires_grad_(True) for k, v in inputs["leaves"].items()}
    fn = gated_rms_norm_ref if "z" in leaves else add_rms_norm_ref
    out = fn(**leaves, **inputs["options"])
    outs = out if isinstance(out, tuple) else (out,)
    loss = sum((o * c.double()).sum() for o, c in zip(outs, inputs["cotangents"]))
    grads = torch.autograd.grad(loss, list(leaves.values()))
    expected = {**{f"out{i}": o for i, o in enumerate(outs)}, **{"d" + k: g for k, g in zip(leaves, grads)}}
    got = dict(kernel_results[name])
    dtypes = [got.pop(f"dtype{i}").dtype for i in range(len(outs))]
    assert_relative(got, expected, 1e-5)
    if CASES[name].get("residual_in_fp32"):
        assert dtypes[1] == torch.float32


def test_groups_that_do_not_divide_the_channels_are_refused():
    from kotomamba.ops.norm_triton import gated_rms_norm_triton

    with pytest.raises(ValueError, match="group_size"):
        gated_rms_norm_triton(torch.randn(2, 10), torch.randn(2, 10), torch.ones(10), group_size=4)
