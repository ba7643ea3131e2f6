"""Preprocessing throughput: `kotomamba preprocess` tokens/s per worker vs the tokenizer's own batch encoder.

The reference is the tokenizer alone: ``encode_batch`` over the same texts, already in memory, on
one thread. ``preprocess`` adds reading, JSON parsing, validation, IPC and writing; the goal is
>= 0.9 of the reference per worker, near-linear in workers. Text: the embedded default corpus
(Python standard-library docstrings), repeated to ``--megabytes``.

    python bench/preprocess_throughput.py --workers 1 2 [--tokenizer-type T --tokenizer-model M]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from kotomamba.data.corpus import write_corpus
from kotomamba.data.preprocess import preprocess
from kotomamba.data.tokenizer import build_tokenizer
from kotomamba.data.train_tokenizer import train_tokenizer


def make_input(directory: Path, megabytes: float) -> Path:
    corpus = directory / "corpus.jsonl"
    write_corpus(corpus)
    data = corpus.read_bytes()
    target = directory / "bench.jsonl"
    with open(target, "wb") as handle:
        for _ in range(max(1, round(megabytes * 1e6 / len(data)))):
            handle.write(data)
    return target


def reference_rate(tokenizer, texts: list[str], batch: int = 2048) -> tuple[int, float]:
    """(tokens, seconds) of the tokenizer's batch encoder over ``texts`` in memory."""
    start = time.perf_counter()
    tokens = 0
    for i in range(0, len(texts), batch):
        tokens += sum(map(len, tokenizer.encode_batch(texts[i : i + batch])))
    return tokens, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--megabytes", type=float, default=20.0)
    parser.add_argument("--tokenizer-type", default="SentencePieceTokenizer")
    parser.add_argument("--tokenizer-model", help="default: a unigram model (vocab 8000) trained on the corpus")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs of each measurement")
    args = parser.parse_args()
    # One thread per process: the comparison is per worker, one core each.
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_input(tmp, args.megabytes)
        model = args.tokenizer_model or str(train_tokenizer([tmp / "corpus.jsonl"], 8000, "unigram", tmp / "tok"))
        tokenizer = build_tokenizer(args.tokenizer_type, model)
        texts = [json.loads(line)["text"] for line in open(data, encoding="utf-8")]
        ref_tokens, ref_seconds = min((reference_rate(tokenizer, texts) for _ in range(args.repeats)), key=lambda r: r[1])
        ref_rate = ref_tokens / ref_seconds
        print(f"host: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
              f"input {data.stat().st_size / 1e6:.1f} MB, {len(texts)} documents, {args.tokenizer_type}")
        print(f"tokenizer encode_batch, 1 thread: {ref_rate:,.0f} tokens/s ({ref_tokens} tokens)")
        print(f"{'workers':>7} {'tokens/s':>12} {'per worker':>12} {'ratio':>6}")
        for workers in args.workers:
            best = None
            for repeat in range(args.repeats):
                summary = preprocess([str(data)], str(tmp / f"out{workers}_{repeat}"), args.tokenizer_type, model,
                                     append_eod=True, workers=workers, progress=False)
                best = summary.seconds if best is None else min(best, summary.seconds)
            rate = summary.tokens["text"] / best
            print(f"{workers:>7} {rate:>12,.0f} {rate / workers:>12,.0f} {rate / workers / ref_rate:>6.2f}")


if __name__ == "__main__":
    main()
