"""Gradient clipping by the global norm, as the trainer does it, against torch's ``clip_grad_norm_``
(the reference loop's clipping) on the real model's gradients: multiplied into the gradients, or handed to a
fused AdamW as the ``grad_scale`` it divides them by."""
import copy

import pytest
import torch

from kotomamba.model.config import preset
from kotomamba.model.lm import MambaLM
from kotomamba.train.step import global_grad_norm, grad_factor, scale_for_step, scale_grads_, takes_grad_scale


def model_with_gradients(layer: str) -> MambaLM:
    torch.manual_seed(0)
    model = MambaLM(preset("tiny", ssm_cfg={"layer": layer}))
    tokens = torch.randint(0, model.config.vocab_size, (2, 33))
    model(tokens[:, :-1], labels=tokens[:, 1:]).backward()
    return model


@pytest.mark.parametrize("layer", ["Mamba1", "Mamba2"])
@pytest.mark.parametrize("max_norm_of_norm", [0.25, 4.0])
def test_clip_matches_torch_clip_grad_norm(layer, max_norm_of_norm):
    ours = model_with_gradients(layer)
    theirs = copy.deepcopy(ours)
    for p, q in zip(ours.parameters(), theirs.parameters()):
        q.grad = p.grad.clone()  # deepcopy leaves gradients behind
    norm = global_grad_norm(list(ours.parameters()))
    max_norm = float(norm) * max_norm_of_norm
    expected_norm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), max_norm)
    torch.testing.assert_close(norm, expected_norm.float())
    scale_for_step(torch.optim.SGD(ours.parameters()), list(ours.parameters()), grad_factor(1.0, max_norm, norm))
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0, msg=name)
    clipped = float(global_grad_norm(list(ours.parameters())))
    assert clipped == pytest.approx(min(max_norm, float(norm)), rel=1e-5)


def test_scale_grads_multiplies_every_gradient_and_skips_parameters_without_one():
    model = model_with_gradients("Mamba2")
    params = list(model.parameters())
    params[0].grad = None
    before = [p.grad.clone() if p.grad is not None else None for p in params]
    scale_grads_(params, torch.tensor(0.5))
    scale_grads_(params, 3.0)
    for p, old in zip(params, before):
        assert (p.grad is None) if old is None else torch.equal(p.grad, old * 0.5 * 3.0)


@pytest.mark.parametrize("max_norm_of_norm", [0.25, 4.0, None])
def test_unscale_and_clip_matches_unscaling_then_torch_clip_grad_norm(max_norm_of_norm):
    """The fp16 path: gradients of a loss scaled by 1024, unscaled and clipped in one multiply."""
    ours = model_with_gradients("Mamba2")
    theirs = copy.deepcopy(ours)
    for p, q in zip(ours.parameters(), theirs.parameters()):
        q.grad = p.grad.clone()
        p.grad.mul_(1024.0)
    norm = global_grad_norm(list(ours.parameters())) / 1024.0
    max_norm = None if max_norm_of_norm is None else float(norm) * max_norm_of_norm
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), max_norm)
    params = list(ours.parameters())
    scale_for_step(torch.optim.SGD(params), params, grad_factor(1024.0, max_norm, norm))
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0, msg=name)


def adamw(model: MambaLM, fused: bool) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, fused=fused)


@pytest.mark.parametrize("loss_scale", [1.0, 1024.0])
@pytest.mark.parametrize("max_norm_of_norm", [0.25, 4.0, None])
def test_a_fused_adamw_steps_as_on_gradients_scaled_first(loss_scale, max_norm_of_norm):
    """A fused AdamW is handed the factor as its ``grad_scale`` and leaves the gradients as they are; its step
    equals the unfused AdamW's on gradients multiplied first (torch's CPU fused AdamW: the CUDA one's
    arithmetic)."""
    ours = model_with_gradients("Mamba2")
    theirs = copy.deepcopy(ours)
    for p, q in zip(ours.parameters(), theirs.parameters()):
        p.grad.mul_(loss_scale)
        q.grad = p.grad.clone()
    norm = global_grad_norm(list(ours.parameters())) / loss_scale
    max_norm = None if max_norm_of_norm is None else float(norm) * max_norm_of_norm
    fused, plain = adamw(ours, fused=True), adamw(theirs, fused=False)
    assert takes_grad_scale(fused) and not takes_grad_scale(plain)
    grads = [p.grad.clone() for p in ours.parameters()]
    for optimizer, model in ((fused, ours), (plain, theirs)):
        scale_for_step(optimizer, list(model.parameters()), grad_factor(loss_scale, max_norm, norm))
    assert all(torch.equal(p.grad, g) for p, g in zip(ours.parameters(), grads)), "the fused path scaled the gradients"
    assert (fused.grad_scale is None) == (loss_scale == 1.0 and max_norm is None)
    fused.step()
    plain.step()
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=name)
