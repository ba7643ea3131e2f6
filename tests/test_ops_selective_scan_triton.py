"""Our Triton selective scan (kotomamba/ops/selective_scan_triton.py) against its PyTorch twin
``selective_scan_ref``: the output, the final state and every gradient (of both), on CPU under Triton's interpreter (a
fresh process; see tests/interpreted_kernels.py). The twin runs in float64, the kernels in float32 (bfloat16
inputs in one case)."""
from __future__ import annotations


import pytest
import torch

from interpreted_kernels import assert_relative, run_interpreted

from kotomamba.ops.selective_scan import selective_scan_ref

pytest.importorskip("triton", reason="the kernels' CPU check needs the triton package (the test extra has it)")

RUN_KERNEL = """
import sys, torch
from kotomamba.ops.selective_scan_triton import selective_scan_triton
results = {}
for name, case in torch.load(sys.argv[1]).items():
    leaves = {k: v.to(case["dtype"]).requires_grad_(True) for k, v in case["leaves"].items()}
    inputs = dict(leaves)
    if case["channels_last"]:  # delta as Mamba-1's dt_proj leaves it: [b, D, L] viewed from [D, b * L]
        delta = leaves["delta"]
        inputs["delta"] = delta.permute(1, 0, 2).contiguous().permute(1, 0, 2)
    out, last = selective_scan_triton(**inputs, **case["options"], return_last_state=True)
    loss = (out.float() * case["cotangent"]).sum() + (last * case["final_cotangent"]).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    results[name] = {"out": out.detach().float(), "last": last.detach(),
                     **{"d" + k: g.float() for k, g in zip(leaves, grads)}}
torch.save(results, sys.argv[2])
"""


def case(seed: int, batch: int, dim: int, seqlen: int, dstate: int, gated: bool = True, softplus: bool = True,
         config: tuple[int, int, int, int] = (4, 32, 4, 2), channels_last: bool = False,
         dtype: torch.dtype = torch.float32) -> dict:
    g = torch.Generator().manual_seed(seed)
    leaves = {"u": torch.randn(batch, dim, seqlen, generator=g),
              "delta": torch.randn(batch, dim, seqlen, generator=g) * 0.5 - 1.0,
              "A": -torch.rand(dim, dstate, generator=g) * 2 - 0.1,
              "B": torch.randn(batch, dstate, seqlen, generator=g),
              "C": torch.randn(batch, dstate, seqlen, generator=g)}
    if not softplus:  # a positive step as it is
        leaves["delta"] = leaves["delta"].abs() * 0.3 + 0.01
    if gated:
        leaves.update(D=torch.randn(dim, generator=g), z=torch.randn(batch, dim, seqlen, generator=g),
                      delta_bias=torch.randn(dim, generator=g) * 0.3)
    return {"leaves": leaves, "dtype": dtype, "channels_last": channels_last,
            "options": {"delta_softplus": softplus, "fwd_config": config, "bwd_config": config},
            "cotangent": torch.randn(batch, dim, seqlen, generator=g),
            "final_cotangent": torch.randn(batch, dim, dstate, generator=g)}


# Channels that the programs' block does not divide, sequences shorter than a block and not a multiple of
# it nor of the positions loaded together, one state, no gate / D / bias / softplus, dt laid out as Mamba-1's
# mixer makes it, bfloat16 inputs.
CASES = {
    "gated": dict(seed=1, batch=2, dim=6, seqlen=75, dstate=8),
    "plain": dict(seed=2, batch=1, dim=9, seqlen=45, dstate=16, gated=False, softplus=False, config=(16, 32, 4, 8)),
    "short": dict(seed=3, batch=3, dim=4, seqlen=5, dstate=4, config=(2, 16, 2, 1)),
    "channels-last-dt": dict(seed=4, batch=2, dim=8, seqlen=48, dstate=16, config=(8, 16, 4, 4), channels_last=True),
    "one-state": dict(seed=5, batch=1, dim=3, seqlen=40, dstate=1, config=(4, 8, 1, 1)),
}
BF16_CASES = {"bf16": dict(seed=6, batch=1, dim=8, seqlen=50, dstate=16, dtype=torch.bfloat16)}


