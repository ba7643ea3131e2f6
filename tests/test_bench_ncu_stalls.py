"""bench/ncu_stalls.py: the stall reasons, opcodes and waiting instructions of an Nsight Compute source page (its
CSV: a line naming the kernel, the columns, one line per machine instruction), summed and ranked as printed."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["Address", "Source", "Warp Stall Sampling (All Samples)", "Warp Stall Sampling (Not-issued Samples)",
           "Instructions Executed", "Address Space", "stall_long_sb", "stall_selected", "stall_wait",
           "stall_long_sb (Not Issued)"]


def page(path: Path, instructions: list[tuple[str, int, int, int, int, int]]) -> None:
    """(source, samples, executed, long_sb, selected, wait) per instruction, in ncu's CSV layout."""
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle, quoting=csv.QUOTE_ALL)
        out.writerow(["Kernel Name", "_scan_bwd_kernel", ""])
        out.writerow(COLUMNS)
        for i, (source, samples, executed, long_sb, selected, wait) in enumerate(instructions):
            out.writerow([hex(0x7f00 + 16 * i), source, samples, samples - selected, executed, "-", long_sb,
                          selected, wait, long_sb])


def test_a_page_is_summed_by_reason_and_opcode_and_its_waiting_instructions_ranked(tmp_path):
    path = tmp_path / "sass.csv"
    page(path, [("@P3   LDG.E R29, desc[UR28][R24.64]", 10, 1000, 0, 10, 0),
                ("SHF.L.U32 R30, R29, 0x10, RZ", 60, 1000, 55, 5, 0),
                ("FFMA R1, R2, R3, R4", 20, 3000, 0, 12, 8),
                ("FFMA R5, R2, R3, R1", 10, 3000, 0, 2, 8)])
    printed = subprocess.run([sys.executable, str(ROOT / "bench" / "ncu_stalls.py"), str(path), "--top", "2"],
                             capture_output=True, text=True, check=True).stdout
    assert "8,000 warp instructions executed, 100 warp-state samples" in printed
    assert "| long_sb | 55.0% |" in printed and "| selected | 29.0% |" in printed and "| wait | 16.0% |" in printed
    assert "| FFMA | 75.0% | 30.0% |" in printed and "| LDG | 12.5% | 10.0% |" in printed
    ranked = printed.split("| line |")[1].splitlines()[2:]
    assert ranked == ["| 1 | 60.0% | long_sb | 1,000 | `SHF.L.U32 R30, R29, 0x10, RZ` |",
                      "| 2 | 20.0% | selected | 3,000 | `FFMA R1, R2, R3, R4` |"]
