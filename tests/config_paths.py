"""The files of configs/, sorted by role, for the tests that read them."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SMOKE = CONFIGS / "smoke.yaml"
GPU_E2E = CONFIGS / "gpu-e2e.yaml"
EXPECTED = CONFIGS / "expected.yaml"
OVERRIDES = (SMOKE, GPU_E2E)  # merged after a run config, not runs of their own
RUN_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if p not in (*OVERRIDES, EXPECTED))
