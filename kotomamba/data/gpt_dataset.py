"""GPT-style pretraining datasets over Megatron indexed datasets: splits, epochs, samples, blending.

``build_gpt_datasets(data_path, split, seq_length, seed, num_samples, cache_dir, reset_at_eod)``
returns ``(train, valid, test)``; each item is ``{"tokens": int64[seq_length + 1]}`` plus, with
``reset_at_eod``, ``"seq_idx": int32[seq_length]``: the document number of each input position,
counted from 0 in every sample, so Mamba-2 resets its state where a document starts.

How samples are made (as Megatron-LM's ``GPTDataset``, re-derived):

1. ``split`` ("949,50,1") divides each prefix's documents into consecutive train/valid/test
   ranges (rounded shares, as Megatron's ``get_split_indices``).
2. A split's documents are shuffled once per epoch (seeded by seed, split and epoch) and
   concatenated for as many epochs as ``num_samples`` needs (``doc_idx``).
3. That token stream is cut into overlapping samples of ``seq_length + 1`` tokens
   (``build_sample_idx``) and the samples of each epoch are shuffled (``shuffle_idx``), so every
   document is seen once before any is seen twice. A split of fewer tokens than one sample repeats its
   documents within every sample; :func:`short_of_a_sample` names such a split for the caller to refuse
   or warn of.
4. Several prefixes with weights (``"0.3 A 0.7 B"``) are interleaved by
   ``build_blending_indices``; each dataset is sized to exactly the samples the blend draws.

The index arrays depend only on the documents' sizes and these settings; with ``cache_dir`` they
are saved as ``.npy`` named by a hash of all of that and memory-mapped on later runs. Everything is
a pure function of the configuration, so every rank sees the same sample order.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from kotomamba.data.index_helpers import build_blending_indices, build_sample_idx, num_samples_in
from kotomamba.data.indexed_dataset import IndexedDataset
from kotomamba.errors import UserError
from kotomamba.io import atomic_write

SPLIT_NAMES = ("train", "valid", "test")
# Bump when the way index arrays are derived changes, so stale caches are never reused.
_INDEX_FORMAT = 1


def parse_data_path(data_path: str | Sequence) -> list[tuple[float, str]]:
    """Megatron's ``--data-path``: ``"prefix"`` or ``"w1 p1 w2 p2 ..."`` (a string or a list of words).

    Returns ``[(weight, prefix), ...]`` with weights normalised to sum to 1.
    """
    words = data_path.split() if isinstance(data_path, str) else [w for item in data_path for w in str(item).split()]
    if not words:
        raise UserError("data path is empty: give a prefix or 'weight prefix weight prefix ...'")
    if len(words) == 1:
        return [(1.0, words[0])]
    if len(words) % 2:
        raise UserError(f"data path {' '.join(words)!r}: expected 'weight prefix' pairs, got {len(words)} words")
    pairs = []
    for weight, prefix in zip(words[::2], words[1::2]):
        try:
            value = float(weight)
        except ValueError:
            raise UserError(f"data path: {weight!r} (before {prefix!r}) is not a weight") from None
        if not value >= 0 or not np.isfinite(value):
            raise UserError(f"data path: weight {weight!r} of {prefix!r} must be a finite number >= 0")
        pairs.append((value, prefix))
    total = sum(w for w, _ in pairs)
    if total <= 0:
        raise UserError(f"data path {' '.join(words)!r}: weights add up to 0")
    return [(w / total, p) for w, p in pairs]


def parse_split(split: str | Sequence[float]) -> list[float]:
    """``"949,50,1"`` (or ``"949/50/1"`` or a list) -> three fractions summing to 1."""
    parts = split.replace("/", ",").split(",") if isinstance(split, str) else list(split)
    try:
        values = [float(p) for p in parts if str(p).strip() != ""]
    except ValueError:
        raise UserError(f"split {split!r}: expected up to three comma-separated numbers like 949,50,1") from None
    if not 1 <= len(values) <= 3 or any(v < 0 for v in values) or sum(values) <= 0:
        raise UserError(f"split {split!r}: expected up to three non-negative numbers with a positive sum")
    values += [0.0] * (3 - len(values))
    total = sum(values)
    return [v / total for v in values]


def split_document_ranges(num_documents: int, fractions: Sequence[float]) -> list[tuple[int, int]]:
    """Consecutive ``[start, end)`` document ranges, one per split (Megatron's rounding)."""
    bounds = [0]
    for fraction in fractions:
        bounds.append(bounds[-1] + int(round(fraction * float(num_documents))))
    overshoot = bounds[-1] - num_documents
    bounds = [bounds[0]] + [b - overshoot for b in bounds[1:]]
    bounds = [min(max(b, 0), num_documents) for b in bounds]
    return [(bounds[i], bounds[i + 1]) for i in range(len(fractions))]


def _seed_for(seed: int, *stream: int) -> np.random.RandomState:
    # RandomState's streams are frozen by NumPy's compatibility policy, so caches stay valid.
    state = np.random.SeedSequence([int(seed), *map(int, stream)]).generate_state(1)[0]
    return np.random.RandomState(int(state))


@dataclass(frozen=True)
class _IndexSpec:
    """Everything that determines one dataset's index arrays (hashed into the cache name)."""

    sizes_sha256: str
    first_document: int
    last_document: int
    seq_length: int
    num_samples: int
    seed: int
    split: int

    def key(self) -> str:
        text = json.dumps({"format": _INDEX_FORMAT, **self.__dict__}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def _cached(cache_dir: Path | None, name: str, build) -> np.ndarray:
    """``build()``, or the array saved under ``cache_dir/name`` by an earlier call."""
    if cache_dir is None:
        return build()
    path = cache_dir / name
    if path.is_file():
        return np.load(path, mmap_mode="r", allow_pickle=False)
    array = build()
    with atomic_write(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
    return array


class GPTDataset(torch.utils.data.Dataset):
    """``num_samples`` samples of ``seq_length + 1`` tokens over documents ``[first, last)`` of one prefix."""

    def __init__(self, indexed: IndexedDataset, documents: tuple[int, int], seq_length: int, num_samples: int,
                 seed: int, split: int, cache_dir: str | os.PathLike | None = None, reset_at_eod: bool = False):
        self.indexed = indexed
        self.seq_length = int(seq_length)
        self.num_samples = int(num_samples)
        self.reset_at_eod = reset_at_eod
        self.split, self.documents = split, documents
        first, last = documents
        sizes = indexed.sizes[first:last]
        self.tokens_per_epoch = tokens_per_epoch = int(sizes.sum(dtype=np.int64))
        if tokens_per_epoch == 0:
            raise UserError(f"{indexed.prefix}: the {SPLIT_NAMES[split]} split has no tokens "
                            f"(documents {first}..{last} of {len(indexed)})")
        self.num_epochs = _epochs_needed(tokens_per_epoch, self.seq_length, self.num_samples)
        spec = _IndexSpec(hashlib.sha256(sizes.tobytes()).hexdigest(), first, last, self.seq_length,
                          self.num_samples, int(seed), split)
        key = spec.key()
        cache = Path(cache_dir) if cache_dir is not None else None

        def make_doc_idx() -> np.ndarray:
            epochs = [first + _seed_for(seed, split, epoch).permutation(last - first) for epoch in range(self.num_epochs)]
            return np.concatenate(epochs).astype(np.int64)

        self.doc_idx = _cached(cache, f"{key}_doc_idx.npy", make_doc_idx)
        total_samples = num_samples_in(self.num_epochs * tokens_per_epoch, self.seq_length)
        self.sample_idx = _cached(cache, f"{key}_sample_idx.npy",
                                  lambda: build_sample_idx(indexed.sizes, self.doc_idx, self.seq_length, total_samples))

        def make_shuffle_idx() -> np.ndarray:
            # Shuffle the samples that start in each epoch among themselves.
            epoch_of_sample = np.arange(total_samples, dtype=np.int64) * self.seq_length // tokens_per_epoch
            bounds = np.searchsorted(epoch_of_sample, np.arange(self.num_epochs + 1), side="left")
            parts = [bounds[e] + _seed_for(seed, split, e, 1).permutation(bounds[e + 1] - bounds[e])
                     for e in range(self.num_epochs)]
            return np.concatenate(parts).astype(np.int64)[: self.num_samples]

        self.shuffle_idx = _cached(cache, f"{key}_shuffle_idx.npy", make_shuffle_idx)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        if not 0 <= idx < self.num_samples:
            raise IndexError(f"sample {idx} out of range for {self.num_samples} samples")
        sample = int(self.shuffle_idx[idx])
        (doc_first, offset_first), (doc_last, offset_last) = self.sample_idx[sample], self.sample_idx[sample + 1]
        pieces = []
        for position in range(int(doc_first), int(doc_last) + 1):
            document = int(self.doc_idx[position])
            start = int(offset_first) if position == doc_first else 0
            end = int(offset_last) + 1 if position == doc_last else int(self.indexed.sizes[document])
            if end > start:
                pieces.append(self.indexed.get(document, start, end - start))
        tokens = np.concatenate(pieces).astype(np.int64)
        item = {"tokens": torch.from_numpy(tokens)}
        if self.reset_at_eod:
            lengths = [len(p) for p in pieces]
            seq_idx = np.repeat(np.arange(len(pieces), dtype=np.int32), lengths)[: self.seq_length]
            item["seq_idx"] = torch.from_numpy(np.ascontiguousarray(seq_idx))
        return item


def _epochs_needed(tokens_per_epoch: int, seq_length: int, num_samples: int) -> int:
    """Fewest epochs E with (E * tokens_per_epoch - 1) // seq_length >= num_samples."""
    needed_tokens = num_samples * seq_length + 1
    return max(1, -(-needed_tokens // tokens_per_epoch))


class BlendedDataset(torch.utils.data.Dataset):
    """``size`` samples drawn from several datasets in proportion to ``weights``, interleaved."""

    def __init__(self, datasets: Sequence, dataset_index: np.ndarray, dataset_sample_index: np.ndarray):
        self.datasets = list(datasets)
        self.dataset_index = dataset_index
        self.dataset_sample_index = dataset_sample_index

    def __len__(self) -> int:
        return len(self.dataset_index)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        return self.datasets[int(self.dataset_index[idx])][int(self.dataset_sample_index[idx])]


def short_of_a_sample(dataset: GPTDataset | BlendedDataset | None) -> list[str]:
    """What holds fewer tokens than one sample (``seq_length + 1``) of ``dataset`` (one split, or each prefix's part
    of a blended split; None: a split not built): ``"<prefix>: the <split> split holds N tokens (D documents), fewer
    than one sample of seq_length + 1 = M"`` for each, [] for none. Every sample of such a part spans several of its
    epochs: the same few documents, repeated within the sample."""
    parts = dataset.datasets if isinstance(dataset, BlendedDataset) else [dataset]
    return [f"{part.indexed.prefix}: the {SPLIT_NAMES[part.split]} split holds {part.tokens_per_epoch} tokens "
            f"({part.documents[1] - part.documents[0]} documents), fewer than one sample of seq_length + 1 = "
            f"{part.seq_length + 1}" for part in parts if part is not None and part.tokens_per_epoch <= part.seq_length]


def build_gpt_datasets(data_path: str | Sequence, split: str | Sequence[float], seq_length: int, seed: int,
                       num_samples: Sequence[int], cache_dir: str | os.PathLike | None = None,
                       reset_at_eod: bool = False) -> tuple:
    """``(train, valid, test)`` datasets; a split asked for 0 samples is ``None``.

    Args:
        data_path: ``"prefix"`` or ``"w1 prefix1 w2 prefix2 ..."`` (or the same words as a list);
            a prefix names ``<prefix>.bin`` / ``<prefix>.idx``.
        split: document shares of train/valid/test, e.g. ``"949,50,1"``.
        seq_length: input tokens per sample (items hold ``seq_length + 1`` tokens).
        seed: shuffling seed.
        num_samples: samples wanted per split ``(train, valid, test)``; a split with fewer tokens is
            repeated for as many epochs as needed.
        cache_dir: where to keep the index arrays (``None``: build in memory every time).
        reset_at_eod: also return ``seq_idx`` per sample (document number per input position).
    Raises:
        UserError: a split asked for samples has no documents (the message names the split, the
            prefix and how many documents exist), or a prefix is missing or malformed.
    """
    blend = parse_data_path(data_path)
    fractions = parse_split(split)
    if len(num_samples) != 3 or any(int(n) < 0 for n in num_samples):
        raise UserError(f"num_samples must be three non-negative counts (train, valid, test), got {num_samples!r}")
    if int(seq_length) < 1:
        raise UserError(f"seq_length must be positive, got {seq_length}")
    indexed = [IndexedDataset(prefix) for _, prefix in blend]
    ranges = [split_document_ranges(len(ds), fractions) for ds in indexed]
    weights = np.array([w for w, _ in blend], dtype=np.float64)
    cache = Path(cache_dir) if cache_dir is not None else None

    def one(ds_number: int, split_number: int, count: int) -> GPTDataset:
        ds = indexed[ds_number]
        first, last = ranges[ds_number][split_number]
        if last <= first:
            raise UserError(
                f"{ds.prefix}: the {SPLIT_NAMES[split_number]} split (split {split!r}) gets 0 of the "
                f"{len(ds)} documents but {count} samples were asked for; add documents or change the split")
        return GPTDataset(ds, (first, last), seq_length, count, seed, split_number, cache, reset_at_eod)

    datasets = []
    for split_number, wanted in enumerate(int(n) for n in num_samples):
        if wanted == 0:
            datasets.append(None)
            continue
        if len(indexed) == 1:
            datasets.append(one(0, split_number, wanted))
            continue
        blend_key = hashlib.sha256(json.dumps(
            {"format": _INDEX_FORMAT, "weights": weights.tolist(), "size": wanted}).encode()).hexdigest()[:32]
        blend_index = _cached(cache, f"{blend_key}_blend_index.npy",
                              lambda: np.stack([a.astype(np.int64) for a in build_blending_indices(weights, wanted)]))
        dataset_index, dataset_sample_index = blend_index[0], blend_index[1]
        counts = np.bincount(np.asarray(dataset_index, dtype=np.int64), minlength=len(indexed))
        parts = [one(d, split_number, int(c)) if c else None for d, c in enumerate(counts)]
        datasets.append(BlendedDataset(parts, dataset_index, dataset_sample_index))
    return tuple(datasets)
