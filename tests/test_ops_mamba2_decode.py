"""One Mamba-2 decoding step in Triton launches (kotomamba/ops/mamba2_decode_triton.py) against its twins
(kotomamba/ops/mamba2_decode.py), on CPU under Triton's interpreter (a fresh process: see
tests/interpreted_kernels.py): the "mix" and "out" launches over several steps in a row from a random state, so
the circular conv state wraps; the "in" launch (residual add, RMSNorm, in_proj); then a tiny model's prefill and
kernel steps against its full forward."""
from __future__ import annotations

import pytest
import torch

from interpreted_kernels import assert_relative, run_interpreted

from kotomamba.ops.mamba2_decode import (
    circular_conv_state, conv_update_circular_ref, mamba2_decode_in_ref, mamba2_decode_mix_ref,
    mamba2_decode_step_ref)

pytest.importorskip("triton", reason="the kernels' CPU check needs the triton package (the test extra has it)")

RUN_KERNEL = """
import sys, torch
from kotomamba.ops import mamba2_decode_triton as kernels
from kotomamba.ops.mamba2_decode import conv_update_circular_ref
results = {}
for name, case in torch.load(sys.argv[1]).items():
    kernels.MIX_TILE = case["mix_tile"]
    w, o = case["weights"], case["options"]
    conv_state, ssm_state, position = case["conv_state"].clone(), case["ssm_state"].clone(), case["position"].clone()
    gs, outs = [], []
    for zxbcdt in case["zxbcdt"]:
        xbc = None
        if case["convolved"]:  # the convolution done before the launch, as the in launch's epilogue does it
            start = ssm_state.shape[1] * o["headdim"]
            xbc = conv_update_circular_ref(zxbcdt[:, start:start + conv_state.shape[1]], conv_state, position,
                                           w["conv_weight"], w.get("conv_bias"))
        g, sumsq = kernels.mix(zxbcdt, conv_state, ssm_state, position, w["conv_weight"], w.get("conv_bias"),
                               w["dt_bias"], w["A_log"], w.get("D"), o["headdim"], o["ngroups"], o["dt_limit"], xbc)
        gs.append(g)
        outs.append(kernels.out(g, sumsq, w["norm_weight"], 1e-5, w["out_proj_weight"], w.get("out_proj_bias"),
                                o["ngroups"]))
        position += 1
    results[name] = {"g": torch.stack(gs), "out": torch.stack(outs), "conv_state": conv_state,
                     "ssm_state": ssm_state}
torch.save(results, sys.argv[2])
"""


def case(seed: int, batch: int, nheads: int, headdim: int, dstate: int, ngroups: int = 1, width: int = 4,
         d_model: int = 24, steps: int = 6, position: int = 3, conv_bias: bool = True, D: bool = True,
         out_proj_bias: bool = False, dt_limit: tuple[float, float] = (0.0, float("inf")),
         dtype: torch.dtype = torch.float32, mix_tile: int = 2048, convolved: bool = False) -> dict:
    """Random weights, a random (circular) conv state and SSM state at ``position``, and ``steps`` rows of
    in_proj output [batch, 2*d_inner + 2*g*n + h]; activations and states in ``dtype``, the parameters the
    model keeps in float32 (dt_bias, A_log, D) in float32."""
    g = torch.Generator().manual_seed(seed)
    d_inner = nheads * headdim
    conv_dim = d_inner + 2 * ngroups * dstate
    row = 2 * d_inner + 2 * ngroups * dstate + nheads

    def randn(*size, scale=1.0):
        return torch.randn(*size, generator=g) * scale

    zxbcdt = randn(steps, batch, row)
    zxbcdt[..., -nheads:] -= 2.0  # dt before softplus, around the model's initial range
    # The norm groups differ in scale: an rstd taken from the wrong group is far off.
    z = zxbcdt[..., :d_inner].unflatten(-1, (ngroups, -1))
    z *= torch.arange(1, ngroups + 1).float()[:, None] ** 2
    weights = {"conv_weight": randn(conv_dim, width, scale=0.5), "dt_bias": randn(nheads, scale=0.5),
               "A_log": torch.rand(nheads, generator=g) * 2, "norm_weight": (1 + randn(d_inner, scale=0.2)),
               "out_proj_weight": randn(d_model, d_inner, scale=d_inner ** -0.5)}
    if conv_bias:
        weights["conv_bias"] = randn(conv_dim, scale=0.3)
    if D:
        weights["D"] = randn(nheads)
    if out_proj_bias:
        weights["out_proj_bias"] = randn(d_model, scale=0.1)
    low = ("conv_weight", "conv_bias", "norm_weight", "out_proj_weight", "out_proj_bias")
    weights = {k: v.to(dtype) if k in low else v for k, v in weights.items()}
    conv_state = randn(batch, width, conv_dim).to(dtype).transpose(1, 2)  # channel-last, as the model's
    return {"zxbcdt": zxbcdt.to(dtype), "weights": weights, "conv_state": conv_state,
            "ssm_state": randn(batch, nheads, headdim, dstate).to(dtype), "position": torch.tensor(position),
            "options": {"headdim": headdim, "ngroups": ngroups, "dt_limit": dt_limit}, "mix_tile": mix_tile,
            "convolved": convolved}


