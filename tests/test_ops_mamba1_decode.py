"""One Mamba-1 decoding step in Triton launches (kotomamba/ops/mamba1_decode_triton.py) against its twin
(kotomamba/ops/mamba1_decode.py), on CPU under Triton's interpreter (a fresh process: see tests/interpreted_kernels.py):
the "conv" and "scan" launches over several steps in a row from random states; the twin against the composition
``Mamba1Mixer.step`` ran before it; then a tiny Mamba-1 model's prefill and steps (twin, then kernels) against its
full forward."""
from __future__ import annotations

import pytest
import torch

from interpreted_kernels import assert_relative, run_interpreted

from kotomamba.ops.mamba1_decode import mamba1_decode_step_composed, mamba1_decode_step_ref

pytest.importorskip("triton", reason="the kernels' CPU check needs the triton package (the test extra has it)")

RUN_KERNEL = """
import sys, torch
from kotomamba.ops import mamba1_decode_triton as kernels
results = {}
for name, case in torch.load(sys.argv[1]).items():
    defaults = {setting: getattr(kernels, setting) for setting in case["settings"]}
    for setting, value in case["settings"].items():
        setattr(kernels, setting, value)
    conv_state, ssm_state = case["conv_state"].clone(), case["ssm_state"].clone()
    ys = [kernels.mamba1_decode_step_triton(xz, conv_state, ssm_state, *case["weights"]) for xz in case["xz"]]
    results[name] = {"y": torch.stack(ys), "conv_state": conv_state, "ssm_state": ssm_state}
    for setting, value in defaults.items():
        setattr(kernels, setting, value)
torch.save(results, sys.argv[2])
"""

