"""parallel.cuda_graph where it cannot run: a clear error at startup, before any step. Where it runs
(one process on a GPU), tests/gpu/test_gpu_training.py checks graphed steps against eager ones."""
from __future__ import annotations

import pytest
import torch

from train_helpers import run_train, write_config


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_graph_without_a_gpu_is_refused_with_the_field(tmp_path):
    config = write_config(tmp_path, tmp_path / "run", parallel={"cuda_graph": True})
    done = run_train(config, check=False)
    assert done.returncode != 0
    assert "parallel.cuda_graph: true needs a CUDA GPU; set it to false" in done.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
