"""fp16 on CPU (autocast over fp32 weights): the global dynamic loss scale, end to end and alone."""
from __future__ import annotations

import math

import pytest

from kotomamba.train.loss_scale import LossScale
from train_helpers import assert_same_weights, final_weights, losses, records, run_train, write_config


def test_loss_scale_halves_on_overflow_and_doubles_after_growth_interval_clean_steps():
    scale = LossScale(scale=1024.0, growth_interval=3)
    scale.update(False)
    assert (scale.scale, scale.good_steps) == (512.0, 0)
    scale.update(True)
    scale.update(True)
    assert scale.scale == 512.0
    scale.update(False)  # an overflow restarts the count of clean steps
    scale.update(True)
    scale.update(True)
    assert scale.scale == 256.0
    scale.update(True)
    assert (scale.scale, scale.good_steps) == (512.0, 0)
    restored = LossScale()
    restored.load_state_dict(scale.state_dict())
    assert (restored.scale, restored.good_steps) == (512.0, 0)
    floor = LossScale(scale=2.0, min_scale=1.0)
    floor.update(False)
    floor.update(False)
    assert floor.scale == 1.0


@pytest.mark.slow
def test_fp16_overflows_skip_steps_and_halve_the_scale_then_it_grows_back(tmp_path):
    # 2**20 makes the fp16 activation gradients overflow: those steps are skipped and the scale
    # halves until it fits; after 3 clean steps it doubles (and may overflow again).
    fp16 = {"precision": "fp16", "loss_scale": {"initial": 2.0**20, "growth_interval": 3},
            "train": {"steps": 16}, "eval": {"interval": 0}}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_train(write_config(tmp_path, straight, **fp16))
    history = [r for r in records(straight) if "loss" in r]
    assert [r["step"] for r in history] == list(range(1, 17))
    scale, good, overflows, grew = 2.0**20, 0, 0, False
    for record in history:
        overflowed = record["skipped_overflow"] > overflows
        assert math.isfinite(record["loss"]) and record["skipped_nonfinite"] == 0
        assert math.isfinite(record["grad_norm"]) != overflowed, record
        if overflowed:
            overflows, scale, good = overflows + 1, scale / 2, 0
        else:
            good += 1
            if good == 3:
                scale, good, grew = scale * 2, 0, True
        assert record["loss_scale"] == scale, record["step"]
    assert overflows >= 2 and grew
    assert sum(r["loss"] for r in history[-3:]) < sum(r["loss"] for r in history[:3])
    # The scale and its count of clean steps are part of the checkpoint: a resumed run is exact.
    config = write_config(tmp_path, resumed, **{**fp16, "train": {"steps": 16, "max_steps_this_job": 7}})
    run_train(config)
    run_train(config, "train.max_steps_this_job=null")
    assert losses(resumed) == losses(straight)
    assert [r["loss_scale"] for r in records(resumed) if "loss" in r] == [r["loss_scale"] for r in history]
    assert_same_weights(final_weights(straight), final_weights(resumed))
