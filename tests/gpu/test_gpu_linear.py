"""kotomamba/ops/linear.py on a GPU: under autocast the weight gradient of ``linear`` and
``channels_first_product`` is the float32 product of the bf16 operands, not that product rounded to bf16 (as
autograd's cast of ``F.linear``'s gradient is), and the input gradient is autograd's."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kotomamba.ops.linear import channels_first_product, linear
from relative import relative_error

pytestmark = pytest.mark.gpu

if torch.cuda.is_available() and "dtype" not in torch.ops.aten.mm.overloads():
    pytest.skip("this torch has no mm(..., out_dtype)", allow_module_level=True)


def gradients(fn, x, weight, cotangent):
    x, weight = x.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = fn(x, weight)
    out.backward(cotangent)
    return x.grad, weight.grad


@pytest.mark.parametrize("channels_first", [False, True])
def test_the_weight_gradient_is_written_in_float32_by_the_product(channels_first):
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(8192, 1024, device="cuda", generator=gen)
    weight = torch.randn(2048, 1024, device="cuda", generator=gen) / 32
    if channels_first:
        ours, autograds = lambda x, w: channels_first_product(w, x), lambda x, w: w @ x.t()
        cotangent = torch.randn(2048, 8192, device="cuda", generator=gen).bfloat16()
        exact = cotangent.double() @ x.bfloat16().double()
    else:
        ours, autograds = lambda x, w: linear(x, w), F.linear
        cotangent = torch.randn(8192, 2048, device="cuda", generator=gen).bfloat16()
        exact = cotangent.double().t() @ x.bfloat16().double()
    (dx, dweight), (autograd_dx, autograd_dweight) = (gradients(f, x, weight, cotangent) for f in (ours, autograds))
    assert dweight.dtype == autograd_dweight.dtype == torch.float32
    ours_error, autograds_error = relative_error(dweight, exact), relative_error(autograd_dweight, exact)
    assert ours_error < 1e-5, ours_error
    assert autograds_error > 10 * ours_error, (autograds_error, ours_error)
    assert relative_error(dx, autograd_dx) < 1e-5
