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


def provide_inputs(workdir: Path, config: dict) -> None:
    """Stand-ins for the files a user provides (tokenizer, corpus shards, the model to start from), so the
    run can be checked and planned: a dry run only checks that they exist."""
    stand_ins = [config["tokenizer"]["model"]] if config["tokenizer"]["model"] else []
    stand_ins += [url.replace("*", "x") for source in config["corpus"]["sources"] for url in source.get("urls", [])
                  if "://" not in url]
    stand_ins += [f"{config['init']}/config.json"] if config.get("init") else []
    for name in stand_ins:
        path = workdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("stand-in: a dry run only checks that it exists\n")