def case(seed: int, batch: int, d_inner: int = 48, dt_rank: int = 6, dstate: int = 16, width: int = 4,
         steps: int = 3, conv_bias: bool = True, dtype: torch.dtype = torch.float32, strided: bool = False,
         **settings) -> dict:
    """Random weights (A_log and D float32, as the model keeps them; the others in ``dtype``), random conv and SSM
    states in ``dtype`` and ``steps`` rows of in_proj's output xz [batch, 2*d_inner]. ``strided``: xz a slice of
    wider rows, the conv state channel-last and the SSM state with d_state outermost (views, as strides can come).
    ``settings``: the kernel module's tile constants for this case (its defaults for the rest)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*size, scale=1.0):
        return torch.randn(*size, generator=g) * scale

    xz = randn(steps, batch, 2 * d_inner + (8 if strided else 0)).to(dtype)[..., :2 * d_inner]
    weights = [randn(d_inner, width, scale=0.5).to(dtype), randn(d_inner, scale=0.3).to(dtype) if conv_bias else None,
               randn(dt_rank + 2 * dstate, d_inner, scale=d_inner ** -0.5).to(dtype),
               randn(d_inner, dt_rank, scale=dt_rank ** -0.5).to(dtype),
               (randn(d_inner, scale=0.5) - 2.0).to(dtype),  # dt before softplus, around the model's initial range
               torch.log(torch.arange(1, dstate + 1).float()).expand(d_inner, -1) + randn(d_inner, dstate, scale=0.2),
               randn(d_inner)]
    if strided:
        conv_state = randn(batch, width, d_inner).to(dtype).transpose(1, 2)
        ssm_state = randn(batch, dstate, d_inner).to(dtype).transpose(1, 2)
    else:
        conv_state, ssm_state = randn(batch, d_inner, width).to(dtype), randn(batch, d_inner, dstate).to(dtype)
    return {"xz": xz, "conv_state": conv_state, "ssm_state": ssm_state, "weights": weights,
            "settings": settings}


# Batch 1, 3, 5 and 17 (not powers of two but 1); dt_rank 6 and 5 (not powers of two: masked), d_state 16, 12 (not
# a power of two) and 64; filter widths 4, 3 and 2; without conv bias; bf16 activations, weights and states; views;
# channels split over several conv programs whose partials the scan adds in several tiles (batch-5-split: 6 conv
# programs of 4 channels, the last half past d_inner, and 4 parts per tile), a conv product tile narrower than its
# program's channels (CONV_TILE: 2 channels), and several channel slices per scan program (SCAN_PROGRAMS, SCAN_TILE).
CASES = {
    "batch-1": dict(seed=1, batch=1),
    "batch-3-no-conv-bias": dict(seed=2, batch=3, conv_bias=False, dt_rank=5),
    "batch-5-split": dict(seed=3, batch=5, d_inner=22, dstate=12, width=3, steps=2, CONV_CHANNELS=4, CONV_TILE=64,
                          SCAN_TILE=32, SCAN_PROGRAMS=5),
    "batch-17": dict(seed=4, batch=17, d_inner=24, dstate=8, width=2, steps=2),
    "dstate-64": dict(seed=5, batch=3, d_inner=32, dstate=64, dt_rank=5, steps=2),
    "strided": dict(seed=6, batch=3, strided=True, CONV_CHANNELS=16),
    "bf16": dict(seed=7, batch=3, dtype=torch.bfloat16),
    "bf16-split-no-conv-bias": dict(seed=8, batch=5, d_inner=24, dt_rank=5, steps=2, conv_bias=False,
                                    dtype=torch.bfloat16, CONV_CHANNELS=8, SCAN_TILE=64, SCAN_PROGRAMS=4),
}
# bf16: the kernels and the twin round the same float32 values to bf16 (the states, y), so they part only where the
# order of a sum flips a rounding; tight enough to catch y taken from the state rounded to bf16 instead of float32.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-3}


def twin(c: dict) -> dict:
    conv_state, ssm_state = c["conv_state"].clone(), c["ssm_state"].clone()
    ys = [mamba1_decode_step_ref(xz, conv_state, ssm_state, *c["weights"]) for xz in c["xz"]]
    return {"y": torch.stack(ys), "conv_state": conv_state, "ssm_state": ssm_state}


@pytest.fixture(scope="module")
def kernel_results(tmp_path_factory):
    cases = {name: case(**spec) for name, spec in CASES.items()}
    return run_interpreted(RUN_KERNEL, cases, tmp_path_factory.mktemp("mamba1_decode"), bf16=True)


@pytest.mark.parametrize("name", list(CASES))
def test_kernels_match_the_twin_over_steps(kernel_results, name):
    """y in xz's dtype and both states in their own, within the dtype's tolerance; the conv state exactly (it holds
    the inputs as they came)."""
    c = case(**CASES[name])
    got, expected = kernel_results[name], twin(c)
    assert got["y"].dtype == c["xz"].dtype and got["ssm_state"].dtype == c["ssm_state"].dtype
    assert torch.equal(got["conv_state"], expected["conv_state"])
    assert_relative(got, expected, TOLERANCE[c["xz"].dtype])


@pytest.mark.parametrize("name", ["batch-3-no-conv-bias", "strided", "dstate-64"])
def test_the_twin_is_the_upstream_composition_in_float32(name):
    """The twin against mamba1_decode_step_composed (what runs above MAX_BATCH rows; on the CPU through the
    reference ops), both in float32."""
    c = case(**CASES[name])
    ours = twin(c)
    conv_state, ssm_state = c["conv_state"].clone(), c["ssm_state"].clone()
    ys = [mamba1_decode_step_composed(xz, conv_state, ssm_state, *c["weights"]) for xz in c["xz"]]
    torch.testing.assert_close(ours["y"], torch.stack(ys), rtol=1e-6, atol=1e-6)
    assert torch.equal(ours["conv_state"], conv_state)
    torch.testing.assert_close(ours["ssm_state"], ssm_state, rtol=1e-6, atol=1e-6)


def test_the_cases_are_not_blind():
    """What the kernels must get right changes the twin's results well beyond the tolerance: D's skip, dt_proj's
    bias, the taps' order, and the partial products of every conv block (B and C from half the channels)."""
    c = case(**CASES["batch-5-split"])
    expected = twin(c)["y"]
    conv_weight, conv_bias, x_proj, dt_w, dt_b, A_log, D = c["weights"]
    half = x_proj.clone()
    half[:, half.shape[1] // 2:] = 0
    for weights in ([conv_weight, conv_bias, x_proj, dt_w, dt_b, A_log, torch.zeros_like(D)],
                    [conv_weight, conv_bias, x_proj, dt_w, torch.zeros_like(dt_b), A_log, D],
                    [conv_weight.flip(-1), conv_bias, x_proj, dt_w, dt_b, A_log, D],
                    [conv_weight, conv_bias, half, dt_w, dt_b, A_log, D]):
        assert (twin(dict(c, weights=weights))["y"] - expected).norm() > 0.05 * expected.norm()


def tiny_mamba1():
    from kotomamba.model import MambaLM, preset

    torch.manual_seed(0)
    return MambaLM(preset("tiny", ssm_cfg={"layer": "Mamba1", "dt_rank": 6})).eval()


def test_mixer_prefill_and_twin_steps_equal_its_full_forward():
    """Mamba1Mixer.forward over the whole sequence against a prefill (which fills the shift conv state) and
    ``step`` (the twin on CPU) for each later token, for prompts shorter and longer than the conv width."""
    mixer = tiny_mamba1().backbone.layers[0].mixer
    hidden = torch.randn(2, 8, mixer.d_model, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = mixer(hidden)
        for prompt in (2, 5):
            state = mixer.allocate_state(2)
            outs = [mixer(hidden[:, :prompt], state=state)[:, -1]]
            outs += [mixer.step(hidden[:, t], state, torch.tensor(t)) for t in range(prompt, hidden.shape[1])]
            torch.testing.assert_close(torch.stack(outs, 1), full[:, prompt - 1:], atol=1e-5, rtol=1e-5)


RUN_MODEL = """
import sys, torch
from kotomamba.model import MambaLM, preset
from kotomamba.ops import mamba1_decode, mamba1_decode_triton as kernels
mamba1_decode.use_kernels = lambda tensor, *modules: True  # the dispatch picks the kernels, on the CPU
kernels.CONV_CHANNELS = 32  # tiny: d_inner 128, four conv programs per row
launches, conv, scan = [], kernels.conv, kernels.scan
kernels.conv = lambda *args: launches.append("conv") or conv(*args)
kernels.scan = lambda *args: launches.append("scan") or scan(*args)
results = {}
for name, case in torch.load(sys.argv[1]).items():
    torch.manual_seed(0)
    model = MambaLM(preset("tiny", ssm_cfg={"layer": "Mamba1", "dt_rank": 6})).eval()
    ids, prompt = case["ids"], case["prompt"]
    cache = model.allocate_inference_cache(ids.shape[0], ids.shape[1])
    kernels.MAX_BATCH = case["max_batch"]
    launches.clear()
    with torch.no_grad():
        logits = [model.prefill(ids[:, :prompt], cache)]
        logits += [model.step(ids[:, t], cache) for t in range(prompt, ids.shape[1])]
        full = model(ids)
    results[name] = {"steps": torch.stack(logits, 1), "full": full[:, prompt - 1:], "launches": list(launches)}
torch.save(results, sys.argv[2])
"""


def test_prefill_and_kernel_steps_equal_the_full_forward(tmp_path):
    """A tiny Mamba-1 model decoding with the kernels as the dispatch picks them (its full forward runs the twin
    path), after prompts shorter and longer than the conv width: two launches per layer and step up to MAX_BATCH
    rows, none above it (the upstream composition)."""
    ids = torch.randint(0, 512, (3, 8), generator=torch.Generator().manual_seed(1))
    cases = {"short-prompt": {"ids": ids, "prompt": 2, "max_batch": 3},
             "long-prompt": {"ids": ids, "prompt": 5, "max_batch": 3},
             "above-max-batch": {"ids": ids, "prompt": 2, "max_batch": 2}}
    for name, got in run_interpreted(RUN_MODEL, cases, tmp_path).items():
        steps = ids.shape[1] - cases[name]["prompt"]
        expected = ["conv", "scan"] * 2 * steps if cases[name]["max_batch"] >= ids.shape[0] else []
        assert got["launches"] == expected, name  # tiny: two layers
        torch.testing.assert_close(got["steps"], got["full"], atol=1e-4, rtol=1e-4, msg=name)