# Batch 1 and 3; one and two groups (two heads per group); head channels in one program and split over two,
# the second partly past headdim (mix_tile: the state tile's elements), d_state not a power of two; filter
# widths 4 and 2; without conv bias, D or with out_proj bias; dt clamped; bf16 activations and states;
# 17 rows (tl.dot in the out launch); the convolution done before the mix launch (by the in launch when fused).
# Six steps from position 3 wrap the width-4 circular state.
CASES = {
    "one-group": dict(seed=1, batch=1, nheads=4, headdim=8, dstate=16),
    "two-groups": dict(seed=2, batch=3, nheads=4, headdim=8, dstate=16, ngroups=2),
    "split-heads": dict(seed=3, batch=3, nheads=4, headdim=6, dstate=12, ngroups=2, mix_tile=64, d_model=20),
    "no-bias-no-D": dict(seed=4, batch=3, nheads=2, headdim=8, dstate=8, conv_bias=False, D=False,
                         out_proj_bias=True, width=2),
    "dt-limit": dict(seed=5, batch=1, nheads=4, headdim=8, dstate=16, dt_limit=(0.05, 0.3)),
    "bf16": dict(seed=6, batch=3, nheads=4, headdim=8, dstate=16, ngroups=2, dtype=torch.bfloat16),
    "rows-17": dict(seed=7, batch=17, nheads=2, headdim=8, dstate=16, ngroups=2, d_model=40, steps=2),
    "rows-17-bf16": dict(seed=8, batch=17, nheads=2, headdim=8, dstate=16, d_model=40, steps=2,
                         dtype=torch.bfloat16),
    "convolved": dict(seed=9, batch=3, nheads=4, headdim=6, dstate=12, ngroups=2, mix_tile=64, convolved=True),
    "convolved-bf16": dict(seed=10, batch=1, nheads=4, headdim=8, dstate=16, dtype=torch.bfloat16,
                           convolved=True),
}
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def twin(c: dict) -> dict:
    """The twin's g = y * silu(z), output, and final states over the case's steps."""
    w, o = c["weights"], c["options"]
    conv_state, ssm_state, position = c["conv_state"].clone(), c["ssm_state"].clone(), c["position"].clone()
    args = (w["conv_weight"], w.get("conv_bias"), w["dt_bias"], w["A_log"], w.get("D"))
    gs, outs = [], []
    for zxbcdt in c["zxbcdt"]:
        mixed = (conv_state.clone(), ssm_state.clone())
        y, z = mamba2_decode_mix_ref(zxbcdt, *mixed, position, *args, o["headdim"], o["ngroups"], o["dt_limit"])
        gs.append(y * torch.nn.functional.silu(z))
        outs.append(mamba2_decode_step_ref(zxbcdt, conv_state, ssm_state, position, *args, w["norm_weight"], 1e-5,
                                           w["out_proj_weight"], w.get("out_proj_bias"), o["headdim"], o["ngroups"],
                                           o["dt_limit"]))
        assert torch.equal(mixed[0], conv_state) and torch.equal(mixed[1], ssm_state)
        position += 1
    return {"g": torch.stack(gs), "out": torch.stack(outs), "conv_state": conv_state, "ssm_state": ssm_state}


@pytest.fixture(scope="module")
def kernel_results(tmp_path_factory):
    cases = {name: case(**spec) for name, spec in CASES.items()}
    return run_interpreted(RUN_KERNEL, cases, tmp_path_factory.mktemp("mamba2_decode"), bf16=True)


