"""Sample and blending indices: the C++ helpers (``_helpers.cpp``) and their NumPy twins.

``build_sample_idx`` cuts a stream of documents into samples of ``seq_length + 1`` tokens that
overlap by one token (the last label of sample i is the first input of sample i+1), as
Megatron-LM's ``helpers.cpp``: entry ``i`` is ``(position in doc_idx, token offset)`` of global
token ``i * seq_length`` of the concatenated documents, for ``i = 0 .. num_samples``.

``build_blending_indices`` interleaves several datasets so that after every prefix of ``i``
samples each dataset's share is as close as possible to its weight (greedy: pick the dataset
furthest behind ``weight * i``, the first one on ties), as Megatron-LM's blending.

Both use int64 for every position and offset, so corpora beyond 2^31 tokens are fine. The C++
versions are used when the compiled extension is importable; ``*_numpy`` are the reference twins
(the test suite checks that they agree).
"""
from __future__ import annotations

import numpy as np

try:
    from kotomamba.data import _helpers
except ImportError:  # the package was not built with its extension: fall back to NumPy
    _helpers = None

if _helpers is not None and not hasattr(_helpers, "build_sample_idx"):
    _helpers = None  # a stale build from before the helpers existed


def num_samples_in(num_tokens: int, seq_length: int) -> int:
    """How many overlapping samples of ``seq_length + 1`` tokens ``num_tokens`` tokens hold."""
    return max(0, (int(num_tokens) - 1) // int(seq_length))


def build_sample_idx_numpy(sizes: np.ndarray, doc_idx: np.ndarray, seq_length: int, num_samples: int) -> np.ndarray:
    """Reference twin of ``build_sample_idx``.

    Args:
        sizes: int32[num_documents], tokens per document.
        doc_idx: int64[n], document order (documents may repeat across epochs).
        seq_length: tokens per sample, not counting the extra label token.
        num_samples: samples to index; needs ``num_samples * seq_length + 1`` tokens in ``doc_idx``.
    Returns:
        int64[num_samples + 1, 2]: (index into ``doc_idx``, offset in that document).
    """
    lengths = np.asarray(sizes, dtype=np.int64)[np.asarray(doc_idx, dtype=np.int64)]
    ends = np.cumsum(lengths)
    positions = np.arange(num_samples + 1, dtype=np.int64) * int(seq_length)
    total = int(ends[-1]) if len(ends) else 0
    if positions[-1] >= total:
        raise ValueError(f"{num_samples} samples of {seq_length}+1 tokens need more than the {total} tokens given")
    which = np.searchsorted(ends, positions, side="right")
    out = np.empty((num_samples + 1, 2), dtype=np.int64)
    out[:, 0] = which
    out[:, 1] = positions - (ends - lengths)[which]
    return out


def build_blending_indices_numpy(weights: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference twin of ``build_blending_indices``.

    Args:
        weights: float64[num_datasets], normalised to sum to 1.
        size: number of blended samples.
    Returns:
        (dataset_index int16[size], dataset_sample_index int64[size]).
    """
    weights = np.asarray(weights, dtype=np.float64)
    dataset_index = np.empty(size, dtype=np.int16)
    dataset_sample_index = np.empty(size, dtype=np.int64)
    counts = [0] * len(weights)
    for i in range(size):
        scale = float(max(i, 1))
        best, best_error = 0, -np.inf
        for d, w in enumerate(weights.tolist()):
            error = w * scale - counts[d]
            if error > best_error:
                best, best_error = d, error
        dataset_index[i] = best
        dataset_sample_index[i] = counts[best]
        counts[best] += 1
    return dataset_index, dataset_sample_index


def build_sample_idx(sizes: np.ndarray, doc_idx: np.ndarray, seq_length: int, num_samples: int) -> np.ndarray:
    """See ``build_sample_idx_numpy``; runs the C++ helper when it is built."""
    if _helpers is None:
        return build_sample_idx_numpy(sizes, doc_idx, seq_length, num_samples)
    return _helpers.build_sample_idx(
        np.ascontiguousarray(sizes, dtype=np.int32), np.ascontiguousarray(doc_idx, dtype=np.int64),
        int(seq_length), int(num_samples),
    )


def build_blending_indices(weights: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """See ``build_blending_indices_numpy``; runs the C++ helper when it is built."""
    if _helpers is None:
        return build_blending_indices_numpy(weights, size)
    return _helpers.build_blending_indices(np.ascontiguousarray(weights, dtype=np.float64), int(size))
