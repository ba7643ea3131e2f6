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


def test_the_instructions_with_excessive_sectors_are_ranked_where_the_page_has_them(tmp_path):
    """An uncoalesced load (12 sectors, 8 beyond the 4 its bytes need) before an aligned one and a store."""
    path = tmp_path / "sass.csv"
    columns = COLUMNS + ["L2 Theoretical Sectors Global Excessive", "L2 Theoretical Sectors Global"]
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle, quoting=csv.QUOTE_ALL)
        out.writerow(["Kernel Name", "_bwd_kernel", ""])
        out.writerow(columns)
        for i, (source, excessive, sectors) in enumerate([("LDG.E R2, desc[UR4][R2.64]", "0", "4"),
                                                            ("LDG.E.64 R4, desc[UR4][R6.64]", "8", "12"),
                                                            ("FFMA R1, R2, R3, R4", "-", "-"),
                                                            ("STG.E.64 desc[UR4][R8.64], R4", "2", "6")]):
            out.writerow([hex(0x7f00 + 16 * i), source, 5, 5, 100, "-", 5, 0, 0, 5, excessive, sectors])
    printed = subprocess.run([sys.executable, str(ROOT / "bench" / "ncu_stalls.py"), str(path), "--top", "2"],
                             capture_output=True, text=True, check=True).stdout
    assert "10 of 22 global sectors excessive" in printed
    ranked = printed.split("| excessive sectors |")[1].splitlines()[2:]
    assert ranked == ["| 1 | 8 | 12 | 100 | `LDG.E.64 R4, desc[UR4][R6.64]` |",
                      "| 3 | 2 | 6 | 100 | `STG.E.64 desc[UR4][R8.64], R4` |"]


def test_a_page_without_sector_columns_prints_no_sector_table(tmp_path):
    path = tmp_path / "sass.csv"
    page(path, [("LDG.E R29, desc[UR28][R24.64]", 10, 1000, 0, 10, 0)])
    printed = subprocess.run([sys.executable, str(ROOT / "bench" / "ncu_stalls.py"), str(path)],
                             capture_output=True, text=True, check=True).stdout
    assert "| line | samples |" in printed and "excessive" not in printed