@pytest.mark.parametrize("name", list(CASES))
def test_kernels_match_the_twin_over_steps(kernel_results, name):
    c = case(**CASES[name])
    got, expected = kernel_results[name], twin(c)
    assert got["out"].dtype == expected["out"].dtype and got["ssm_state"].dtype == expected["ssm_state"].dtype
    assert_relative(got, expected, TOLERANCE[c["zxbcdt"].dtype])


def test_the_cases_are_not_blind():
    """What the kernels must get right changes the twin's results: the taps' order, which group's rstd
    normalises a channel, and dt's clamp (so the comparison above would catch a kernel that got them wrong)."""
    c = case(**CASES["two-groups"])
    w = c["weights"]
    expected = twin(c)
    flipped = dict(c, weights=dict(w, conv_weight=w["conv_weight"].flip(-1)))
    assert (twin(flipped)["out"] - expected["out"]).norm() > 0.1 * expected["out"].norm()
    rms = expected["g"].unflatten(-1, (2, -1)).square().mean(-1).sqrt()  # [steps, batch, group]
    assert ((rms[..., 1] / rms[..., 0]).log().abs() > 0.2).all()  # every row's groups differ by over 20%
    limited = case(**CASES["dt-limit"])
    free = dict(limited, options=dict(limited["options"], dt_limit=(0.0, float("inf"))))
    assert (twin(free)["ssm_state"] - twin(limited)["ssm_state"]).norm() > 0.1 * twin(limited)["ssm_state"].norm()


def test_circular_conv_state_after_a_prompt_continues_like_a_longer_prompt():
    """The state a prefill of L inputs leaves, then one step at position L, equals the state and output of a
    prefill of L + 1 inputs (zeros before position 0 when L < W), for L on both sides of the width."""
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(5, 4, generator=g), torch.randn(5, generator=g)
    for length in (0, 1, 3, 4, 6, 9):
        x = torch.randn(2, 5, length + 1, generator=g)
        state = circular_conv_state(x[..., :length], 4)
        y = conv_update_circular_ref(x[..., -1], state, torch.tensor(length), weight, bias)
        assert torch.equal(state, circular_conv_state(x, 4))
        full = torch.nn.functional.conv1d(torch.nn.functional.pad(x, (3, 0)), weight[:, None], bias, groups=5)
        torch.testing.assert_close(y, torch.nn.functional.silu(full[..., -1]))


RUN_MODEL = """
import sys, torch
from kotomamba.model import MambaLM, preset
from kotomamba.ops import mamba2_decode, mamba2_decode_triton as kernels
mamba2_decode.use_kernels = lambda tensor, *modules: True  # the dispatch picks the kernels, on the CPU
kernels.IN_TILE, kernels.IN_ROWS = 2048, 64  # 4 K tiles of d_model 64, 5 programs
launches, in_launch, mix = [], kernels.in_launch, kernels.mix


def counted_in_launch(*args, **kwargs):
    launches.append(("in_launch", False))
    return in_launch(*args, **kwargs)


def counted_mix(*args, **kwargs):
    launches.append(("mix", (args[12] if len(args) > 12 else kwargs.get("xbc")) is not None))  # convolved xBC?
    return mix(*args, **kwargs)


kernels.in_launch, kernels.mix = counted_in_launch, counted_mix
results = {}
for name, case in torch.load(sys.argv[1]).items():
    kernels.FUSED_IN, kernels.IN_CONV = case["fused_in"], case["in_conv"]
    torch.manual_seed(0)
    model = MambaLM(preset("tiny", **case["config"])).eval()
    ids, prompt = case["ids"], case["prompt"]
    cache = model.allocate_inference_cache(ids.shape[0], ids.shape[1])
    launches.clear()
    with torch.no_grad():
        logits = [model.prefill(ids[:, :prompt], cache)]
        logits += [model.step(ids[:, t], cache) for t in range(prompt, ids.shape[1])]
        full = model(ids)
    results[name] = {"steps": torch.stack(logits, 1), "full": full[:, prompt - 1:], "launches": list(launches)}
torch.save(results, sys.argv[2])
"""


