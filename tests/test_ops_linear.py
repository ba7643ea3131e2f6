"""kotomamba/ops/linear.py on the CPU: under autocast the products give autograd's own outputs and gradients
(there the weight gradient is the bf16 product cast, as autograd casts it: ``mm(..., out_dtype)`` is CUDA only;
tests/gpu/test_gpu_linear.py checks the float32 write), and without autocast they are the plain product."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kotomamba.ops.linear import channels_first_product, linear


def leaves(bias: bool):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 24, 64, generator=gen)
    weight = torch.randn(96, 64, generator=gen) / 8
    b = torch.randn(96, generator=gen) if bias else None
    return x, weight, b


def grads(fn, x, weight, b, autocast: bool):
    x, weight = x.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    b = None if b is None else b.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = fn(x, weight, b)
    cotangent = torch.linspace(-1, 1, out.numel()).view(out.shape)
    (out.float() * cotangent).sum().backward()
    return out, x.grad, weight.grad, None if b is None else b.grad


def channels_first(x, weight, b):
    return channels_first_product(weight, x.reshape(-1, x.shape[-1]), b)


def channels_first_autograd(x, weight, b):
    """Mamba-1's in_proj as it was written before kotomamba/ops/linear.py: the bias added in the product's dtype."""
    out = weight @ x.reshape(-1, x.shape[-1]).t()
    return out if b is None else out + b.to(out.dtype)[:, None]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("ours, autograds", [(linear, F.linear), (channels_first, channels_first_autograd)],
                         ids=["linear", "channels_first"])
def test_under_autocast_the_products_give_autograds_outputs_and_gradients(ours, autograds, bias):
    x, weight, b = leaves(bias)
    mine, theirs = grads(ours, x, weight, b, True), grads(autograds, x, weight, b, True)
    assert mine[0].dtype == theirs[0].dtype
    for got, want, name in zip(mine, theirs, ["out", "dx", "dweight", "dbias"]):
        if want is None:
            continue
        assert got.dtype == want.dtype, name
        torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2, msg=name)
    # The weight's gradient is the rounded bf16 product cast up, as autograd's: exactly equal.
    assert torch.equal(mine[2], theirs[2])


def test_without_autocast_the_products_are_the_plain_products():
    x, weight, b = leaves(True)
    for ours, autograds in [(linear, F.linear), (channels_first, channels_first_autograd)]:
        for got, want in zip(grads(ours, x, weight, b, False), grads(autograds, x, weight, b, False)):
            assert torch.equal(got, want)
