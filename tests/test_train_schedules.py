"""LR schedules: warmup, cosine / linear / constant / WSD, min LR after decay."""
import math

import pytest

from kotomamba.train.schedules import LRSchedule


def test_warmup_is_linear_and_never_zero():
    s = LRSchedule(lr=1.0, min_lr=0.1, warmup_steps=4, decay_steps=20)
    assert [s.lr_at(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_cosine_midpoint_and_end():
    s = LRSchedule(lr=1.0, min_lr=0.1, warmup_steps=10, decay_steps=110)
    assert s.lr_at(10) == pytest.approx(1.0)
    assert s.lr_at(60) == pytest.approx(0.55)
    assert s.lr_at(35) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert s.lr_at(110) == s.lr_at(500) == 0.1


def test_linear_and_constant():
    s = LRSchedule(lr=1.0, min_lr=0.0, warmup_steps=0, decay_steps=10, style="linear")
    assert [s.lr_at(i) for i in (0, 5, 10)] == [1.0, 0.5, 0.0]
    c = LRSchedule(lr=1.0, min_lr=0.0, warmup_steps=2, decay_steps=10, style="constant")
    assert [c.lr_at(i) for i in (0, 2, 50)] == [0.5, 1.0, 1.0]


def test_wsd_is_stable_then_decays_linearly_in_the_last_fraction():
    s = LRSchedule(lr=1.0, min_lr=0.0, warmup_steps=10, decay_steps=110, style="wsd", wsd_decay_fraction=0.2)
    assert s.lr_at(10) == s.lr_at(89) == s.lr_at(90) == 1.0
    assert s.lr_at(100) == pytest.approx(0.5)
    assert s.lr_at(110) == 0.0


def test_bad_schedule_rejected():
    with pytest.raises(ValueError):
        LRSchedule(lr=1.0, min_lr=0.0, warmup_steps=11, decay_steps=10)
    with pytest.raises(ValueError):
        LRSchedule(lr=1.0, min_lr=0.0, warmup_steps=1, decay_steps=10, style="exp")
