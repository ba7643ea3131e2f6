"""The Mamba-2 SSD scan alone: our Triton kernels (kotomamba/ops/ssd_triton.py) against mamba-ssm's
``mamba_chunk_scan_combined``, forward+backward, at the shapes of the 130m-2.7b presets.

bf16 x, dt, B, C; A, D, dt_bias float32; dt through bias and softplus as the model calls it; one group,
head dim 64, d_state 128, mamba-ssm's chunk 256; each shape also with documents (``seq_idx``, a reset
every ~``--doc-len`` tokens). ``--impls``: ``ssd:mamba_ssm`` (the reference) and ``ssd:ours=VARIANT``,
our kernels with a blocking (``--help``). Each (implementation, round) runs in a fresh process of its own
(bench/isolated.py): the median of ``triton.testing.do_bench`` (CUDA events, host launches included)
and the device's time in kernels (profiled: what a CUDA-graphed step pays); the table gives the median
over rounds, the range, and the ratio against mamba-ssm's. ``floor`` is the bytes the op must move
(inputs read once, outputs written once; backward: also dy read, dx, ddt, dB, dC written) at
``--bandwidth``. Outputs are compared in tests/gpu/test_gpu_ssd.py, not here (that needs both in one
process).

    python bench/ssd_throughput.py --rounds 3 --json ssd.json

With ``--registers`` it runs nothing: it compiles the ``ours`` implementations' kernels for sm_90a on the
host (no GPU needed) and prints each launch's registers per thread, spills, shared memory and programs
per multiprocessor, as ptxas reports them.
"""
from __future__ import annotations

import sys

import torch

from documents import random_seq_idx
from isolated import op_main

SHAPES = {"130m": (16, 24), "1.3b": (8, 64), "2.7b": (4, 80)}
HEADDIM, DSTATE = 64, 128
IMPLS = ("ssd:mamba_ssm", "ssd:ours=32.64.4-s64.64.32.8", "ssd:ours=mixer")
IMPLS_HELP = (
    "comma-separated; ssd:ours=VARIANT is our kernels with a blocking: forward then backward, each (positions per "
    "block, head-dim columns per program, warps[, register cap]), e.g. 32.64.4-16.32.4; a backward with the prefix "
    "s is the split backward, its fields those of kotomamba.ops.ssd_triton.SPLIT_BWD_DEFAULT (positions per block; "
    "head-dim columns, state columns at a time and warps of the parallel launch; columns and warps of the "
    "sequential one, of the rerun; 1 for float32 state gradients; 1 to keep the forward's states instead of the "
    "rerun; 1 to sum dB and dC from per-head shares instead of atomic adds; the parallel launch in one pass 0, in "
    "two parts 1, in two launches 2, in two parts as neighbouring programs 3, head-looping 4; heads per program of "
    "the second of two launches, 0 for one with its own loop over the state (head-looping: 0 for all of a group); "
    "a register cap of the parallel launch(es), 0 for none; head-looping: heads per program of the dx launch and "
    "warps of the dB / dC launch), missing ones from it, e.g. ssd:ours=32.64.4-s64.64.32.8.64.4.64.4.0.1.0.1.0.128; "
    "ssd:ours=mixer is the blocking the Mamba-2 mixer runs (kotomamba.ops.split_conv_scan)")


