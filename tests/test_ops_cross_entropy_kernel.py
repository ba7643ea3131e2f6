"""The Triton cross-entropy kernel against its PyTorch twin, on CPU under Triton's interpreter
(``TRITON_INTERPRET=1`` runs the kernel's own code on CPU tensors, program by program). Triton reads
that variable when it defines a kernel, its standard library's included, so the kernel runs in a fresh
process with it set. The compiled kernel on a GPU: tests/gpu/test_gpu_model.py."""
from __future__ import annotations

import pytest
import torch

from interpreted_kernels import run_interpreted

from kotomamba.ops.cross_entropy import IGNORE_INDEX, cross_entropy_rows_ref_

pytest.importorskip("triton", reason="the kernel's CPU check needs the triton package (the test extra has it)")

RUN_KERNEL = """
import sys, torch
from kotomamba.ops.cross_entropy_triton import cross_entropy_rows_
results = {}
for name, case in torch.load(sys.argv[1]).items():
    logits = case["logits"].clone()
    try:
        loss = cross_entropy_rows_(logits, case["labels"], case["row_scale"], -100, case["write_grad"], case["block"])
        results[name] = {"loss": loss, "logits": logits}
    except ValueError as error:
        results[name] = {"error": str(error)}
torch.save(results, sys.argv[2])
"""


def case(n_rows: int, n_cols: int, dtype: torch.dtype, write_grad: bool = True, block: int | None = None) -> dict:
    generator = torch.Generator().manual_seed(n_rows * 1000 + n_cols)
    logits = (torch.randn(n_rows, n_cols, generator=generator) * 4).to(dtype)
    labels = torch.randint(0, n_cols, (n_rows,), generator=generator)
    labels[0], labels[1], labels[2::5] = n_cols - 1, 0, IGNORE_INDEX
    row_scale = torch.rand(n_rows, generator=generator) * (labels != IGNORE_INDEX)
    return {"logits": logits, "labels": labels, "row_scale": row_scale, "write_grad": write_grad, "block": block}


SHAPES = [(300, 64), (37, None), (256, 256)]  # several blocks with a partial last one; one block; exact fit
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def all_cases() -> dict:
    cases = {f"{d}-{n_cols}-{block}": case(23, n_cols, dtype, block=block)
             for d, dtype in DTYPES.items() for n_cols, block in SHAPES}
    cases["no-grad"] = case(9, 100, torch.float32, write_grad=False, block=32)
    cases["past-vocabulary"] = case(9, 100, torch.float32, write_grad=False, block=32)
    cases["past-vocabulary"]["labels"][3] = 100
    strided = case(4, 10, torch.float32)
    strided["logits"] = strided["logits"].t().contiguous().t()
    cases["strided"] = strided
    return cases


@pytest.fixture(scope="module")
def kernel_results(tmp_path_factory):
    """Every case through the interpreted kernel, in one fresh process."""
    return run_interpreted(RUN_KERNEL, all_cases(), tmp_path_factory.mktemp("cross_entropy_kernel"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_cols, block", SHAPES)
def test_kernel_matches_reference(kernel_results, dtype, n_cols, block):
    name = f"{dtype}-{n_cols}-{block}"
    inputs = all_cases()[name]
    expected = inputs["logits"].clone()
    loss_ref = cross_entropy_rows_ref_(expected, inputs["labels"], inputs["row_scale"], IGNORE_INDEX, True)
    loss, logits = kernel_results[name]["loss"], kernel_results[name]["logits"]
    assert loss.dtype == torch.float32 and loss.shape == (23,)
    torch.testing.assert_close(loss, loss_ref, atol=1e-5, rtol=1e-5)
    assert (loss[2::5] == 0).all() and (logits[2::5] == 0).all()  # ignored rows: no loss, no gradient
    tol = dict(atol=1e-6, rtol=1e-5) if dtype == "fp32" else dict(atol=1e-3, rtol=1.6e-2)
    torch.testing.assert_close(logits, expected, **tol)
    # The gradient of sum(row_scale * loss) sums to zero over each row (softmax sums to one).
    torch.testing.assert_close(logits.float().sum(dim=1), torch.zeros(23), atol=1e-5 if dtype == "fp32" else 1e-2,
                               rtol=0)


def test_kernel_without_gradient_leaves_the_logits(kernel_results):
    inputs = all_cases()["no-grad"]
    out = kernel_results["no-grad"]
    assert torch.equal(out["logits"], inputs["logits"])
    expected = torch.nn.functional.cross_entropy(inputs["logits"], inputs["labels"], reduction="none")
    torch.testing.assert_close(out["loss"], expected)


def test_kernel_gives_nan_for_a_label_past_the_vocabulary(kernel_results):
    loss = kernel_results["past-vocabulary"]["loss"]
    assert loss[3].isnan() and not loss[:3].isnan().any() and not loss[4:].isnan().any()


def test_kernel_rejects_strided_columns(kernel_results):
    assert "contiguous columns" in kernel_results["strided"]["error"]
