"""GPU tier: one Mamba-2 decoding step in our Triton launches (kotomamba/ops/mamba2_decode_triton.py), as the
mixer dispatches it, against the twin (kotomamba/ops/mamba2_decode.py) and against mamba-ssm's ``Mamba2.step``
on the same weights, over steps that wrap the circular conv state, batch 1 to 64, float32 and bf16; then one
Mamba-1 decoding step in our launches (kotomamba/ops/mamba1_decode_triton.py) as ``Mamba1Mixer.step`` dispatches
it, against its twin (kotomamba/ops/mamba1_decode.py) and against mamba-ssm's ``Mamba.step``.

Run on an H100/H200 machine with the ``gpu`` extra installed: ``pytest -m gpu tests/gpu/test_gpu_decode.py``.
"""
from __future__ import annotations

import pytest
import torch

from relative import relative_error

from kotomamba.ops import dispatch

pytestmark = pytest.mark.gpu

DEVICE = "cuda"
DTYPES = [torch.float32, torch.bfloat16]
REL_TOL = {torch.float32: 2e-3, torch.bfloat16: 2e-2}
STEPS = 7


def mixer(dtype, ngroups=1, dt_limit=(0.0, float("inf")), d_model=256, headdim=64, d_state=128):
    from kotomamba.model.mamba2 import Mamba2Mixer

    torch.manual_seed(0)
    model = Mamba2Mixer(d_model, d_state=d_state, headdim=headdim, ngroups=ngroups, dt_limit=dt_limit,
                        device=DEVICE, dtype=dtype).eval()
    model.reset_parameters()
    return model


def decode(model, hidden, force_reference: str, monkeypatch, start=None):
    """``model.step`` over hidden [steps, b, d_model] from zero states (or ``start``'s copies); returns the
    outputs [steps, b, d_model] and the final (conv_state, ssm_state)."""
    monkeypatch.setenv(dispatch.FORCE_REFERENCE_ENV, force_reference)
    state = model.allocate_state(hidden.shape[1]) if start is None else tuple(s.clone() for s in start)
    position = torch.zeros((), dtype=torch.long, device=DEVICE)
    outs = []
    with torch.no_grad():
        for h in hidden:
            outs.append(model.step(h, state, position))
            position += 1
    return torch.stack(outs), state


def assert_within_noise(names, kernel, twin, oracle, dtype):
    """Each of the kernels' results against the twin's: in float32 within REL_TOL; in bf16 no farther from the
    float32 oracle (the same model upcast) than twice the twin's own distance from it, plus REL_TOL."""
    for name, k, t, o in zip(names, kernel, twin, oracle):
        assert k.dtype == t.dtype and torch.isfinite(k).all(), name
        if dtype == torch.float32:
            assert relative_error(k, t) < REL_TOL[dtype], name
        else:
            error, floor = relative_error(k, o), relative_error(t, o)
            assert error < 2 * floor + REL_TOL[dtype], (name, error, floor)


def test_the_kernels_are_dispatched_on_cuda(monkeypatch):
    """Else every comparison below would compare the twin with itself."""
    from kotomamba.ops import mamba2_decode

    monkeypatch.setenv(dispatch.FORCE_REFERENCE_ENV, "0")
    assert dispatch.use_kernels(torch.zeros(1, device=DEVICE), mamba2_decode._KERNEL)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 3, 17, 64])
@pytest.mark.parametrize("ngroups", [1, 2])
def test_kernel_step_matches_the_twin(monkeypatch, dtype, batch, ngroups):
    """float32: kernel against twin. bf16: both against the twin in float32 on the same values (the oracle), the
    kernel allowed twice the bf16 twin's error plus REL_TOL, as test_gpu_model's assert_match judges."""
    model = mixer(dtype, ngroups)
    hidden = torch.randn(STEPS, batch, model.d_model, device=DEVICE).to(dtype)
    start = tuple(torch.randn_like(s, dtype=torch.float32).to(s.dtype) * 0.5 for s in model.allocate_state(batch))
    kernel = decode(model, hidden, "0", monkeypatch, start)
    twin = decode(model, hidden, "1", monkeypatch, start)
    upcast = mixer(torch.float32, ngroups)
    upcast.load_state_dict(model.state_dict())
    oracle = decode(upcast, hidden.float(), "1", monkeypatch, tuple(s.float() for s in start))
    assert_within_noise(("out", "conv_state", "ssm_state"), (kernel[0], *kernel[1]), (twin[0], *twin[1]),
                        (oracle[0], *oracle[1]), dtype)


def test_kernel_step_clamps_dt_as_the_twin(monkeypatch):
    model = mixer(torch.float32, dt_limit=(0.01, 0.05))
    hidden = torch.randn(STEPS, 3, model.d_model, device=DEVICE)
    kernel, twin = decode(model, hidden, "0", monkeypatch), decode(model, hidden, "1", monkeypatch)
    for k, t in zip((kernel[0], *kernel[1]), (twin[0], *twin[1])):
        assert relative_error(k, t) < REL_TOL[torch.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 3, 17])