def test_prefill_and_kernel_steps_equal_the_full_forward(tmp_path):
    """A tiny model decoding with the kernels as the dispatch picks them (its full forward runs the twin path)
    after prompts shorter and longer than the conv width, with one and two groups: the mixer's mix and out
    launches after the add+norm and in_proj (FUSED_IN off); every layer's add, norm and in_proj in the in launch
    (the first without a residual), with the convolution update in it or in the mix launch, the residual in
    float32 or not (FUSED_IN on); a tiny Mamba-1 model keeps its own step whatever the setting."""
    ids = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(1))
    cases = {"short-prompt": {"config": {}, "prompt": 2, "fused_in": False, "in_conv": True},
             "two-groups": {"config": {"ssm_cfg": {"ngroups": 2}}, "prompt": 6, "fused_in": False, "in_conv": True},
             "fused": {"config": {}, "prompt": 3, "fused_in": True, "in_conv": True},
             "fused-conv-in-mix-two-groups-residual-in-model-dtype": {
                 "config": {"ssm_cfg": {"ngroups": 2}, "residual_in_fp32": False}, "prompt": 5, "fused_in": True,
                 "in_conv": False},
             "mamba1-fused": {"config": {"ssm_cfg": {"layer": "Mamba1"}}, "prompt": 3, "fused_in": True,
                              "in_conv": True}}
    for case in cases.values():
        case["ids"] = ids
    for name, got in run_interpreted(RUN_MODEL, cases, tmp_path).items():
        case, steps = cases[name], ids.shape[1] - cases[name]["prompt"]
        layers = 0 if name.startswith("mamba1") else 2 * steps  # tiny: two layers
        expected = (([("in_launch", False)] if case["fused_in"] else [])
                    + [("mix", case["fused_in"] and case["in_conv"])]) * layers
        assert got["launches"] == expected, name
        torch.testing.assert_close(got["steps"], got["full"], atol=1e-4, rtol=1e-4, msg=name)


def test_a_reset_cache_steps_from_the_first_token_like_the_full_forward():
    """After ``reset``, stepping every token from the first, without a prefill, gives the full forward's logits
    (twin path), and the position counts from 0 again."""
    from kotomamba.model import MambaLM, preset

    torch.manual_seed(0)
    model = MambaLM(preset("tiny")).eval()
    ids = torch.randint(0, 512, (2, 7), generator=torch.Generator().manual_seed(2))
    cache = model.allocate_inference_cache(2, 16)
    with torch.no_grad():
        model.prefill(ids[:, :3], cache)
        model.step(ids[:, 3], cache)
        cache.reset()
        assert int(cache.position) == 0 and cache.seqlen_offset == 0
        steps = torch.stack([model.step(ids[:, t], cache) for t in range(ids.shape[1])], 1)
        torch.testing.assert_close(steps, model(ids), atol=1e-4, rtol=1e-4)


RUN_IN = """
import sys, torch
from kotomamba.ops import mamba2_decode_triton as kernels
results = {}
for name, case in torch.load(sys.argv[1]).items():
    kernels.IN_TILE, kernels.IN_ROWS = 64, 4  # several tiles of d_model and of W's rows, the last ones partial
    conv = case["conv"]
    if conv is not None:
        conv = (conv[0].clone(), *conv[1:])
    zxbcdt, residual, xbc = kernels.in_launch(*case["args"], conv=conv)
    results[name] = {"zxbcdt": zxbcdt, "residual": residual, "xbc": xbc, "conv_state": conv and conv[0]}
torch.save(results, sys.argv[2])
"""


