"""Run Triton kernels on CPU under Triton's interpreter, in a fresh process: ``TRITON_INTERPRET=1`` is read
when a kernel is defined, so it must be set before the kernel's module is imported."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch


# Run before a script with ``tf32``: the interpreter multiplies float32 dot operands exactly, where an
# NVIDIA GPU's tensor cores take them as TF32 (tl.dot's default input precision): 10 mantissa bits. Here
# the low 13 bits are dropped (rounding them instead gives errors of the same order); "tf32x3" and "ieee"
# dots stay exact. Fails loudly if this Triton's interpreter no longer has the dot it wraps.
TF32_DOTS = """
import numpy as np
from triton._C.libtriton import ir
from triton.runtime import interpreter

_exact_dot = interpreter.InterpreterBuilder.create_dot


def _tf32_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
    if input_precision == ir.INPUT_PRECISION.TF32 and a.data.dtype == b.data.dtype == np.float32:
        a, b = (interpreter.TensorHandle((v.data.view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32), v.dtype)
                for v in (a, b))
    return _exact_dot(self, a, b, d, input_precision, max_num_imprecise_acc)


interpreter.InterpreterBuilder.create_dot = _tf32_dot
"""

# Run before a script with ``bf16``: bfloat16 as a GPU treats it. The interpreter casts float32 to bfloat16 by
# dropping the low 16 bits, where a GPU (and torch) rounds to the nearest even (over a recurrence whose state is
# stored in bf16 every step, truncation drifts one way), and its dot multiplies bf16 operands' bit patterns
# (held as uint16) instead of their values. Fails loudly if this Triton's interpreter no longer has what it wraps.
BF16 = """
import numpy as np
import triton.language as tl
from triton.runtime import interpreter

_truncating_cast = interpreter.InterpreterBuilder.cast_impl
_bits_dot = interpreter.InterpreterBuilder.create_dot


def _rounding_cast(self, src, dst_type):
    if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
        bits = np.ascontiguousarray(src.data, dtype=np.float32).view(np.uint32)
        rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
        return interpreter.TensorHandle(rounded.astype(np.uint16), dst_type.scalar)
    return _truncating_cast(self, src, dst_type)


def _valued_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
    a, b = (interpreter.TensorHandle((v.data.astype(np.uint32) << np.uint32(16)).view(np.float32), tl.float32)
            if v.dtype.scalar == tl.bfloat16 else v for v in (a, b))
    return _bits_dot(self, a, b, d, input_precision, max_num_imprecise_acc)


interpreter.InterpreterBuilder.cast_impl = _rounding_cast
interpreter.InterpreterBuilder.create_dot = _valued_dot
"""


# Run before every script: Triton's interpreter runs libdevice's functions as their empty stubs, so the one our
# kernels call (kotomamba/ops/step_triton.py's fast log2, lg2.approx on a GPU) is given numpy's exact log2.
LIBDEVICE = """
import triton.language as tl
from triton.language.extra import libdevice

libdevice.fast_log2f = lambda x: tl.log2(x)
"""


def run_interpreted(script: str, cases: dict, folder: Path, tf32: bool = False, bf16: bool = False) -> dict:
    """Save ``cases`` under ``folder``, run ``script`` (Python code that reads ``sys.argv[1]``, a
    ``torch.save`` of the cases, and writes its results to ``sys.argv[2]``) with the interpreter on,
    and return what it wrote. ``tf32``: float32 dot operands as a GPU's TF32 takes them (``TF32_DOTS``);
    ``bf16``: bfloat16 casts and dots as a GPU does them (``BF16``)."""
    torch.save(cases, folder / "cases.pt")
    script = TF32_DOTS + script if tf32 else script
    script = BF16 + script if bf16 else script
    script = LIBDEVICE + script
    done = subprocess.run([sys.executable, "-c", script, str(folder / "cases.pt"), str(folder / "out.pt")],
                          env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(folder / "out.pt")


def assert_relative(got: dict, expected: dict, tolerance: float) -> None:
    """Every tensor of ``got`` has ``expected``'s shape, is finite, and is within ``tolerance`` of it
    in relative error ||got - expected|| / ||expected|| (in float64)."""
    assert set(got) == set(expected)
    for key, reference in expected.items():
        value = got[key]
        assert value.shape == reference.shape and torch.isfinite(value).all(), key
        error = ((value.double() - reference.double()).norm() / reference.double().norm()).item()
        assert error < tolerance, f"{key}: relative error {error:.2e}"


def documents(batch: int, seqlen: int, cuts: list[list[int]]) -> torch.Tensor:
    """seq_idx [batch, seqlen] int64: per row, a new document starts at each position in ``cuts[row]``."""
    seq_idx = torch.zeros(batch, seqlen, dtype=torch.long)
    for row, starts in enumerate(cuts):
        for start in starts:
            seq_idx[row, start:] += 1
    return seq_idx
