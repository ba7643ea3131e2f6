"""What ptxas gives each Triton kernel a piece of host code launches, for sm_90a, without a GPU.

The host code runs on CPU tensors under a stand-in driver that names an sm_90 target; each launch only
compiles (Triton's cache is bypassed, so every kernel's ptxas log is printed), and the log is read:
registers per thread, spill bytes, shared memory, and the programs per multiprocessor those allow
(64K registers in warp units of 256, 228 KiB of shared memory with 1 KiB reserved per program, 64 warps).
The machine code (nvdisasm) is counted too: its instructions, and of them the warp shuffles, the barriers (a
layout change through shared memory waits on one) and the special-function ones (exp2, reciprocals). These are
counts of the code, each loop's body once and each unrolled loop in full: what a change of a kernel adds or
removes per walked position, before any device time is spent on it.
Used by the op benchmarks' ``--registers`` (bench/ssd_throughput.py, bench/conv_throughput.py).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import re
import subprocess
import tempfile
from collections import Counter

# Per compiled kernel (by identity): its row. A kernel compiled earlier in the process is not compiled
# again, so its log is read once.
_SEEN: dict[int, tuple] = {}

HEADER = ("| variant | kernel | warps | registers | spill stores/loads (bytes) | shared KiB | programs per SM "
          "| instructions | shuffles / barriers / special |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |")


NEEDS = "--registers needs Triton 3.4 or later (triton.knobs: the compile settings, ptxas' and nvdisasm's paths)"


def has_knobs() -> bool:
    return importlib.util.find_spec("triton") is not None and importlib.util.find_spec("triton.knobs") is not None


def header() -> str:
    """:data:`HEADER`, once this Triton is known to compile with ptxas' log (else the process ends with :data:`NEEDS`)."""
    _knobs()
    return HEADER


def _knobs():
    if not has_knobs():
        raise SystemExit(NEEDS)
    from triton import knobs

    return knobs


def instruction_mix(cubin: bytes) -> tuple[int, str]:
    """The instructions in ``cubin``'s machine code, and "SHFL / BAR / MUFU" counts of them."""
    knobs = _knobs()
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([knobs.nvidia.nvdisasm.path, "-c", f.name], capture_output=True, text=True,
                              check=True).stdout
    # "/*0c40*/  @!P0 FADD R2, R3, R4 ;": the opcode is the first upper-case word after the address and predicate.
    ops = Counter(m.group(1) for m in re.finditer(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9]*)",
                                                   sass, re.MULTILINE))
    return sum(ops.values()), f"{ops['SHFL']} / {ops['BAR']} / {ops['MUFU']}"


def launches(run) -> list[tuple]:
    """Calls ``run()`` with every Triton launch compiled for sm_90a and not run; returns, per launch in
    order, (kernel name, warps, registers, "stores/loads" spill bytes, shared KiB, programs per SM, instructions,
    "SHFL / BAR / MUFU" instructions)."""
    knobs = _knobs()
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    class Hopper:
        def get_current_target(self):
            return GPUTarget("cuda", 90, 64)

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

    found, real_run = [], JITFunction.run

    def compile_only(self, *a, grid, warmup, **kw):
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            kernel = real_run(self, *a, grid=grid, warmup=True, **kw)
        if id(kernel) not in _SEEN:
            text = log.getvalue()
            regs = int(re.search(r"Used (\d+) registers", text).group(1))
            stores, loads = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text).groups()
            warps, shared = kw.get("num_warps", 4), kernel.metadata.shared
            by_regs = 65536 // (-(-regs * 32 // 256) * 256 * warps)
            programs = min(by_regs, 233472 // (shared + 1024), 64 // warps)
            _SEEN[id(kernel)] = (self.fn.__name__, warps, regs, f"{stores}/{loads}", shared // 1024, programs,
                                 *instruction_mix(kernel.asm["cubin"]))
        found.append(_SEEN[id(kernel)])
        return kernel

    always, dump = knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log
    knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log = True, True
    active = driver._active  # None until first asked for (asking fails without a GPU)
    driver.set_active(Hopper())
    JITFunction.run = compile_only
    try:
        run()
    finally:
        JITFunction.run = real_run
        driver.set_active(active)
        knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log = always, dump
    return found


def print_rows(variant: str, run) -> None:
    """One table row (under :data:`HEADER`) per launch of ``run()``."""
    for launch in launches(run):
        print("| " + " | ".join(str(v) for v in (variant, *launch)) + " |", flush=True)


def command_line(shapes: dict, impls: tuple[str, ...], impls_help: str, add_arguments, ours: str):
    """An op benchmark's ``--registers`` command line: the parsed arguments and the blockings of its
    ``--impls`` of our kind ``ours`` (e.g. ``conv:ours``; ``""`` for one without ``=BLOCKING``). At least one."""
    parser = argparse.ArgumentParser(description="registers per launch of our kernels, from ptxas (sm_90a)")
    parser.add_argument("--registers", action="store_true", required=True)
    parser.add_argument("--shapes", default=",".join(shapes), help="the first is compiled")
    parser.add_argument("--impls", default=",".join(impls), help=impls_help)
    add_arguments(parser)
    args = parser.parse_args()
    blockings = [impl.partition("=")[2] for impl in args.impls.split(",") if impl.partition("=")[0] == ours]
    if not blockings:
        parser.error(f"--registers needs at least one {ours} in --impls")
    return args, blockings
