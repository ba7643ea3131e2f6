"""Preprocessing throughput: `kotomamba preprocess` tokens/s per worker vs the tokenizer's own batch encoder.

The reference is the tokenizer alone: ``encode_batch`` over the same texts, already in memory, on
one thread. ``preprocess`` adds reading, JSON parsing, validation, IPC and writing; the goal is
>= 0.9 of the reference per worker, near-linear in workers. Wall-clock rates depend on what else
the machine runs, so CPU-time rates (tokens per CPU-second of every process involved: the main
process plus its workers) are printed too; their ratio is the per-worker efficiency on a machine
with a free core per worker. ``--workers 0`` encodes in the main process (no worker processes;
its "per worker" is the one process). Text: the embedded default corpus
(Python standard-library docstrings), repeated to ``--megabytes``.

    python bench/preprocess_throughput.py --workers 1 2 [--tokenizer-type T --tokenizer-model M]

``--shards N --megabytes M`` measures the pipeline's way instead (rules/tokenize.smk): N shards of
M MB of JSONL each, written zstd-compressed; each tokenized as one shard job does (``preprocess``
of the compressed file, ``--workers`` processes, ``--allow-empty``), then merged into one dataset
(``merge_datasets``). It prints each shard job's documents and tokens per second (per worker,
against ``encode_batch``), the merge's rate, and the bytes on disk: compressed shards, the shards'
datasets (temporary in the pipeline) and the merged one. Each shard holds the docstrings in its own
shuffled order, joined ``--docs-per-line`` to a document, so no two shards repeat each other.

    python bench/preprocess_throughput.py --shards 4 --megabytes 500 --workers 1 --docs-per-line 8
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

from kotomamba.data.corpus import write_corpus
from kotomamba.data import preprocess as preprocess_module
from kotomamba.data.merge import merge_datasets
from kotomamba.data.preprocess import preprocess
from kotomamba.data.tokenizer import build_tokenizer
from kotomamba.data.train_tokenizer import train_tokenizer


def make_input(directory: Path, megabytes: float, docs_per_line: int) -> Path:
    """The corpus repeated to ``megabytes``; ``docs_per_line`` docstrings joined into one document
    (docstrings average ~80 tokens, web documents several hundred: per-line costs weigh less)."""
    corpus = directory / "corpus.jsonl"
    write_corpus(corpus)
    texts = [json.loads(line)["text"] for line in corpus.read_text(encoding="utf-8").splitlines()]
    joined = ["\n\n".join(texts[i : i + docs_per_line]) for i in range(0, len(texts), docs_per_line)]
    data = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in joined).encode("utf-8")
    target = directory / "bench.jsonl"
    with open(target, "wb") as handle:
        for _ in range(max(1, round(megabytes * 1e6 / len(data)))):
            handle.write(data)
    return target


def make_shards(directory: Path, shards: int, megabytes: float, docs_per_line: int) -> list[Path]:
    """``shards`` zstd-compressed JSONL files of about ``megabytes`` (uncompressed) each."""
    import random

    import zstandard

    corpus = directory / "corpus.jsonl"
    write_corpus(corpus)
    texts = [json.loads(line)["text"] for line in corpus.read_text(encoding="utf-8").splitlines()]
    paths = []
    for index in range(shards):
        rng, path, written = random.Random(index), directory / f"shard-{index:02d}.jsonl.zst", 0
        with open(path, "wb") as raw, zstandard.ZstdCompressor(level=3).stream_writer(raw) as writer:
            while written < megabytes * 1e6:
                order = rng.sample(texts, len(texts))
                joined = ["\n\n".join(order[i : i + docs_per_line]) for i in range(0, len(order), docs_per_line)]
                data = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in joined).encode("utf-8")
                writer.write(data)
                written += len(data)
        paths.append(path)
    return paths


def shard_benchmark(args) -> None:
    """The pipeline's shard jobs and merge, timed (see the module docstring)."""
    workers = args.workers[0]
    directory = Path(args.directory or tempfile.mkdtemp(prefix="shards-"))
    directory.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    shards = make_shards(directory, args.shards, args.megabytes, args.docs_per_line)
    print(f"host: {platform.node()}, {os.cpu_count()} CPUs; load average {load_average()}; "
          f"{args.shards} shards of {args.megabytes:.0f} MB written in {time.perf_counter() - start:.0f} s")
    model = args.tokenizer_model or str(train_tokenizer([directory / "corpus.jsonl"], 8000, "unigram", directory / "tok"))
    tokenizer = build_tokenizer(args.tokenizer_type, model)
    texts = [json.loads(line)["text"] for line in (directory / "corpus.jsonl").read_text().splitlines()]
    # The reference encodes documents as long as the shards' (docstrings joined the same way).
    texts = ["\n\n".join(texts[i : i + args.docs_per_line]) for i in range(0, len(texts), args.docs_per_line)]
    ref_tokens, ref_wall, ref_cpu = reference_rate(tokenizer, texts * 4)
    print(f"tokenizer encode_batch, 1 thread: {ref_tokens / ref_wall:,.0f} tokens/s wall, "
          f"{ref_tokens / ref_cpu:,.0f} tokens/CPU-s")
    print(f"{'shard':>5} {'MB zst':>7} {'MB jsonl':>8} {'docs/s':>8} {'tokens/s':>11} {'per worker':>11} {'ratio':>5} "
          f"{'tokens/CPU-s':>12} {'CPU ratio':>9} {'load':>5}")
    prefixes, total_tokens, total_seconds, total_bytes = [], 0, 0.0, 0
    for index, shard in enumerate(shards):
        prefix = directory / "tokenized" / f"{index:05d}"
        cpu = cpu_seconds()
        summary = preprocess([str(shard)], str(prefix), args.tokenizer_type, model, append_eod=True, workers=workers,
                             progress=False, allow_empty=True)
        cpu = cpu_seconds() - cpu
        tokens, documents = summary.tokens["text"], summary.documents["text"]
        rate, processes = tokens / summary.seconds, max(workers, 1)
        print(f"{index:>5} {shard.stat().st_size / 1e6:>7.1f} {summary.bytes / 1e6:>8.1f} "
              f"{documents / summary.seconds:>8,.0f} {rate:>11,.0f} {rate / processes:>11,.0f} "
              f"{rate / processes / (ref_tokens / ref_wall):>5.2f} {tokens / cpu:>12,.0f} "
              f"{tokens / cpu / (ref_tokens / ref_cpu):>9.2f} {os.getloadavg()[0]:>5.2f}", flush=True)
        prefixes.append(f"{prefix}_text_document")
        total_tokens, total_seconds, total_bytes = total_tokens + tokens, total_seconds + summary.seconds, \
            total_bytes + summary.bytes
    start = time.perf_counter()
    merge_datasets(prefixes, directory / "merged_text_document")
    merge_seconds = time.perf_counter() - start
    sizes = {name: sum(p.stat().st_size for p in paths) for name, paths in (
        ("compressed shards", shards), ("shard datasets", list((directory / "tokenized").glob("*_document.*"))),
        ("merged dataset", list(directory.glob("merged_text_document.*"))))}
    merged = sizes["merged dataset"]
    print(f"all shards: {total_bytes / 1e6:,.0f} MB of JSONL, {total_tokens:,} tokens "
          f"({total_tokens / total_bytes:.3f} tokens/byte) in {total_seconds:,.0f} s of shard jobs: "
          f"{total_bytes / total_seconds / 1e6 / max(workers, 1):.2f} MB/s and "
          f"{total_tokens / total_seconds / max(workers, 1):,.0f} tokens/s per worker")
    print(f"merge: {merged / 1e6:,.0f} MB in {merge_seconds:.1f} s ({merged / merge_seconds / 1e6:,.0f} MB/s)")
    print("on disk: " + ", ".join(f"{name} {size / 1e6:,.0f} MB" for name, size in sizes.items()))


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the preprocessing workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def reference_rate(tokenizer, texts: list[str], batch: int = 2048) -> tuple[int, float, float]:
    """(tokens, wall seconds, CPU seconds) of the tokenizer's batch encoder over ``texts`` in memory."""
    start, cpu = time.perf_counter(), cpu_seconds()
    tokens = 0
    for i in range(0, len(texts), batch):
        tokens += sum(map(len, tokenizer.encode_batch(texts[i : i + batch])))
    return tokens, time.perf_counter() - start, cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--megabytes", type=float, default=50.0)
    parser.add_argument("--docs-per-line", type=int, default=1, help="docstrings joined into each document")
    parser.add_argument("--tokenizer-type", default="SentencePieceTokenizer")
    parser.add_argument("--tokenizer-model", help="default: a unigram model (vocab 8000) trained on the corpus")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of measurements; the best of each is kept")
    parser.add_argument("--shards", type=int, help="measure N shard jobs and their merge (--megabytes each)")
    parser.add_argument("--directory", help="with --shards: where to write (kept; default a new temporary one)")
    args = parser.parse_args()
    # One thread per process: the comparison is per worker, one core each.
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    if args.shards:
        shard_benchmark(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_input(tmp, args.megabytes, args.docs_per_line)
        model = args.tokenizer_model or str(train_tokenizer([tmp / "corpus.jsonl"], 8000, "unigram", tmp / "tok"))
        tokenizer = build_tokenizer(args.tokenizer_type, model)
        texts = [json.loads(line)["text"] for line in open(data, encoding="utf-8")]
        print(f"host: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
              f"input {data.stat().st_size / 1e6:.1f} MB, {len(texts)} documents, {args.tokenizer_type}")
        parser_name = "orjson" if preprocess_module._fast_loads is not None else "stdlib json"
        print(f"JSON parser: {parser_name}; load average before the runs: {load_average()}")
        # Rounds of (reference, each worker count), best of the rounds for each: on a shared
        # machine the speed of a core drifts over minutes, so the runs compared are taken close together.
        reference, best_wall, best_cpu = [], {}, {}
        for repeat in range(args.repeats):
            reference.append(reference_rate(tokenizer, texts))
            for workers in args.workers:
                cpu = cpu_seconds()
                summary = preprocess([str(data)], str(tmp / "out"), args.tokenizer_type, model,
                                     append_eod=True, workers=workers, progress=False)
                best_cpu[workers] = min(best_cpu.get(workers, float("inf")), cpu_seconds() - cpu)
                best_wall[workers] = min(best_wall.get(workers, float("inf")), summary.seconds)
        ref_tokens = reference[0][0]
        ref_rate = ref_tokens / min(r[1] for r in reference)
        ref_cpu_rate = ref_tokens / min(r[2] for r in reference)
        print(f"{ref_tokens / len(texts):.0f} tokens per document; load average after the runs: {load_average()}")
        print(f"tokenizer encode_batch, 1 thread: {ref_rate:,.0f} tokens/s wall, {ref_cpu_rate:,.0f} tokens/CPU-s "
              f"({ref_tokens} tokens)")
        print(f"{'workers':>7} {'tokens/s':>12} {'per worker':>12} {'ratio':>6} {'tokens/CPU-s':>13} {'CPU ratio':>9}")
        tokens = summary.tokens["text"]
        for workers in args.workers:
            rate, cpu_rate, processes = tokens / best_wall[workers], tokens / best_cpu[workers], max(workers, 1)
            print(f"{workers:>7} {rate:>12,.0f} {rate / processes:>12,.0f} {rate / processes / ref_rate:>6.2f} "
                  f"{cpu_rate:>13,.0f} {cpu_rate / ref_cpu_rate:>9.2f}")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())

if __name__ == "__main__":
    main()
