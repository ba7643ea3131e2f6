"""Where a kernel's warps wait, from Nsight Compute's per-instruction source page:

    ncu -i REPORT.ncu-rep --page source --csv --print-source sass > sass.csv
    python bench/ncu_stalls.py sass.csv [--top 14]

Prints the stall reasons summed over the kernel (share of all warp-state samples), the opcodes' shares of the
executed instructions and of the samples, and the instructions that gathered the most samples with the reason
that dominates each: a wait charged to the instruction that first uses a load's result (``long_sb``) names the
load that is not hidden. The reasons are Nsight Compute's warp states (its Profiling Guide, "Warp Stall
Reasons"). Where the page has the per-instruction sector columns (``L2 Theoretical Sectors Global`` and its
``Excessive`` share: sectors beyond what the access pattern needs), the memory instructions with the most
excessive sectors follow: the loads or stores that move more than their bytes. bench/gpu_session.sh's ``ncu``
step runs it.
"""
from __future__ import annotations

import argparse
import collections
import csv
import re

SAMPLES = "Warp Stall Sampling (All Samples)"
EXECUTED = "Instructions Executed"


def read(path: str) -> tuple[list[str], list[dict]]:
    """The stall-reason columns and one dict per instruction of the CSV ``path`` (its first line names the kernel)."""
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    header = next(r for r in rows if "Source" in r and SAMPLES in r)
    start = rows.index(header) + 1
    reasons = [h for h in header if h.startswith("stall_") and "Not Issued" not in h]
    return reasons, [dict(zip(header, r)) for r in rows[start:] if len(r) >= len(header)]


def number(row: dict, key: str) -> int:
    """``row``'s count under ``key``; 0 where ncu leaves it empty or writes ``-``."""
    return int(row[key]) if row[key] not in ("-", "") else 0


def opcode(source: str) -> str:
    """``@!P0 LDG.E.64 R4, ...`` -> ``LDG``."""
    bare = re.sub(r"^@!?U?P\w+\s+", "", source.strip())
    return bare.split()[0].split(".")[0] if bare else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv")
    parser.add_argument("--top", type=int, default=14)
    args = parser.parse_args()
    reasons, rows = read(args.csv)
    samples = sum(number(r, SAMPLES) for r in rows) or 1
    executed = sum(number(r, EXECUTED) for r in rows) or 1
    print(f"{executed:,} warp instructions executed, {samples:,} warp-state samples\n")
    print("| stall reason | share of samples |\n| --- | --- |")
    totals = collections.Counter({reason: sum(number(r, reason) for r in rows) for reason in reasons})
    for reason, count in totals.most_common(8):
        print(f"| {reason.removeprefix('stall_')} | {count / samples:.1%} |")
    ops, op_samples = collections.Counter(), collections.Counter()
    for row in rows:
        op = opcode(row["Source"])
        ops[op] += number(row, EXECUTED)
        op_samples[op] += number(row, SAMPLES)
    print("\n| opcode | share of executed | share of samples |\n| --- | --- | --- |")
    for op, count in ops.most_common(12):
        print(f"| {op} | {count / executed:.1%} | {op_samples[op] / samples:.1%} |")
    print("\n| line | samples | main reason | executed | instruction |\n| --- | --- | --- | --- | --- |")
    top = sorted(range(len(rows)), key=lambda i: -number(rows[i], SAMPLES))[:args.top]
    for i in sorted(top):
        row = rows[i]
        reason = max(reasons, key=lambda name: number(row, name))
        print(f"| {i} | {number(row, SAMPLES) / samples:.1%} | {reason.removeprefix('stall_')} | "
              f"{number(row, EXECUTED):,} | `{row['Source'].strip()}` |")
    print_excessive(rows, args.top)


def print_excessive(rows: list[dict], top: int) -> None:
    """The instructions with the most excessive global sectors, beside their sectors in all, if the page has them."""
    columns = rows[0].keys() if rows else ()
    excessive = next((c for c in columns if "Sectors Global Excessive" in c), None)
    total = excessive and excessive.replace(" Excessive", "")
    if excessive is None or total not in columns:
        return
    all_sectors = sum(number(r, total) for r in rows) or 1
    print(f"\n{sum(number(r, excessive) for r in rows):,} of {all_sectors:,} global sectors excessive "
          f"({excessive})\n")
    print("| line | excessive sectors | sectors | executed | instruction |\n| --- | --- | --- | --- | --- |")
    ranked = sorted(range(len(rows)), key=lambda i: -number(rows[i], excessive))[:top]
    for i in sorted(j for j in ranked if number(rows[j], excessive)):
        row = rows[i]
        print(f"| {i} | {number(row, excessive):,} | {number(row, total):,} | {number(row, EXECUTED):,} | "
              f"`{row['Source'].strip()}` |")


if __name__ == "__main__":
    main()
