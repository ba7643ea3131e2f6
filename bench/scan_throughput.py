"""Mamba-1's selective scan alone, forward+backward: our Triton kernels (kotomamba/ops/selective_scan_triton.py)
against mamba-ssm's CUDA ``selective_scan_fn``, at the shapes of the Mamba-1 130m-2.8b presets (micro-batch
16 / 16 / 8 / 4 at sequence 2048, d_state 16), called as Mamba-1's mixer calls it: bf16 u, delta (before its
bias), z, B and C; float32 A, D and delta bias; softplus.

Each (implementation, round) runs in a fresh process of its own (bench/isolated.py). Per process: the median
of ``triton.testing.do_bench`` (CUDA events) and the device's time in kernels (profiled). ``floor`` is the bytes
forward+backward must move at ``--bandwidth`` (forward: u, delta, z read, the output written; backward: u,
delta, z and the output's gradient read, du, d delta and dz written).

    python bench/scan_throughput.py --rounds 3 --json scan.json
"""
from __future__ import annotations

from isolated import op_main

# (batch, d_inner) of the presets at sequence 2048.
SHAPES = {"130m": (16, 1536), "370m": (16, 2048), "1.4b": (8, 4096), "2.8b": (4, 5120)}
IMPLS = ("scan:mamba_ssm", "scan:ours")
SEQ, DSTATE = 2048, 16


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

    leaves = [randn(batch, dim, SEQ), randn(batch, dim, SEQ) * 0.5 - 4.0,
              -torch.arange(1, DSTATE + 1, device="cuda", dtype=torch.float32).repeat(dim, 1),
              randn(batch, DSTATE, SEQ), randn(batch, DSTATE, SEQ),
              torch.ones(dim, device="cuda"), randn(batch, dim, SEQ), randn(dim, device="cuda") * 0.1]
    for leaf in leaves:
        leaf.requires_grad_(True)
    cotangent = randn(batch, dim, SEQ)
    if name == "ours":
        from kotomamba.ops.selective_scan_triton import SCAN_BWD_CONFIG, SCAN_FWD_CONFIG, selective_scan_triton

        fwd, _, bwd = config.partition("-")
        configs = {"fwd_config": tuple(int(v) for v in fwd.split(".")) if fwd else SCAN_FWD_CONFIG,
                   "bwd_config": tuple(int(v) for v in bwd.split(".")) if bwd else SCAN_BWD_CONFIG}

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
    op_main(__doc__, SHAPES, IMPLS, "comma-separated; ours may carry its forward and backward blockings (channels "
            "per program, positions per block, warps), e.g. scan:ours=4.64.4-4.64.4",
            lambda args: [{"shape": shape} for shape in args.shapes.split(",")],
            lambda impl, case, args: runner(impl, case["shape"]))
