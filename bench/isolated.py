"""Time each implementation in a fresh process of its own, over rounds: what one implementation
allocated, compiled or left running must not change another's figure (bench/RESULTS.md saw a
reference run 15% slower beside ours than alone). Used by the op benchmarks' parents; each child is
the same script with ``--child IMPL`` and prints one JSON object per line."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time


BANDWIDTH_HELP = ("bytes/s for the floor (default: the card's data-sheet peak, kotomamba.train.flops.peak_bandwidth; "
                  "without either the floor is left out)")


def floor_ms(floor_bytes: float, given: float | None, card: str) -> float | None:
    """Milliseconds to move ``floor_bytes`` at ``given`` bytes/s (``--bandwidth``), else at ``card``'s peak;
    None for a card whose peak is not known (a CPU)."""
    from kotomamba.train.flops import peak_bandwidth

    bandwidth = given or peak_bandwidth(card)
    return None if bandwidth is None else floor_bytes / bandwidth * 1e3


def run_children(script: str, argv: list[str], impls: list[str], rounds: int,
                 time_limit_s: float | None = None) -> list[dict]:
    """``python script *argv --child IMPL`` once per round and implementation, the order reversed every
    other round so that drift over the run lands on every implementation alike. Prints what the
    children print and returns their JSON lines, each with its ``round``; a child that fails is
    reported on stdout and contributes what it printed before failing. With ``time_limit_s`` (seconds
    for all the children) a child is not started when the longest one so far would not fit in what is
    left, and a running one is stopped at the limit (keeping what it printed): the caller can still
    summarise what ran before a step's timeout kills it."""
    rows = []
    start, longest = time.monotonic(), 0.0
    for round_ in range(rounds):
        for impl in impls if round_ % 2 == 0 else impls[::-1]:
            began = time.monotonic()
            left = None if time_limit_s is None else time_limit_s - (began - start)
            if left is not None and left < longest:
                print(f"{impl} round {round_}: not started (--time-limit {time_limit_s:g} s)", flush=True)
                continue
            try:
                done = subprocess.run([sys.executable, script, *argv, "--child", impl], capture_output=True,
                                      text=True, timeout=left)
                code, stdout, stderr = done.returncode, done.stdout, done.stderr
            except subprocess.TimeoutExpired as stopped:  # its output so far comes as bytes, or None
                code = f"stopped at --time-limit {time_limit_s:g} s"
                stdout, stderr = ((out or b"").decode() for out in (stopped.stdout, stopped.stderr))
            longest = max(longest, time.monotonic() - began)
            if code:
                print(f"{impl} round {round_}: exit {code}\n{stderr[-2000:]}", flush=True)
            for line in stdout.splitlines():
                if line.startswith("{"):
                    rows.append({**json.loads(line), "round": round_})
                print(line, flush=True)
    return rows


TIME_LIMIT_HELP = ("seconds for all the children: one that would not fit is not started, a running one is stopped "
                   "at the limit, and the table summarises what ran")


def _profiled(run, repeats: int):
    """The CUDA profile of ``repeats`` calls of ``run``, after one warm-up call."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    run()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            run()
        torch.cuda.synchronize()
    return prof


def device_ms(run, repeats: int = 3) -> float:
    """Milliseconds the device spends in kernels per call of ``run`` (profiled, after one warm-up
    call): the op's cost without the host's launch gaps, which a CUDA-graphed step does not pay."""
    from torch.autograd import DeviceType

    kernels = [e for e in _profiled(run, repeats).events() if e.device_type == DeviceType.CUDA]
    return sum(e.time_range.elapsed_us() for e in kernels) / 1e3 / repeats


def profile_table(run, rows: int = 14) -> str:
    """The profiler's table of the kernels of one call of ``run`` (after one warm-up call), by device time."""
    return _profiled(run, 1).key_averages().table(sort_by="cuda_time_total", row_limit=rows,
                                                   max_name_column_width=60)


