"""The training step alone (``kotomamba.train.step.TrainStep``), on a tiny model in one gloo process: what it
does with accumulation, with a non-finite loss, with an fp16-style overflow and with a skipped range. The
trainer's runs (tests/test_train_loop.py, test_train_skips.py, test_train_fp16.py) check it end to end."""
from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist

from kotomamba.model import MambaLM, preset
from kotomamba.train.loss_scale import LossScale
from kotomamba.train.optim import build_optimizer
from kotomamba.train.step import DONE, NONFINITE, OVERFLOW, RANGE, TrainStep

CONFIG = preset("tiny", d_model=16, n_layer=1, vocab_size=32)


@pytest.fixture(scope="module", autouse=True)
def process_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def model_and_optimizer(seed: int = 0):
    torch.manual_seed(seed)
    model = MambaLM(CONFIG, device="cpu", dtype=torch.float32)
    return model, build_optimizer(model, 1e-2, 0.1, (0.9, 0.95), 1e-8, ["A_log", "D", "bias", "norm"])


def micro_batches(count: int, rows: int = 2, seed: int = 1) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    return [{"tokens": torch.randint(0, CONFIG.vocab_size, (rows, 17), generator=generator)} for _ in range(count)]


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_two_accumulated_micro_batches_step_like_one_batch_of_both():
    halves = micro_batches(2)
    whole = [{"tokens": torch.cat([b["tokens"] for b in halves])}]
    model_a, optim_a = model_and_optimizer()
    model_b, optim_b = model_and_optimizer()
    outcome_a = TrainStep(model_a, optim_a, accumulation=2, grad_clip=0.5)(iter(halves), log_stats=True)
    outcome_b = TrainStep(model_b, optim_b, accumulation=1, grad_clip=0.5)(iter(whole))
    assert outcome_a.kind == outcome_b.kind == DONE
    assert outcome_a.record["loss"] == pytest.approx(outcome_b.record["loss"], rel=1e-5)
    assert outcome_a.record["grad_norm"] == pytest.approx(outcome_b.record["grad_norm"], rel=1e-4)
    assert outcome_a.record["grad_norm"] > 0.5  # so the clipping was applied, to both alike
    assert "optim/decay/update_weight_ratio" in outcome_a.record and "optim/decay/update_norm" not in outcome_b.record
    after_a, after_b = weights(model_a), weights(model_b)
    for key in after_a:
        torch.testing.assert_close(after_a[key], after_b[key], rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in model_a.parameters())  # zeroed for the next step


def test_the_optimizer_statistics_are_the_norms_of_each_group():
    model, optimizer = model_and_optimizer()
    before = [[p.detach().clone() for p in group["params"]] for group in optimizer.param_groups]
    record = TrainStep(model, optimizer, accumulation=1, grad_clip=None)(iter(micro_batches(1)), log_stats=True).record

    def norm(tensors):
        return math.sqrt(sum(t.double().square().sum().item() for t in tensors))

    for group, old in zip(optimizer.param_groups, before):
        name, params = group["group"], group["params"]
        states = [optimizer.state[p] for p in params]
        expected = {"weight_norm": norm(params), "update_norm": norm([p - o for p, o in zip(params, old)]),
                    "exp_avg_norm": norm([s["exp_avg"] for s in states]),
                    "exp_avg_sq_norm": norm([s["exp_avg_sq"] for s in states])}
        expected["update_weight_ratio"] = expected["update_norm"] / expected["weight_norm"]
        assert expected["update_norm"] > 0 and expected["exp_avg_sq_norm"] > 0
        for key, value in expected.items():
            assert record[f"optim/{name}/{key}"] == pytest.approx(value, rel=1e-9), (name, key)


def test_a_non_finite_loss_is_skipped_without_touching_the_weights():
    model, optimizer = model_and_optimizer()
    with torch.no_grad():
        model.backbone.embedding.weight[:] = float("nan")
    before = weights(model)
    outcome = TrainStep(model, optimizer, accumulation=1, grad_clip=1.0)(iter(micro_batches(1)))
    assert outcome.kind == NONFINITE and math.isnan(outcome.record["loss"])
    after = weights(model)
    assert all(torch.equal(before[k], after[k]) or before[k].isnan().all() for k in before)
    assert not optimizer.state  # the optimizer never stepped


def test_an_overflow_under_a_loss_scale_halves_it_and_skips_the_step():
    model, optimizer = model_and_optimizer()
    scale = LossScale(scale=1e38, growth_interval=2)  # loss x 1e38 overflows float32 gradients
    step = TrainStep(model, optimizer, accumulation=1, grad_clip=1.0, loss_scale=scale)
    before = weights(model)
    outcome = step(iter(micro_batches(1)))
    assert outcome.kind == OVERFLOW and math.isfinite(outcome.record["loss"])
    assert scale.scale == 5e37 and not optimizer.state
    assert all(torch.equal(before[k], after) for k, after in weights(model).items())
    scale.scale = 1024.0  # a scale that fits: unscaled, clipped and stepped
    outcome = step(iter(micro_batches(1)))
    assert outcome.kind == DONE and scale.good_steps == 1 and optimizer.state


def test_a_skipped_range_step_draws_its_micro_batches_and_changes_nothing():
    model, optimizer = model_and_optimizer()
    batches = iter(micro_batches(3))
    before = weights(model)
    outcome = TrainStep(model, optimizer, accumulation=2, grad_clip=1.0).skip(batches)
    assert outcome.kind == RANGE and outcome.record == {"skipped": "range"}
    assert len(list(batches)) == 1
    assert all(torch.equal(before[k], after) for k, after in weights(model).items())
