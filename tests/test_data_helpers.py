"""The C++ index helpers agree with their NumPy twins, and neither overflows int32."""
from __future__ import annotations

import numpy as np
import pytest

from kotomamba.data import index_helpers as h


def test_extension_is_built_by_the_package():
    assert h._helpers is not None, "kotomamba.data._helpers missing: run `pip install -e .` (or build_ext --inplace)"


@pytest.mark.parametrize("seed", range(6))
def test_build_sample_idx_matches_numpy(seed):
    rng = np.random.RandomState(seed)
    sizes = rng.randint(0, 50, size=rng.randint(1, 60)).astype(np.int32)
    sizes[0] = max(sizes[0], 1)
    doc_idx = np.concatenate([rng.permutation(len(sizes)) for _ in range(rng.randint(1, 4))]).astype(np.int64)
    total = int(sizes[doc_idx].sum(dtype=np.int64))
    seq_length = int(rng.randint(1, 20))
    num_samples = h.num_samples_in(total, seq_length)
    expected = h.build_sample_idx_numpy(sizes, doc_idx, seq_length, num_samples)
    np.testing.assert_array_equal(h._helpers.build_sample_idx(sizes, doc_idx, seq_length, num_samples), expected)
    # The definition: entry i locates global token i * seq_length in a non-empty document.
    stream_doc = np.repeat(np.arange(len(doc_idx)), sizes[doc_idx])
    stream_offset = np.concatenate([np.arange(sizes[d]) for d in doc_idx])
    positions = np.arange(num_samples + 1) * seq_length
    np.testing.assert_array_equal(expected[:, 0], stream_doc[positions])
    np.testing.assert_array_equal(expected[:, 1], stream_offset[positions])


def test_build_sample_idx_beyond_int32():
    sizes = np.full(3, 2_000_000_000, dtype=np.int32)  # 6e9 tokens
    doc_idx = np.array([2, 0, 1, 0], dtype=np.int64)
    seq_length = 99_999_989
    num_samples = h.num_samples_in(8_000_000_000, seq_length)
    for build in (h._helpers.build_sample_idx, h.build_sample_idx_numpy):
        out = build(sizes, doc_idx, seq_length, num_samples)
        for i in (1, 21, num_samples):
            token = i * seq_length  # exact Python integers
            assert out[i].tolist() == [token // 2_000_000_000, token % 2_000_000_000]


def test_build_sample_idx_rejects_too_few_tokens():
    sizes, doc_idx = np.array([5], dtype=np.int32), np.array([0], dtype=np.int64)
    for build in (h._helpers.build_sample_idx, h.build_sample_idx_numpy):
        with pytest.raises(ValueError, match="need more than the 5 tokens"):
            build(sizes, doc_idx, 4, 2)


@pytest.mark.parametrize("weights", [[0.3, 0.7], [0.5, 0.25, 0.125, 0.125], [1.0], [0.0, 1.0], np.random.RandomState(1).dirichlet(np.ones(7))])
def test_build_blending_indices_matches_numpy(weights):
    weights = np.asarray(weights, dtype=np.float64)
    size = 3001
    which, nth = h._helpers.build_blending_indices(weights, size)
    ref_which, ref_nth = h.build_blending_indices_numpy(weights, size)
    np.testing.assert_array_equal(which, ref_which)
    np.testing.assert_array_equal(nth, ref_nth)
    assert which.dtype == np.int16 and nth.dtype == np.int64
    counts = np.bincount(which, minlength=len(weights))
    assert np.all(np.abs(counts - weights * size) <= 1)
    for d in range(len(weights)):  # each dataset's samples are taken in order 0, 1, 2, ...
        assert nth[which == d].tolist() == list(range(counts[d]))