def expected(arguments: dict) -> dict:
    inputs = case(**arguments)
    leaves = {k: v.to(inputs["dtype"]).double().requires_grad_(True) for k, v in inputs["leaves"].items()}
    out, last = selective_scan_ref(**leaves, delta_softplus=inputs["options"]["delta_softplus"],
                                   return_last_state=True)
    loss = (out * inputs["cotangent"].double()).sum() + (last * inputs["final_cotangent"].double()).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return {"out": out, "last": last, **{"d" + k: g for k, g in zip(leaves, grads)}}


@pytest.fixture(scope="module")
def kernel_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scan_kernel")
    results = run_interpreted(RUN_KERNEL, {name: case(**arguments) for name, arguments in CASES.items()}, folder)
    bf16 = run_interpreted(RUN_KERNEL, {name: case(**arguments) for name, arguments in BF16_CASES.items()}, folder,
                           bf16=True)
    return {**results, **bf16}


@pytest.mark.parametrize("name", list(CASES))
def test_kernels_match_the_reference(kernel_results, name):
    assert_relative(kernel_results[name], expected(CASES[name]), 1e-5)


@pytest.mark.parametrize("name", list(BF16_CASES))
def test_bf16_inputs_match_the_reference_within_bf16_rounding(kernel_results, name):
    # The twin sees the same bf16-rounded inputs; what differs is the rounding of the output and the
    # gradients to bf16 (relative 2**-8 each).
    assert_relative(kernel_results[name], expected(BF16_CASES[name]), 1e-2)


def test_blockings_the_kernels_cannot_walk_are_refused():
    from kotomamba.ops.selective_scan_triton import selective_scan_triton

    u = torch.randn(1, 4, 8, requires_grad=True)
    with pytest.raises(ValueError, match="same length"):
        selective_scan_triton(u, torch.rand(1, 4, 8), -torch.ones(4, 4), torch.randn(1, 4, 8), torch.randn(1, 4, 8),
                              fwd_config=(4, 16, 4, 1), bwd_config=(4, 32, 4, 1))
    with pytest.raises(ValueError, match="must divide"):
        selective_scan_triton(u, torch.rand(1, 4, 8), -torch.ones(4, 4), torch.randn(1, 4, 8), torch.randn(1, 4, 8),
                              fwd_config=(4, 16, 4, 3), bwd_config=(4, 16, 4, 3))
    with pytest.raises(ValueError, match="'triton' or 'gluon'"):
        selective_scan_triton(u, torch.rand(1, 4, 8), -torch.ones(4, 4), torch.randn(1, 4, 8), torch.randn(1, 4, 8),
                              bwd_kernel="cuda")


def test_blockings_the_gluon_backward_cannot_walk_are_refused():
    pytest.importorskip("triton.experimental.gluon", reason="needs Triton's Gluon (triton.experimental.gluon)")
    from kotomamba.ops.selective_scan_triton import selective_scan_triton

    u = torch.randn(1, 4, 8, requires_grad=True)
    args = (u, torch.rand(1, 4, 8), -torch.ones(4, 4), torch.randn(1, 4, 8), torch.randn(1, 4, 8))
    with pytest.raises(ValueError, match="Gluon backward walks 8 channels a warp, got 16 channels on 1 warps"):
        selective_scan_triton(*args, bwd_config=(16, 16, 1, 8), bwd_kernel="gluon")
    with pytest.raises(ValueError, match="loads 4 or more positions together, got 2"):
        selective_scan_triton(*args, bwd_config=(16, 16, 2, 2), bwd_kernel="gluon")


def test_the_gluon_backward_runs_only_on_cuda():
    """Triton's interpreter does not run Gluon: off CUDA the dispatched backward is the Triton kernel's."""
    from kotomamba.ops.selective_scan_triton import SCAN_BWD_CONFIG, backward_kernel

    assert backward_kernel(torch.device("cpu"), 16) == ("triton", SCAN_BWD_CONFIG)


