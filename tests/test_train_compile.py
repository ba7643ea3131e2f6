"""``parallel.compile``: the trainer with every block under ``torch.compile`` trains the same model as
eager mode (Inductor's CPU code here; the same graphs go to Triton on CUDA)."""
from __future__ import annotations

import pytest
import torch

from train_helpers import final_weights, losses, run_train, write_config


@pytest.mark.slow
def test_compiled_blocks_train_like_eager(tmp_path):
    common = dict(train={"steps": 4}, checkpoint={"interval": 4}, eval={"interval": 0, "final": False})
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    run_train(write_config(tmp_path, eager, **common))
    run_train(write_config(tmp_path, compiled, parallel={"compile": True}, **common))
    expected, got = losses(eager), losses(compiled)
    assert sorted(got) == [1, 2, 3, 4]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-4), step
    a, b = final_weights(eager), final_weights(compiled)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=1e-3, msg=key)
