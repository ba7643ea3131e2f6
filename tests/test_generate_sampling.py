"""Token selection: greedy and sampling do exactly what the flags say (no model needed)."""
from __future__ import annotations

import pytest
import torch

from kotomamba.errors import UserError
from kotomamba.model.generation import (SamplingConfig, apply_repetition_penalty, build_parser, filter_top_k,
                                        filter_top_p, next_token)


def _logits(batch: int = 4, vocab: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def _empty_history(batch: int) -> torch.Tensor:
    return torch.empty(batch, 0, dtype=torch.long)


def test_defaults_sample_and_help_says_temperature_zero_is_greedy():
    args = build_parser().parse_args(["--model", "m", "--prompt", "x"])
    assert (args.temperature, args.top_k, args.top_p, args.repetition_penalty) == (1.0, 0, 1.0, 1.0)
    assert not SamplingConfig(args.temperature, args.top_k, args.top_p).greedy
    help_text = " ".join(build_parser().format_help().split())
    assert "--temperature 0 for greedy" in help_text


def test_temperature_zero_is_greedy():
    logits = _logits()
    got = next_token(logits, _empty_history(4), SamplingConfig(temperature=0.0))
    assert torch.equal(got, logits.argmax(-1))


def test_top_k_one_equals_greedy_at_any_temperature():
    logits = _logits()
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        got = next_token(logits, _empty_history(4), SamplingConfig(temperature=5.0, top_k=1), gen)
        assert torch.equal(got, logits.argmax(-1))


def test_sampling_is_not_greedy_and_fixed_seed_reproduces():
    logits = torch.zeros(1, 50)  # uniform: greedy would always give token 0
    cfg = SamplingConfig()
    draw = lambda seed: torch.stack([next_token(logits, _empty_history(1), cfg, gen)  # noqa: E731
                                     for gen in [torch.Generator().manual_seed(seed)] for _ in range(30)])
    first, again, other = draw(7), draw(7), draw(8)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert len(set(first.flatten().tolist())) > 5


def test_top_k_keeps_exactly_the_k_largest():
    logits = _logits(batch=3, vocab=40)
    filtered = filter_top_k(logits, 5)
    kept = torch.isfinite(filtered)
    assert kept.sum(-1).tolist() == [5, 5, 5]
    assert torch.equal(kept, torch.zeros_like(kept).scatter(1, logits.topk(5, dim=-1).indices, True))
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        token = next_token(logits, _empty_history(3), SamplingConfig(top_k=5), gen)
        assert kept.gather(1, token[:, None]).all()


def test_top_p_restricts_to_the_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.1, 0.05, 0.05]])
    logits = probs.log()
    # 0.5 < 0.75, 0.5 + 0.3 >= 0.75: nucleus is {0, 1}
    assert torch.isfinite(filter_top_p(logits, 0.75)).tolist() == [[True, True, False, False, False]]
    assert torch.isfinite(filter_top_p(logits, 0.5)).tolist() == [[True, False, False, False, False]]
    assert torch.isfinite(filter_top_p(logits, 0.81)).tolist() == [[True, True, True, False, False]]
    assert torch.isfinite(filter_top_p(logits, 0.01)).sum() == 1  # at least one token always survives
    gen = torch.Generator().manual_seed(0)
    seen = {int(next_token(logits, _empty_history(1), SamplingConfig(top_p=0.75), gen)) for _ in range(200)}
    assert seen == {0, 1}


def test_top_p_applies_per_row_on_shuffled_vocab():
    logits = _logits(batch=4, vocab=30, seed=3)
    filtered = filter_top_p(logits, 0.9)
    probs = torch.softmax(logits, -1)
    for row in range(4):
        kept = torch.isfinite(filtered[row])
        assert probs[row][kept].sum() >= 0.9
        # dropping the least likely kept token would fall below p: the set is minimal
        smallest = probs[row][kept].min()
        assert probs[row][kept].sum() - smallest < 0.9
        assert (~kept).any() and probs[row][~kept].max() <= smallest


def test_repetition_penalty_follows_ctrl():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    seen = torch.tensor([[0, 1, 1]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0, 0.5]]
    assert logits.tolist() == [[2.0, -2.0, 1.0, 0.5]]
    # greedy with a strong penalty avoids the repeated best token
    assert int(next_token(logits, seen, SamplingConfig(temperature=0.0, repetition_penalty=4.0))) == 2


@pytest.mark.parametrize("kwargs", [dict(temperature=-1.0), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5),
                                    dict(repetition_penalty=0.0)])
def test_bad_sampling_flags_are_user_errors(kwargs):
    with pytest.raises(UserError):
        SamplingConfig(**kwargs)
