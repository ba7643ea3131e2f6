"""GPT datasets: samples cut from the shuffled document stream, splits, epochs, blending, cache, sampler."""
from __future__ import annotations

import numpy as np
import pytest

from kotomamba.data.gpt_dataset import (build_gpt_datasets, parse_data_path, short_of_a_sample,
                                        split_document_ranges)
from kotomamba.data.indexed_dataset import IndexedDatasetWriter
from kotomamba.data.sampler import MicroBatchSampler
from kotomamba.errors import UserError

SEQ = 16


def write_documents(prefix, lengths, tag):
    """Documents whose token t of document d is tag*10^6 + d*1000 + t, so every token says where it came from."""
    with IndexedDatasetWriter(prefix, np.int32) as writer:
        for d, n in enumerate(lengths):
            writer.add_document(tag * 1_000_000 + d * 1000 + np.arange(n))
    return str(prefix)


@pytest.fixture
def prefix(tmp_path):
    lengths = np.random.RandomState(0).randint(1, 40, size=100)
    return write_documents(tmp_path / "a", lengths, tag=1), lengths


def test_samples_are_consecutive_windows_of_the_shuffled_document_stream(prefix):
    path, lengths = prefix
    train, valid, test = build_gpt_datasets(path, "949,50,1", SEQ, seed=3, num_samples=(200, 20, 0))
    assert test is None and len(train) == 200 and len(valid) == 20
    for ds, (first, last) in ((train, (0, 95)), (valid, (95, 100))):
        per_epoch = last - first
        for e in range(ds.num_epochs):  # every epoch is a permutation of the split's documents
            assert sorted(ds.doc_idx[e * per_epoch:(e + 1) * per_epoch].tolist()) == list(range(first, last))
        stream = np.concatenate([1_000_000 + d * 1000 + np.arange(lengths[d]) for d in ds.doc_idx])
        for i in range(len(ds)):
            s = int(ds.shuffle_idx[i])
            tokens = ds[i]["tokens"]
            assert tokens.dtype.is_floating_point is False and tokens.shape == (SEQ + 1,)
            assert tokens.tolist() == stream[s * SEQ: s * SEQ + SEQ + 1].tolist()
    assert valid.num_epochs > 1  # 5 short documents cannot hold 20 samples: repeated epochs


def test_epochs_are_consumed_in_order(prefix):
    path, lengths = prefix
    _, valid, _ = build_gpt_datasets(path, "949,50,1", SEQ, seed=3, num_samples=(0, 40, 0))
    tokens_per_epoch = int(lengths[95:].sum())
    epoch_of = valid.shuffle_idx * SEQ // tokens_per_epoch
    assert (np.diff(epoch_of) >= 0).all()
    assert len(set(valid.shuffle_idx.tolist())) == len(valid)


def test_seq_idx_numbers_documents_within_each_sample(prefix):
    path, _ = prefix
    train, _, _ = build_gpt_datasets(path, "1,0,0", SEQ, seed=0, num_samples=(50, 0, 0), reset_at_eod=True)
    for i in range(len(train)):
        item = train[i]
        positions = item["tokens"].numpy() % 1000
        starts = np.concatenate([[0], (positions[1:SEQ] == 0).astype(np.int32)])
        assert item["seq_idx"].dtype.itemsize == 4 and item["seq_idx"].shape == (SEQ,)
        assert item["seq_idx"].tolist() == np.cumsum(starts).tolist()
    assert "seq_idx" not in build_gpt_datasets(path, "1,0,0", SEQ, 0, (5, 0, 0))[0][0]


def test_same_config_same_order_and_cache_reused(prefix, tmp_path):
    path, _ = prefix
    cache = tmp_path / "cache"
    first = build_gpt_datasets(path, "949,50,1", SEQ, seed=7, num_samples=(64, 8, 0), cache_dir=cache)[0]
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 6  # doc/sample/shuffle index of train and valid
    again = build_gpt_datasets(path, "949,50,1", SEQ, seed=7, num_samples=(64, 8, 0), cache_dir=cache)[0]
    assert isinstance(again.sample_idx, np.memmap)  # loaded from the cache, not rebuilt
    assert sorted(p.name for p in cache.iterdir()) == files
    uncached = build_gpt_datasets(path, "949,50,1", SEQ, seed=7, num_samples=(64, 8, 0))[0]
    for i in range(64):
        assert first[i]["tokens"].tolist() == again[i]["tokens"].tolist() == uncached[i]["tokens"].tolist()
    other = build_gpt_datasets(path, "949,50,1", SEQ, seed=8, num_samples=(64, 8, 0), cache_dir=cache)[0]
    assert len(list(cache.iterdir())) == 12
    assert [other[i]["tokens"].tolist() for i in range(64)] != [first[i]["tokens"].tolist() for i in range(64)]


def test_empty_split_is_an_error_naming_the_split(prefix):
    path, _ = prefix
    with pytest.raises(UserError, match=r"test split .*0 of the 100 documents"):
        build_gpt_datasets(path, "949,50,1", SEQ, seed=0, num_samples=(10, 10, 10))