@pytest.mark.parametrize("ngroups", [1, 2])
def test_kernel_step_matches_mamba_ssm(monkeypatch, dtype, batch, ngroups):
    """Same outputs and SSM state as mamba-ssm's ``Mamba2.step`` from zero states; its conv state is the last W
    inputs oldest first, ours the same inputs in circular order (slot t % W)."""
    pytest.importorskip("mamba_ssm", reason="needs mamba-ssm built for this GPU")
    from mamba_ssm.modules.mamba2 import Mamba2

    ours = mixer(dtype, ngroups)
    theirs = Mamba2(ours.d_model, d_state=ours.d_state, headdim=ours.headdim, ngroups=ngroups, layer_idx=0,
                    device=DEVICE, dtype=dtype).eval()
    theirs.load_state_dict(ours.state_dict())
    hidden = torch.randn(STEPS, batch, ours.d_model, device=DEVICE).to(dtype)
    out, (conv_state, ssm_state) = decode(ours, hidden, "0", monkeypatch)
    their_conv, their_ssm = theirs.allocate_inference_cache(batch, STEPS)
    their_out = []
    with torch.no_grad():
        for h in hidden:
            their_out.append(theirs.step(h[:, None], their_conv, their_ssm)[0][:, 0])
    width = ours.d_conv
    linear = torch.roll(conv_state, shifts=-(STEPS % width), dims=-1)
    assert torch.equal(linear, their_conv)  # the same inputs, stored as they came
    assert relative_error(out, torch.stack(their_out)) < REL_TOL[dtype]
    assert relative_error(ssm_state, their_ssm) < REL_TOL[dtype]


def mamba1_mixer(dtype, monkeypatch, d_model=320):
    """Our Mamba-1 mixer at d_state 16; d_model 320: d_inner 640 and dt_rank 20 (not a power of two). Its step runs
    our launches at every batch size here (MAX_BATCH raised), so that they are checked beyond where they dispatch."""
    from kotomamba.model.mamba1 import Mamba1Mixer
    from kotomamba.ops import mamba1_decode_triton

    monkeypatch.setattr(mamba1_decode_triton, "MAX_BATCH", 64)
    torch.manual_seed(0)
    model = Mamba1Mixer(d_model, d_state=16, device=DEVICE, dtype=dtype).eval()
    model.reset_parameters()
    return model


def test_the_mamba1_kernels_are_dispatched_on_cuda(monkeypatch):
    """Else the Mamba-1 comparisons below would compare the twin with itself: both launches run, once a step."""
    from kotomamba.ops import mamba1_decode, mamba1_decode_triton

    monkeypatch.setenv(dispatch.FORCE_REFERENCE_ENV, "0")
    assert dispatch.use_kernels(torch.zeros(1, device=DEVICE), mamba1_decode._KERNEL)
    calls = []
    conv, scan = mamba1_decode_triton.conv, mamba1_decode_triton.scan
    monkeypatch.setattr(mamba1_decode_triton, "conv", lambda *a: calls.append("conv") or conv(*a))
    monkeypatch.setattr(mamba1_decode_triton, "scan", lambda *a: calls.append("scan") or scan(*a))
    model = mamba1_mixer(torch.bfloat16, monkeypatch)
    decode(model, torch.randn(STEPS, 2, model.d_model, device=DEVICE).to(torch.bfloat16), "0", monkeypatch)
    assert calls == ["conv", "scan"] * STEPS


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 3, 17, 64])
def test_mamba1_kernel_step_matches_the_twin(monkeypatch, dtype, batch):
    """From random states; judged as test_kernel_step_matches_the_twin (bf16: against the twin in float32 on the same
    values, within twice the bf16 twin's error plus REL_TOL)."""
    model = mamba1_mixer(dtype, monkeypatch)
    hidden = torch.randn(STEPS, batch, model.d_model, device=DEVICE).to(dtype)
    start = tuple(torch.randn_like(s, dtype=torch.float32).to(s.dtype) * 0.5 for s in model.allocate_state(batch))
    kernel = decode(model, hidden, "0", monkeypatch, start)
    twin = decode(model, hidden, "1", monkeypatch, start)
    upcast = mamba1_mixer(torch.float32, monkeypatch)
    upcast.load_state_dict(model.state_dict())
    oracle = decode(upcast, hidden.float(), "1", monkeypatch, tuple(s.float() for s in start))
    assert_within_noise(("out", "conv_state", "ssm_state"), (kernel[0], *kernel[1]), (twin[0], *twin[1]),
                        (oracle[0], *oracle[1]), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 3, 17])
def test_mamba1_kernel_step_matches_mamba_ssm(monkeypatch, dtype, batch):
    """Same outputs, SSM state and conv state (the same shift layout, holding the same in_proj outputs) as
    mamba-ssm's ``Mamba.step`` on the same weights, from zero states."""
    pytest.importorskip("mamba_ssm", reason="needs mamba-ssm built for this GPU")
    from mamba_ssm.modules.mamba_simple import Mamba

    ours = mamba1_mixer(dtype, monkeypatch)
    theirs = Mamba(ours.d_model, d_state=ours.d_state, layer_idx=0, device=DEVICE, dtype=dtype).eval()
    theirs.load_state_dict(ours.state_dict())
    hidden = torch.randn(STEPS, batch, ours.d_model, device=DEVICE).to(dtype)
    out, (conv_state, ssm_state) = decode(ours, hidden, "0", monkeypatch)
    their_conv, their_ssm = theirs.allocate_inference_cache(batch, STEPS)
    their_out = []
    with torch.no_grad():
        for h in hidden:
            their_out.append(theirs.step(h[:, None], their_conv, their_ssm)[0][:, 0])
    assert conv_state.dtype == their_conv.dtype and ssm_state.dtype == their_ssm.dtype
    assert torch.equal(conv_state, their_conv)  # the same inputs, stored as they came
    assert relative_error(out, torch.stack(their_out)) < REL_TOL[dtype]
    assert relative_error(ssm_state, their_ssm) < REL_TOL[dtype]
