"""The Mamba-2 SSD scan alone: our Triton kernels (kotomamba/ops/ssd_triton.py) against mamba-ssm's
``mamba_chunk_scan_combined``, forward and forward+backward, at the shapes of the 130m-2.7b presets.

bf16 x, dt, B, C; A, D, dt_bias float32; dt through bias and softplus as the model calls it; one group,
head dim 64, d_state 128, mamba-ssm's chunk 256. Times are medians of ``triton.testing.do_bench``
(CUDA events, after warm-up), and for forward+backward also the device's time in kernels alone
(profiled: what a CUDA-graphed step pays, without the host's launch gaps), each implementation
interleaved with the others over ``--rounds``; the table gives the median over rounds and the
range. ``floor`` is the bytes the op must move (inputs read once, outputs written once; backward:
also dy read, dx, ddt, dB, dC written) at ``--bandwidth``. Each shape is also run with documents
(``seq_idx``, a reset every ~``--doc-len`` tokens), and the outputs are compared (relative error of
y and of every gradient against mamba-ssm's).

    python bench/ssd_throughput.py --json ssd.json

With ``--registers`` it runs nothing: it compiles our variants' kernels for sm_90a on the host (no GPU
needed) and prints each launch's registers per thread, spills, shared memory and programs per
multiprocessor, as ptxas reports them.
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch

from isolated import device_ms

SHAPES = {"130m": (16, 24), "1.3b": (8, 64), "2.7b": (4, 80)}


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
    seq_idx = None
    if doc_len:
        starts = torch.rand(batch, seqlen, device="cuda", generator=g) < 1.0 / doc_len
        starts[:, 0] = False
        seq_idx = starts.int().cumsum(1).to(torch.int32)
    return t, seq_idx, torch.randn(batch, seqlen, heads, headdim, device="cuda", generator=g).to(bf16)


def variant_configs(variant: str) -> dict:
    """'32.64.4-s64.64.32.8' (see --variants) -> the blocking arguments of ``ssd_chunk_scan_triton``."""
    fwd, bwd = variant.split("-")
    configs = {"fwd_config": tuple(int(v) for v in fwd.split("."))}
    # A backward half that starts with "s" picks the split backward.
    key = "split_bwd_config" if bwd.startswith("s") else "bwd_config"
    configs[key] = tuple(int(v) for v in bwd.removeprefix("s").split("."))
    return configs


def implementations(args):
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    from kotomamba.ops.ssd_triton import ssd_chunk_scan_triton

    impls = {"mamba_ssm": lambda t, s: mamba_chunk_scan_combined(**t, chunk_size=256, dt_softplus=True, seq_idx=s)}
    for variant in args.variants.split(","):
        impls[f"ours {variant}"] = (lambda t, s, configs=variant_configs(variant):
                                    ssd_chunk_scan_triton(**t, dt_softplus=True, seq_idx=s, **configs))
    return impls


def registers(args, headdim: int, dstate: int) -> None:
    """Prints, per variant and launch of one forward+backward, the registers per thread, spills and
    shared memory that ptxas gives the kernel for sm_90a, and the programs per multiprocessor those
    allow (64K registers in warp units of 256, 228 KiB of shared memory with 1 KiB reserved per program,
    64 warps). Needs no GPU: the op's own host code runs on CPU tensors (the first shape, batch 1,
    bf16) with a stand-in driver that names an sm_90 target, each launch only compiles, and Triton's
    ptxas log is read."""
    import contextlib
    import io
    import re

    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    from kotomamba.ops.ssd_triton import ssd_chunk_scan_triton

    class Hopper:
        def get_current_target(self):
            return GPUTarget("cuda", 90, 64)

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

    launches, seen, run = [], {}, JITFunction.run

    def compile_only(self, *a, grid, warmup, **kw):
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            kernel = run(self, *a, grid=grid, warmup=True, **kw)
        if id(kernel) not in seen:  # else compiled earlier in this process, its log printed then
            text = log.getvalue()
            regs = int(re.search(r"Used (\d+) registers", text).group(1))
            stores, loads = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text).groups()
            warps, shared = kw.get("num_warps", 4), kernel.metadata.shared
            by_regs = 65536 // (-(-regs * 32 // 256) * 256 * warps)
            programs = min(by_regs, 233472 // (shared + 1024), 64 // warps)
            seen[id(kernel)] = (self.fn.__name__, warps, regs, f"{stores}/{loads}", shared // 1024, programs)
        launches.append(seen[id(kernel)])
        return kernel

    batch, heads = SHAPES[args.shapes.split(",")[0]]
    g = torch.Generator().manual_seed(0)
    t = {"x": torch.randn(1, args.seq, heads, headdim, generator=g), "dt": torch.randn(1, args.seq, heads, generator=g),
         "A": -torch.rand(heads, generator=g), "B": torch.randn(1, args.seq, 1, dstate, generator=g),
         "C": torch.randn(1, args.seq, 1, dstate, generator=g), "D": torch.randn(heads, generator=g)}
    t = {k: (v.bfloat16() if v.dim() > 1 else v).requires_grad_(True) for k, v in t.items()}
    print("| variant | kernel | warps | registers | spill stores/loads (bytes) | shared KiB | programs per SM |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    always, dump = knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log
    knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log = True, True
    active = driver._active  # None until first asked for (asking fails without a GPU)
    driver.set_active(Hopper())
    JITFunction.run = compile_only
    try:
        for variant in args.variants.split(","):
            launches.clear()
            y = ssd_chunk_scan_triton(**t, dt_softplus=True, **variant_configs(variant))
            torch.autograd.grad(y, list(t.values()), torch.ones_like(y))
            for launch in launches:
                print("| " + " | ".join(str(v) for v in (variant, *launch)) + " |")
    finally:
        JITFunction.run = run
        driver.set_active(active)
        knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log = always, dump


def profile(name: str, run) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    run()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    print(f"--- profile: {name}, one forward+backward ---")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--variants", default="32.64.4-16.32.4,32.64.4-s64.64.16.8,32.64.4-s64.64.32.8",
                        help="our kernels, comma-separated: forward then backward, each (positions per block, "
                             "head-dim columns per program, warps[, register cap]), e.g. 32.64.4-16.32.4; a "
                             "backward with the prefix s is the split backward, its fields those of "
                             "kotomamba.ops.ssd_triton.SPLIT_BWD_DEFAULT (positions per block; head-dim columns, "
                             "state columns at a time and warps of the parallel launch; columns and warps of the "
                             "sequential one, of the rerun; 1 for float32 state gradients; 1 to keep the forward's "
                             "states instead of the rerun; 1 to sum dB and dC from per-head shares instead of atomic "
                             "adds; the parallel launch in one pass 0, in two parts 1, in two launches 2, in two parts "
                             "as neighbouring programs 3; heads per "
                             "program of the second of two launches, 0 for one with its own loop over the state; a "
                             "register cap of the parallel launch(es), 0 for none), missing ones from it, e.g. "
                             "32.64.4-s64.64.32.8.64.4.64.4.0.1.0.1.0.128")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--doc-len", type=int, default=512, help="mean document length of the seq_idx runs")
    parser.add_argument("--bandwidth", type=float, default=4.8e12, help="bytes/s for the floor")
    parser.add_argument("--profile", action="store_true",
                        help="print each implementation's kernels for one forward+backward (first shape, no documents)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--registers", action="store_true",
                        help="only compile our variants for sm_90a (no GPU needed) and print their kernels' "
                             "registers, spills, shared memory and programs per multiprocessor")
    args = parser.parse_args()

    import triton

    headdim, dstate = 64, 128
    if args.registers:
        registers(args, headdim, dstate)
        return
    rows = []
    impls = implementations(args)
    for shape in args.shapes.split(","):
        batch, heads = SHAPES[shape]
        for doc_len in (0, args.doc_len):
            t, seq_idx, dy = make_inputs(batch, heads, args.seq, headdim, dstate, doc_len, seed=len(rows))
            leaves = {k: v.requires_grad_(True) for k, v in t.items()}
            outputs = {}
            times = {name: {"fwd": [], "fwd_bwd": [], "fwd_bwd_device": []} for name in impls}
            for name, fn in impls.items():
                y = fn(leaves, seq_idx)
                grads = torch.autograd.grad(y, list(leaves.values()), dy)
                outputs[name] = (y.detach(), dict(zip(leaves, grads)))

            def forward(fn, leaves=leaves, seq_idx=seq_idx):
                with torch.no_grad():
                    fn(leaves, seq_idx)

            def forward_backward(fn, leaves=leaves, seq_idx=seq_idx, dy=dy):
                y = fn(leaves, seq_idx)
                torch.autograd.grad(y, list(leaves.values()), dy)

            if args.profile and not rows and not doc_len:
                for name, fn in impls.items():
                    profile(name, lambda: forward_backward(fn))
            for _ in range(args.rounds):
                for name, fn in impls.items():
                    times[name]["fwd"].append(triton.testing.do_bench(lambda: forward(fn), warmup=25, rep=100,
                                                                      return_mode="median"))
                    times[name]["fwd_bwd"].append(triton.testing.do_bench(lambda: forward_backward(fn), warmup=25,
                                                                          rep=100, return_mode="median"))
                    times[name]["fwd_bwd_device"].append(device_ms(lambda: forward_backward(fn)))
            x_bytes = batch * args.seq * heads * headdim * 2
            bc_bytes = 2 * batch * args.seq * dstate * 2
            dt_bytes = batch * args.seq * heads * 2
            floor_fwd = (2 * x_bytes + bc_bytes + dt_bytes) / args.bandwidth * 1e3
            floor_bwd = floor_fwd + (3 * x_bytes + 2 * bc_bytes + 2 * dt_bytes) / args.bandwidth * 1e3
            y_ref, grads_ref = outputs["mamba_ssm"]
            for name in impls:
                y, grads = outputs[name]
                grad_errors = {k: ((g.float() - grads_ref[k].float()).norm() / grads_ref[k].float().norm()).item()
                               for k, g in grads.items()}
                worst = max(grad_errors, key=grad_errors.get)
                row = {"shape": shape, "batch": batch, "heads": heads, "seq": args.seq,
                       "documents": bool(doc_len), "impl": name,
                       "y_rel_err_vs_mamba": ((y.float() - y_ref.float()).norm() / y_ref.float().norm()).item(),
                       "dx_rel_err_vs_mamba": grad_errors["x"],
                       "worst_grad_vs_mamba": f"d{worst} {grad_errors[worst]:.1e}",
                       "floor_fwd_ms": floor_fwd, "floor_fwd_bwd_ms": floor_bwd}
                for kind, values in times[name].items():
                    row[f"{kind}_ms"] = statistics.median(values)
                    row[f"{kind}_ms_min"], row[f"{kind}_ms_max"] = min(values), max(values)
                rows.append(row)
                print(json.dumps(row), flush=True)
            del leaves, outputs, t, dy
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)
    print("\n| shape (b x h) | docs | impl | fwd ms | fwd+bwd ms | fwd+bwd device ms | vs mamba-ssm fwd / fwd+bwd / "
          "device | floor fwd / fwd+bwd ms | y, dx rel. diff; worst gradient |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        ref = next(r for r in rows if (r["shape"], r["documents"], r["impl"]) == (row["shape"], row["documents"],
                                                                                    "mamba_ssm"))
        print(f"| {row['shape']} ({row['batch']} x {row['heads']}) | {'yes' if row['documents'] else 'no'} | "
              f"{row['impl']} | {row['fwd_ms']:.3f} ({row['fwd_ms_min']:.3f}-{row['fwd_ms_max']:.3f}) | "
              f"{row['fwd_bwd_ms']:.3f} ({row['fwd_bwd_ms_min']:.3f}-{row['fwd_bwd_ms_max']:.3f}) | "
              f"{row['fwd_bwd_device_ms']:.3f} "
              f"({row['fwd_bwd_device_ms_min']:.3f}-{row['fwd_bwd_device_ms_max']:.3f}) | "
              f"{ref['fwd_ms'] / row['fwd_ms']:.2f}x / {ref['fwd_bwd_ms'] / row['fwd_bwd_ms']:.2f}x / "
              f"{ref['fwd_bwd_device_ms'] / row['fwd_bwd_device_ms']:.2f}x | "
              f"{row['floor_fwd_ms']:.2f} / {row['floor_fwd_bwd_ms']:.2f} | "
              f"{row['y_rel_err_vs_mamba']:.1e}, {row['dx_rel_err_vs_mamba']:.1e}; {row['worst_grad_vs_mamba']} |")


if __name__ == "__main__":
    main()