def test_blending_follows_the_weights(tmp_path):
    a = write_documents(tmp_path / "a", [30] * 40, tag=1)
    b = write_documents(tmp_path / "b", [50] * 40, tag=2)
    train, valid, _ = build_gpt_datasets(f"0.3 {a} 0.7 {b}", "90,10,0", SEQ, seed=1, num_samples=(500, 50, 0),
                                         cache_dir=tmp_path / "cache")
    assert len(train) == 500 and len(valid) == 50
    sources = np.array([train[i]["tokens"][0].item() // 1_000_000 for i in range(500)])
    for n in (1, 10, 99, 500):
        assert abs((sources[:n] == 1).sum() - 0.3 * n) <= 1
    same = build_gpt_datasets([0.3, a, 0.7, b], "90,10,0", SEQ, seed=1, num_samples=(500, 50, 0))[0]
    assert all(same[i]["tokens"].tolist() == train[i]["tokens"].tolist() for i in range(0, 500, 37))


def test_data_path_and_split_parsing():
    assert parse_data_path("p") == [(1.0, "p")]
    assert parse_data_path("1 a 3 b") == [(0.25, "a"), (0.75, "b")]
    for bad in ("a b", "1 a 2", "x a 1 b", "0 a 0 b"):
        with pytest.raises(UserError):
            parse_data_path(bad)
    assert split_document_ranges(100, [0.949, 0.05, 0.001]) == [(0, 95), (95, 100), (100, 100)]
    assert split_document_ranges(3, [1 / 3] * 3) == [(0, 1), (1, 2), (2, 3)]


def test_sampler_partitions_global_batches_and_resumes_exactly():
    world, mbs, total = 3, 2, 40
    per_rank = [list(MicroBatchSampler(total, 0, mbs, r, world)) for r in range(world)]
    assert all(len(batches) == total // (mbs * world) for batches in per_rank)
    for step in range(len(per_rank[0])):
        block = sum((per_rank[r][step] for r in range(world)), [])
        assert block == list(range(step * mbs * world, (step + 1) * mbs * world))
    consumed = 2 * mbs * world
    resumed = [list(MicroBatchSampler(total, consumed, mbs, r, world)) for r in range(world)]
    assert resumed == [batches[2:] for batches in per_rank]
    assert len(MicroBatchSampler(total, consumed, mbs, 0, world)) == len(per_rank[0]) - 2
    with pytest.raises(ValueError):
        MicroBatchSampler(total, 0, mbs, 3, world)


def test_same_global_sample_order_on_any_number_of_ranks(prefix):
    path, _ = prefix
    train = build_gpt_datasets(path, "949,50,1", SEQ, seed=5, num_samples=(48, 1, 0))[0]

    def global_order(world, mbs, consumed=0):
        per_rank = [list(MicroBatchSampler(len(train), consumed, mbs, r, world)) for r in range(world)]
        return [i for step in zip(*per_rank) for batch in step for i in batch]

    one = global_order(1, 8)
    assert one == global_order(2, 4) == global_order(4, 2) == list(range(48))
    assert global_order(2, 4, consumed=16) == one[16:]


def test_fewest_epochs_that_hold_the_samples():
    from kotomamba.data.gpt_dataset import _epochs_needed
    from kotomamba.data.index_helpers import num_samples_in

    for tokens_per_epoch in (1, 7, 100, 1001):
        for seq_length in (1, 3, 16):
            for wanted in (0, 1, 5, 99, 1000, 10**12):
                epochs = _epochs_needed(tokens_per_epoch, seq_length, wanted)
                assert num_samples_in(epochs * tokens_per_epoch, seq_length) >= wanted
                assert epochs == 1 or num_samples_in((epochs - 1) * tokens_per_epoch, seq_length) < wanted


def test_a_split_shorter_than_one_sample_is_named(tmp_path):
    """Each prefix's part of a blended split by itself; a split of exactly one sample is not short."""
    a = write_documents(tmp_path / "a", [10] * 20, tag=1)  # "90,10,0": 180 train tokens, 20 valid tokens
    b = write_documents(tmp_path / "b", [10] * 100, tag=2)  # 900 train tokens, 100 valid tokens
    train, valid, test = build_gpt_datasets(f"0.5 {a} 0.5 {b}", "90,10,0", 2 * SEQ, seed=0, num_samples=(20, 20, 0))
    assert short_of_a_sample(train) == short_of_a_sample(test) == []
    assert short_of_a_sample(valid) == [f"{a}: the valid split holds 20 tokens (2 documents), fewer than one sample "
                                        f"of seq_length + 1 = {2 * SEQ + 1}"]
    assert short_of_a_sample(build_gpt_datasets(b, "90,10,0", 99, seed=0, num_samples=(0, 5, 0))[1]) == []
    assert len(short_of_a_sample(build_gpt_datasets(b, "90,10,0", 100, seed=0, num_samples=(0, 5, 0))[1])) == 1
