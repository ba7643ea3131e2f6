"""One Mamba-2 decoding step in two Triton launches (kotomamba/ops/mamba2_decode_triton.py) against its twin
(kotomamba/ops/mamba2_decode.py), on CPU under Triton's interpreter (a fresh process: see
tests/interpreted_kernels.py): several steps in a row from a random state, so the circular conv state wraps;
then a tiny model's prefill and kernel steps against its full forward."""
from __future__ import annotations

import pytest
import torch

from interpreted_kernels import assert_relative, run_interpreted

from kotomamba.ops.mamba2_decode import (
    circular_conv_state, conv_update_circular_ref, mamba2_decode_mix_ref, mamba2_decode_step_ref)

pytest.importorskip("triton", reason="the kernels' CPU check needs the triton package (the test extra has it)")

RUN_KERNEL = """
import sys, torch
from kotomamba.ops import mamba2_decode_triton as kernels
results = {}
for name, case in torch.load(sys.argv[1]).items():
    kernels.MIX_TILE = case["mix_tile"]
    w, o = case["weights"], case["options"]
    conv_state, ssm_state, position = case["conv_state"].clone(), case["ssm_state"].clone(), case["position"].clone()
    gs, outs = [], []
    for zxbcdt in case["zxbcdt"]:
        g, sumsq = kernels.mix(zxbcdt, conv_state, ssm_state, position, w["conv_weight"], w.get("conv_bias"),
                               w["dt_bias"], w["A_log"], w.get("D"), o["headdim"], o["ngroups"], o["dt_limit"])
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
         dtype: torch.dtype = torch.float32, mix_tile: int = 2048) -> dict:
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
            "options": {"headdim": headdim, "ngroups": ngroups, "dt_limit": dt_limit}, "mix_tile": mix_tile}


# Batch 1 and 3; one and two groups (two heads per group); head channels in one program and split over two,
# the second partly past headdim (mix_tile: the state tile's elements), d_state not a power of two; filter
# widths 4 and 2; without conv bias, D or with out_proj bias; dt clamped; bf16 activations and states;
# 17 rows (tl.dot in the out launch). Six steps from position 3 wrap the width-4 circular state.
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
import kotomamba.model.mamba2 as mamba2
from kotomamba.model import MambaLM, preset
from kotomamba.ops.mamba2_decode_triton import mamba2_decode_step_triton
mamba2.mamba2_decode_step = mamba2_decode_step_triton  # the kernels, on the CPU
results = {}
for name, case in torch.load(sys.argv[1]).items():
    torch.manual_seed(0)
    model = MambaLM(preset("tiny", ssm_cfg=case["ssm_cfg"])).eval()
    ids, prompt = case["ids"], case["prompt"]
    cache = model.allocate_inference_cache(ids.shape[0], ids.shape[1])
    with torch.no_grad():
        logits = [model.prefill(ids[:, :prompt], cache)]
        logits += [model.step(ids[:, t], cache) for t in range(prompt, ids.shape[1])]
        full = model(ids)
    results[name] = {"steps": torch.stack(logits, 1), "full": full[:, prompt - 1:]}
torch.save(results, sys.argv[2])
"""


def test_prefill_and_kernel_steps_equal_the_full_forward(tmp_path):
    """A tiny model decoding with the kernels (its full forward runs the twin path) after prompts shorter and
    longer than the conv width, with one and two groups."""
    ids = torch.randint(0, 512, (2, 11), generator=torch.Generator().manual_seed(1))
    cases = {"short-prompt": {"ssm_cfg": {}, "ids": ids, "prompt": 2},
             "two-groups": {"ssm_cfg": {"ngroups": 2}, "ids": ids, "prompt": 6}}
    for name, got in run_interpreted(RUN_MODEL, cases, tmp_path).items():
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
