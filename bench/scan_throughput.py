"""Mamba-1's selective scan alone, forward+backward: our Triton kernels (kotomamba/ops/selective_scan_triton.py)
against mamba-ssm's CUDA ``selective_scan_fn``, at the shapes of the Mamba-1 130m-2.8b presets (micro-batch
16 / 16 / 8 / 4 at sequence 2048, d_state 16), called as Mamba-1's mixer calls it: bf16 u, delta (before its
bias), z, B and C; float32 A, D and delta bias; softplus.

Each (implementation, round) runs in a fresh process of its own (bench/isolated.py). Per process: the median
of ``triton.testing.do_bench`` (CUDA events) and the device's time in kernels (profiled). ``floor`` is the bytes
forward+backward must move at ``--bandwidth`` (forward: u, delta, z read, the output written; backward: u,
delta, z and the output's gradient read, du, d delta and dz written).

    python bench/scan_throughput.py --rounds 3 --json scan.json

With ``--registers`` it runs nothing: it compiles the ``scan:ours`` blockings' kernels for sm_90a on the host (no
GPU needed) and prints what ptxas gives each launch (bench/ptxas_report.py).
"""
from __future__ import annotations

import sys

from isolated import op_main

# (batch, d_inner) of the presets at sequence 2048.
SHAPES = {"130m": (16, 1536), "370m": (16, 2048), "1.4b": (8, 4096), "2.8b": (4, 5120)}
IMPLS = ("scan:mamba_ssm", "scan:ours")
IMPLS_HELP = ("comma-separated; ours-last: ours on activations with channels contiguous; either may carry its forward "
              "and backward blockings (channels per program, positions per block of kept states, warps, positions "
              "loaded and stored together[, most registers a thread may take]), e.g. scan:ours=16.32.1.8-8.32.1.16.168; "
              "a backward led by g walks with the Gluon kernel (8 channels, 1 warp), e.g. scan:ours=-g8.16.1.8")
SEQ, DSTATE = 2048, 16


def blockings(variant: str) -> dict:
    """``FWD-BWD`` (e.g. ``16.32.1.8-8.32.1.16``; either may be empty: an empty ``BWD`` is the dispatched backward,
    an empty ``FWD`` the forward on the backward's blocks; ``BWD`` led by ``g`` walks back with the Gluon kernel) as
    selective_scan_triton's config arguments."""
    fwd, _, bwd = variant.partition("-")
    gluon = bwd.startswith("g")
    bwd = bwd.removeprefix("g")
    return {"fwd_config": tuple(int(v) for v in fwd.split(".")) if fwd else None,
            "bwd_config": tuple(int(v) for v in bwd.split(".")) if bwd else None,
            "bwd_kernel": ("gluon" if gluon else "triton") if bwd else None}


def registers(variants: list[str]) -> None:
    """Prints, per variant and launch of one forward+backward (batch 1, 64 channels, bf16), what ptxas gives the
    kernel for sm_90a (bench/ptxas_report.py; no GPU needed)."""
    import torch
    from ptxas_report import header, print_rows

    from kotomamba.ops.selective_scan_triton import selective_scan_triton

    g = torch.Generator().manual_seed(0)
    t = [torch.randn(1, 64, SEQ, generator=g).bfloat16(), torch.randn(1, 64, SEQ, generator=g).bfloat16(),
         -torch.rand(64, DSTATE, generator=g), torch.randn(1, DSTATE, SEQ, generator=g).bfloat16(),
         torch.randn(1, DSTATE, SEQ, generator=g).bfloat16(), torch.ones(64), torch.randn(1, 64, SEQ).bfloat16(),
         torch.zeros(64)]
    t = [v.requires_grad_(True) for v in t]

    def forward_backward(variant):
        y = selective_scan_triton(*t, delta_softplus=True, **blockings(variant))
        torch.autograd.grad(y, t, torch.ones_like(y))

    print(header())
    for variant in variants:
        print_rows(variant or "default", lambda: forward_backward(variant))


def runner(impl: str, shape: str):
    """One forward+backward of ``impl`` as a closure, and the bytes it must move."""
    import torch

    batch, dim = SHAPES[shape]
    _, name = impl.split(":")
    name, _, config = name.partition("=")
    g = torch.Generator(device="cuda").manual_seed(0)
    bf16 = dict(device="cuda", dtype=torch.bfloat16)

    def randn(*shape, **kind):
        return torch.randn(*shape, generator=g, **(kind or bf16))

    def activations():
        """[b, d_inner, L] with positions contiguous, or (``ours-last``) channels contiguous."""
        if name == "ours-last":
            return randn(batch, SEQ, dim).transpose(1, 2)
        return randn(batch, dim, SEQ)

    leaves = [activations(), activations() * 0.5 - 4.0,
              -torch.arange(1, DSTATE + 1, device="cuda", dtype=torch.float32).repeat(dim, 1),
              randn(batch, DSTATE, SEQ), randn(batch, DSTATE, SEQ),
              torch.ones(dim, device="cuda"), activations(), randn(dim, device="cuda") * 0.1]
    for leaf in leaves:
        leaf.requires_grad_(True)
    cotangent = activations()
    if name.startswith("ours"):
        from kotomamba.ops.selective_scan_triton import selective_scan_triton

        configs = blockings(config)

        def fn(*args):
            return selective_scan_triton(*args, delta_softplus=True, **configs)
    else:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        def fn(*args):
            return selective_scan_fn(*args, delta_softplus=True)

    def forward_backward():
        torch.autograd.grad(fn(*leaves), leaves, cotangent)

    return forward_backward, batch * dim * SEQ * 2 * (4 + 7)


if __name__ == "__main__":
    if "--registers" in sys.argv:
        from ptxas_report import command_line

        registers(command_line(SHAPES, IMPLS, IMPLS_HELP, lambda parser: None, "scan:ours")[1])
    else:
        op_main(__doc__, SHAPES, IMPLS, IMPLS_HELP, lambda args: [{"shape": shape} for shape in args.shapes.split(",")],
                lambda impl, case, args: runner(impl, case["shape"]))