# causal-conv1d's CUDA functions cannot run here: the mixer gets its twin in their place, with their signatures
# (the backward writes dx where it is given), so the test judges how the mixer lays out and routes its tensors.
RUN_MIXER = """
import sys, types, torch
from kotomamba.ops import dispatch, mamba_inner
from kotomamba.ops.causal_conv1d import causal_conv1d_ref

def fwd(x, weight, bias, seq_idx, initial_states, final_states_out, silu):
    return causal_conv1d_ref(x, weight, bias, activation="silu" if silu else None)

def bwd(x, weight, bias, dout, seq_idx, initial_states, dfinal_states, dx, return_dinitial_states, silu):
    leaves = [t.detach().requires_grad_(True) for t in (x, weight, bias)]
    with torch.enable_grad():
        grads = torch.autograd.grad(fwd(*leaves, None, None, None, silu), leaves, dout)
    dx.copy_(grads[0])
    return dx, grads[1], grads[2], None

conv = types.SimpleNamespace(causal_conv1d_fwd_function=fwd, causal_conv1d_bwd_function=bwd)
mamba_inner.kernel_module = lambda name: conv if name == mamba_inner._CONV else dispatch.kernel_module(name)
case = torch.load(sys.argv[1])["mixer"]
leaves = {k: v.clone().requires_grad_(True) for k, v in case["leaves"].items()}
out = mamba_inner.mamba1_inner_triton(**leaves)
grads = torch.autograd.grad((out * case["cotangent"]).sum(), list(leaves.values()))
torch.save({"out": out.detach(), **{"d" + k: g for k, g in zip(leaves, grads)}}, sys.argv[2])
"""


def mixer_case(batch=2, d_model=8, dstate=16, seqlen=40, dt_rank=3, width=4) -> dict:
    g = torch.Generator().manual_seed(7)
    d_inner = 2 * d_model
    # xz as in_proj lays it out: [2*d_inner, b*L] viewed [b, 2*d_inner, L].
    leaves = {"xz": torch.randn(2 * d_inner, batch, seqlen, generator=g).transpose(0, 1),
              "conv1d_weight": torch.randn(d_inner, 1, width, generator=g) * 0.5,
              "conv1d_bias": torch.randn(d_inner, generator=g) * 0.1,
              "x_proj_weight": torch.randn(dt_rank + 2 * dstate, d_inner, generator=g) * d_inner**-0.5,
              "dt_proj_weight": torch.randn(d_inner, dt_rank, generator=g) * dt_rank**-0.5,
              "out_proj_weight": torch.randn(d_model, d_inner, generator=g) * d_inner**-0.5,
              "out_proj_bias": torch.randn(d_model, generator=g) * 0.1,
              "A": -torch.rand(d_inner, dstate, generator=g) * 4 - 0.5,
              "D": torch.randn(d_inner, generator=g), "dt_bias": torch.randn(d_inner, generator=g) * 0.5 - 3}
    return {"leaves": leaves, "cotangent": torch.randn(batch, seqlen, d_model, generator=g)}


def test_the_mixer_around_the_kernels_matches_its_twin(tmp_path):
    """Mamba-1's mixer after in_proj (kotomamba/ops/mamba_inner.py) against ``mamba1_inner_ref``: its forward, and
    its backward, which reruns the convolution and dt_proj and writes gradients into shared buffers."""
    from kotomamba.ops.fused import mamba1_inner_ref

    inputs = mixer_case()
    got = run_interpreted(RUN_MIXER, {"mixer": inputs}, tmp_path)
    leaves = {k: v.double().requires_grad_(True) for k, v in inputs["leaves"].items()}
    out = mamba1_inner_ref(**leaves)
    grads = torch.autograd.grad((out * inputs["cotangent"].double()).sum(), list(leaves.values()))
    assert_relative(got, {"out": out, **{"d" + k: g for k, g in zip(leaves, grads)}}, 1e-5)
