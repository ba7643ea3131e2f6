"""Gradient clipping by the global norm, as the trainer does it, against torch's ``clip_grad_norm_``
(the reference loop's clipping) on the real model's gradients."""
import copy

import pytest
import torch

from kotomamba.model.config import preset
from kotomamba.model.lm import MambaLM
from kotomamba.train.step import clip_, global_grad_norm, scale_grads_, unscale_and_clip_


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
    clip_(list(ours.parameters()), max_norm, norm)
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
    unscale_and_clip_(list(ours.parameters()), 1024.0, max_norm, norm)
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0, msg=name)