def median_range(rows: list[dict], key: str) -> tuple[float, float, float] | None:
    """(median, min, max) of ``key`` over ``rows``; None when there are none."""
    values = [row[key] for row in rows]
    return (statistics.median(values), min(values), max(values)) if values else None


def op_main(doc: str, shapes: dict, impls: tuple[str, ...], impls_help: str, cases, runner, add_arguments=None):
    """The command line of an op benchmark (bench/conv_throughput.py, bench/norm_throughput.py): ``--impls``
    ``KIND:NAME`` (``KIND:mamba_ssm`` or ``KIND:causal_conv1d`` is each kind's reference: the first of its
    kind in ``impls``), each timed in its own process over ``--rounds``; ``cases(args)`` lists the cases
    (dicts with a ``shape``); ``runner(impl, case, args)`` returns one forward+backward as a closure and the
    bytes it must move. Prints a JSON line per (round, impl, case) and a table of medians and ranges."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--shapes", default=",".join(shapes))
    parser.add_argument("--impls", default=",".join(impls), help=impls_help)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bandwidth", type=float, default=None, help=BANDWIDTH_HELP)
    parser.add_argument("--profile", action="store_true",
                        help="also print each implementation's kernels for one call, at every case")
    parser.add_argument("--time-limit", type=float, default=None, help=TIME_LIMIT_HELP)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ncu", action="store_true",
                        help="with --child IMPL: warm up, then one call of the first case between cudaProfilerStart "
                             "and cudaProfilerStop, for `ncu --profile-from-start off` (bench/gpu_session.sh's ncu "
                             "step); nothing is timed")
    parser.add_argument("--json", default=None)
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args()
    if args.child and args.ncu:
        import torch

        run, _ = runner(args.child, cases(args)[0], args)
        for _ in range(3):
            run()
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStart()
        run()
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStop()
        return
    if args.child:
        import torch
        import triton

        for index, case in enumerate(cases(args)):
            run, floor_bytes = runner(args.child, case, args)
            if args.profile:
                print(f"--- profile: {args.child}, {case}, one call ---\n{profile_table(run)}", flush=True)
            wall = triton.testing.do_bench(run, warmup=25, rep=100, return_mode="median")
            print(json.dumps({"impl": args.child, **case, "wall_ms": wall, "device_ms": device_ms(run, repeats=5),
                              "floor_ms": floor_ms(floor_bytes, args.bandwidth, torch.cuda.get_device_name())}),
                  flush=True)
        return
    chosen = args.impls.split(",")
    rows = run_children(sys.argv[0], sys.argv[1:], chosen, args.rounds, args.time_limit)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)
    reference = {}
    for impl in impls:
        reference.setdefault(impl.split(":")[0], impl)
    fields = list(cases(args)[0])
    print(f"\n| op | {' | '.join(fields)} | impl | device ms [range] | wall ms [range] | device ratio | wall ratio "
          f"| floor ms |")
    print("|" + " --- |" * (len(fields) + 7))
    for impl in chosen:
        kind = impl.split(":")[0]
        for case in cases(args):
            def rows_of(name, case=case):
                return [r for r in rows if r["impl"] == name and all(r[k] == v for k, v in case.items())]

            def of(name, key):
                return median_range(rows_of(name), key)
            device, wall = of(impl, "device_ms"), of(impl, "wall_ms")
            if device is None:
                continue
            floor = rows_of(impl)[0]["floor_ms"]
            ref_device, ref_wall = of(reference[kind], "device_ms"), of(reference[kind], "wall_ms")
            print(f"| {kind} | {' | '.join(str(case[k]) for k in fields)} | {impl.split(':', 1)[1]} | "
                  f"{device[0]:.3f} [{device[1]:.3f}-{device[2]:.3f}] | {wall[0]:.3f} [{wall[1]:.3f}-{wall[2]:.3f}] | "
                  f"{f'{ref_device[0] / device[0]:.2f}x' if ref_device else '-'} | "
                  f"{f'{ref_wall[0] / wall[0]:.2f}x' if ref_wall else '-'} | {'-' if floor is None else f'{floor:.3f}'} |")
