"""The two RMSNorms alone, forward+backward: our Triton kernels (kotomamba/ops/norm_triton.py) against
mamba-ssm's, at the shapes of the 130m-2.7b presets (micro-batch 16 / 8 / 4 at sequence 2048): the blocks'
residual add + norm (bf16 input, float32 residual, prenorm, d_model channels) and Mamba-2's gated norm
(bf16, d_inner channels, one group).

Each (implementation, round) runs in a fresh process of its own (bench/isolated.py). Per process: the median
of ``triton.testing.do_bench`` (CUDA events) and the device's time in kernels (profiled). ``floor`` is the
bytes forward+backward must move at ``--bandwidth``.

    python bench/norm_throughput.py --rounds 3 --json norm.json
"""
from __future__ import annotations

from isolated import op_main

# (rows, d_model, d_inner) of the presets at sequence 2048.
SHAPES = {"130m": (16 * 2048, 768, 1536), "1.3b": (8 * 2048, 2048, 4096), "2.7b": (4 * 2048, 2560, 5120)}
IMPLS = ("add:mamba_ssm", "add:ours", "gated:mamba_ssm", "gated:ours")


def runner(impl: str, shape: str):
    """One forward+backward of ``impl`` as a closure, and the bytes it must move."""
    import torch

    rows, d_model, d_inner = SHAPES[shape]
    kind, name = impl.split(":")
    name, _, per_sm = name.partition("=")
    if per_sm:
        from kotomamba.ops import norm_triton

        norm_triton.PROGRAMS_PER_SM = int(per_sm)
    bf16 = torch.bfloat16
    if kind == "add":
        leaves = [torch.randn(rows, d_model, device="cuda", dtype=bf16, requires_grad=True),
                  torch.ones(d_model, device="cuda", requires_grad=True),
                  torch.randn(rows, d_model, device="cuda", requires_grad=True)]
        cotangents = [torch.randn(rows, d_model, device="cuda", dtype=bf16), torch.randn(rows, d_model, device="cuda")]
        if name == "ours":
            from kotomamba.ops.norm_triton import add_rms_norm_triton as fn
        else:
            from mamba_ssm.ops.triton.layer_norm import rms_norm_fn

            def fn(x, weight, residual, **options):
                return rms_norm_fn(x, weight, None, residual=residual, **options)
        options = dict(eps=1e-5, prenorm=True, residual_in_fp32=True)
        # forward: x, residual read; y, residual out written; backward: dy, d(residual out), residual out
        # read; dx, dresidual written.
        floor_bytes = rows * d_model * (2 + 4 + 2 + 4 + 2 + 4 + 4 + 2 + 4)
    else:
        leaves = [torch.randn(rows, d_inner, device="cuda", dtype=bf16, requires_grad=True),
                  torch.randn(rows, d_inner, device="cuda", dtype=bf16, requires_grad=True),
                  torch.ones(d_inner, device="cuda", requires_grad=True)]
        cotangents = [torch.randn(rows, d_inner, device="cuda", dtype=bf16)]
        if name == "ours":
            from kotomamba.ops.norm_triton import gated_rms_norm_triton as fn
        else:
            from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn

            def fn(x, z, weight, **options):
                return rmsnorm_fn(x, weight, None, z=z, norm_before_gate=False, **options)
        options = dict(eps=1e-5, group_size=d_inner)
        # forward: x, z read, y written; backward: x, z, dy read, dx, dz written.
        floor_bytes = rows * d_inner * 2 * 8

    def forward_backward():
        out = fn(*leaves, **options)
        outs = out if isinstance(out, tuple) else (out,)
        torch.autograd.grad(outs, leaves, cotangents)

    return forward_backward, floor_bytes


if __name__ == "__main__":
    op_main(__doc__, SHAPES, IMPLS, "comma-separated; ours may carry the backward's programs per multiprocessor, "
            "e.g. add:ours=16", lambda args: [{"shape": shape} for shape in args.shapes.split(",")],
            lambda impl, case, args: runner(impl, case["shape"]))