def in_case(seed: int, batch: int, dtype: torch.dtype = torch.float32, residual: torch.dtype | None = torch.float32,
            residual_in_fp32: bool = True, d_model: int = 40, width: int = 50, bias: bool = False,
            conv_width: int | None = None, conv_bias: bool = True) -> dict:
    """The "in" launch's arguments (mamba2_decode_in_ref's): hidden [batch, d_model] in ``dtype``, a residual in
    ``residual`` (None: the first block's step), random norm and in_proj weights [width, d_model] in ``dtype``.
    hidden + residual has an RMS far from 1 (about 3.6, hidden's alone 3): an rstd of 1, or one of hidden
    alone, is far off. With ``conv_width``, its ``conv``: a random circular state of in_proj's outputs 10 .. 33
    (24 channels) at position 5, and filter weights (and bias)."""
    g = torch.Generator().manual_seed(seed)
    hidden = (3 * torch.randn(batch, d_model, generator=g)).to(dtype)
    res = None if residual is None else (2 * torch.randn(batch, d_model, generator=g)).to(residual)
    norm_weight = (1 + 0.2 * torch.randn(d_model, generator=g)).to(dtype)
    weight = (torch.randn(width, d_model, generator=g) * d_model ** -0.5).to(dtype)
    in_bias = torch.randn(width, generator=g).to(dtype) if bias else None
    conv = None
    if conv_width is not None:
        state = torch.randn(batch, conv_width, 24, generator=g).to(dtype).transpose(1, 2)  # channel-last
        conv = (state, torch.tensor(5), (0.5 * torch.randn(24, conv_width, generator=g)).to(dtype),
                (0.3 * torch.randn(24, generator=g)).to(dtype) if conv_bias else None, 10)
    return {"args": (hidden, res, norm_weight, 1e-5, weight, in_bias, residual_in_fp32), "conv": conv}


# Batch 1, 3 (broadcast products over 4 rows) and 17 (tl.dot over 32 rows); the first block (no residual) with
# residual_in_fp32 on and off; float32 and bf16 residuals; d_model 40 and 80, not multiples of the K tile (16
# inputs below 16 rows, 64 with tl.dot), 50 W rows (not multiples of 4 or 32); with and without bias; with the
# convolution update as the epilogue (rows 10 .. 33 spread over programs; filter widths 4 and 2; conv bias or not).
IN_CASES = {
    "first-block": dict(seed=11, batch=1, residual=None),
    "residual": dict(seed=12, batch=3, bias=True),
    "bf16": dict(seed=13, batch=3, dtype=torch.bfloat16),
    "bf16-first-block": dict(seed=14, batch=1, dtype=torch.bfloat16, residual=None, bias=True),
    "bf16-residual-bf16": dict(seed=15, batch=3, dtype=torch.bfloat16, residual=torch.bfloat16,
                               residual_in_fp32=False),
    "bf16-first-block-bf16": dict(seed=16, batch=3, dtype=torch.bfloat16, residual=None, residual_in_fp32=False),
    "rows-17": dict(seed=17, batch=17, d_model=80),
    "rows-17-bf16-first-block": dict(seed=18, batch=17, dtype=torch.bfloat16, residual=None, d_model=80,
                                     bias=True),
    "conv": dict(seed=19, batch=3, conv_width=4),
    "conv-bf16-width-2-no-bias": dict(seed=20, batch=1, dtype=torch.bfloat16, conv_width=2, conv_bias=False),
    "conv-rows-17-bf16": dict(seed=21, batch=17, dtype=torch.bfloat16, d_model=80, conv_width=4),
}


@pytest.fixture(scope="module")
def in_results(tmp_path_factory):
    cases = {name: in_case(**spec) for name, spec in IN_CASES.items()}
    return run_interpreted(RUN_IN, cases, tmp_path_factory.mktemp("mamba2_decode_in"), bf16=True)


@pytest.mark.parametrize("name", list(IN_CASES))
def test_in_kernel_matches_the_twin(in_results, name):
    """zxbcdt within the dtype's tolerance; the new residual exactly (the same sum, rounded the same way), in
    the twin's dtype (float32 for the first block with residual_in_fp32, else the residual's or hidden's). With
    the convolution: the circular state and the result as the twin's update makes them from the launch's own
    in_proj outputs (the state exactly: it holds those outputs)."""
    case = in_case(**IN_CASES[name])
    args = case["args"]
    zxbcdt, residual = mamba2_decode_in_ref(*args)
    got = in_results[name]
    assert got["zxbcdt"].dtype == zxbcdt.dtype and got["residual"].dtype == residual.dtype
    assert torch.equal(got["residual"], residual)
    assert_relative({"zxbcdt": got["zxbcdt"]}, {"zxbcdt": zxbcdt}, TOLERANCE[args[0].dtype])
    if case["conv"] is None:
        assert got["xbc"] is None and got["conv_state"] is None
        return
    state, position, weight, bias, start = case["conv"]
    state = state.clone()
    xbc = conv_update_circular_ref(got["zxbcdt"][:, start:start + state.shape[1]], state, position, weight, bias)
    assert torch.equal(got["conv_state"], state)
    assert_relative({"xbc": got["xbc"]}, {"xbc": xbc}, 1e-5)
