"""The files of configs/, sorted by role, for the tests that read them."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SMOKE = CONFIGS / "smoke.yaml"
GPU_E2E = CONFIGS / "gpu-e2e.yaml"
OFFLINE_PILE = CONFIGS / "offline-pile.yaml"
EXPECTED = CONFIGS / "expected.yaml"
OVERRIDES = (SMOKE, GPU_E2E, OFFLINE_PILE)  # merged after a run config, not runs of their own
RUN_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if p not in (*OVERRIDES, EXPECTED))


def provide_inputs(workdir: Path, config: dict) -> None:
    """Stand-ins for the local files a config names (tokenizer, corpus shards, the model to start from), so
    the run can be checked and planned: a dry run only checks that they exist. Remote inputs (URLs, hf://)
    are fetched by the pipeline's jobs and need none."""
    model = config["tokenizer"]["model"]
    stand_ins = [model] if model and "://" not in model else []
    stand_ins += [url.replace("*", "x") for source in config["corpus"]["sources"] for url in source.get("urls", [])
                  if "://" not in url]
    init = config.get("init")
    stand_ins += [f"{init}/config.json"] if isinstance(init, str) and "://" not in init else []
    for name in stand_ins:
        path = workdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("stand-in: a dry run only checks that it exists\n")