def make_inputs(batch, heads, seqlen, headdim, dstate, doc_len, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    bf16 = torch.bfloat16
    t = {"x": torch.randn(batch, seqlen, heads, headdim, device="cuda", generator=g).to(bf16),
         "dt": (torch.randn(batch, seqlen, heads, device="cuda", generator=g) * 0.5 - 2).to(bf16),
         "A": -torch.rand(heads, device="cuda", generator=g) * 15 - 1,
         "B": torch.randn(batch, seqlen, 1, dstate, device="cuda", generator=g).to(bf16),
         "C": torch.randn(batch, seqlen, 1, dstate, device="cuda", generator=g).to(bf16),
         "D": torch.randn(heads, device="cuda", generator=g),
         "dt_bias": torch.randn(heads, device="cuda", generator=g) * 0.5}
    seq_idx = random_seq_idx((batch, seqlen), doc_len, g, "cuda") if doc_len else None
    return t, seq_idx, torch.randn(batch, seqlen, heads, headdim, device="cuda", generator=g).to(bf16)


def variant_configs(variant: str) -> dict:
    """'32.64.4-s64.64.32.8' (see --variants), or 'mixer' (the mixer's blocking) -> the blocking arguments
    of ``ssd_chunk_scan_triton``."""
    if variant == "mixer":
        from kotomamba.ops.split_conv_scan import SSD_FWD_CONFIG, SSD_SPLIT_CONFIG

        return {"fwd_config": SSD_FWD_CONFIG, "split_bwd_config": SSD_SPLIT_CONFIG}
    fwd, bwd = variant.split("-")
    configs = {"fwd_config": tuple(int(v) for v in fwd.split("."))}
    # A backward half that starts with "s" picks the split backward.
    key = "split_bwd_config" if bwd.startswith("s") else "bwd_config"
    configs[key] = tuple(int(v) for v in bwd.removeprefix("s").split("."))
    return configs


def registers(shape: str, seq: int, doc_len: int, variants: list[str], headdim: int = HEADDIM,
              dstate: int = DSTATE) -> None:
    """Prints, per variant and launch of one forward+backward (the shape's heads, batch 1, bf16), without and
    with documents (as the timed cases), what ptxas gives the kernel for sm_90a (bench/ptxas_report.py; no
    GPU needed)."""
    from ptxas_report import header, print_rows

    from kotomamba.ops.ssd_triton import ssd_chunk_scan_triton

    batch, heads = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    t = {"x": torch.randn(1, seq, heads, headdim, generator=g), "dt": torch.randn(1, seq, heads, generator=g),
         "A": -torch.rand(heads, generator=g), "B": torch.randn(1, seq, 1, dstate, generator=g),
         "C": torch.randn(1, seq, 1, dstate, generator=g), "D": torch.randn(heads, generator=g)}
    t = {k: (v.bfloat16() if v.dim() > 1 else v).requires_grad_(True) for k, v in t.items()}

    seq_idx = random_seq_idx((1, seq), doc_len, g, "cpu")

    def forward_backward(configs, documents):
        y = ssd_chunk_scan_triton(**t, dt_softplus=True, seq_idx=seq_idx if documents else None, **configs)
        torch.autograd.grad(y, list(t.values()), torch.ones_like(y))

    print(header())
    for variant in variants:
        for documents in (False, True):
            print_rows((variant or "default") + (" documents" if documents else ""),
                       lambda: forward_backward(variant_configs(variant) if variant else {}, documents))


def runner(impl: str, case: dict, args):
    """One forward+backward of ``impl`` at ``case`` as a closure, and the bytes it must move."""
    batch, heads = SHAPES[case["shape"]]
    t, seq_idx, dy = make_inputs(batch, heads, args.seq, HEADDIM, DSTATE, args.doc_len if case["documents"] else 0,
                                 seed=0)
    leaves = {k: v.requires_grad_(True) for k, v in t.items()}
    name, _, variant = impl.split(":", 1)[1].partition("=")
    if name == "mamba_ssm":
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

        def fn():
            return mamba_chunk_scan_combined(**leaves, chunk_size=256, dt_softplus=True, seq_idx=seq_idx)
    else:
        from kotomamba.ops.ssd_triton import ssd_chunk_scan_triton

        configs = variant_configs(variant) if variant else {}

        def fn():
            return ssd_chunk_scan_triton(**leaves, dt_softplus=True, seq_idx=seq_idx, **configs)

    def forward_backward():
        torch.autograd.grad(fn(), list(leaves.values()), dy)

    x_bytes = batch * args.seq * heads * HEADDIM * 2
    bc_bytes = 2 * batch * args.seq * DSTATE * 2
    dt_bytes = batch * args.seq * heads * 2
    return forward_backward, (5 * x_bytes + 3 * bc_bytes + 3 * dt_bytes)


def cases(args) -> list[dict]:
    return [{"shape": shape, "documents": docs} for shape in args.shapes.split(",") for docs in (False, True)]


def add_arguments(parser) -> None:
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--doc-len", type=int, default=512, help="mean document length of the seq_idx runs")


def registers_main() -> None:
    from ptxas_report import command_line

    args, variants = command_line(SHAPES, IMPLS, IMPLS_HELP, add_arguments, "ssd:ours")
    registers(args.shapes.split(",")[0], args.seq, args.doc_len, variants)


if __name__ == "__main__":
    if "--registers" in sys.argv:
        registers_main()
    else:
        op_main(__doc__, SHAPES, IMPLS, IMPLS_HELP, cases, runner, add_arguments)
