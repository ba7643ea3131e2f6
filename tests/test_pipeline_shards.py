"""Sources of several shards through `snakemake` itself: each shard downloaded and tokenized by its own job,
merged into the bytes one job over the concatenated shards writes; a killed shard job is redone alone.

The shards of the http sources come from a real HTTP server on loopback. The shard jobs spread over the
two nodes of a real cluster: tests/scheduler/test_scheduler_shards.py.
"""
from __future__ import annotations

import gzip
import json
import os
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml
import zstandard
from pipeline_helpers import files_of, one_job, output_of, planned_jobs, snakemake, snakemake_command, tiny_config
from test_data_download import RangeHandler, ShardServer, etag

from kotomamba.data.corpus import write_corpus
from kotomamba.data.train_tokenizer import Sentences, train_tokenizer

pytestmark = pytest.mark.slow
pytest.importorskip("snakemake")

RUN = "results/shards"


class HoldingHandler(RangeHandler):
    """Sends the first ``server.hold_bytes`` of a path in ``server.hold``, then waits for ``server.release``."""

    def do_GET(self):
        if self.path not in self.server.hold:
            return super().do_GET()
        body = self.server.files[self.path]
        self.server.ranges.append(self.headers.get("Range"))
        self.server.requested.set()
        self.send_response(200)
        self.send_header("ETag", etag(body))  # what lets the rerun resume the killed job's transfer
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body[: self.server.hold_bytes])
            self.wfile.flush()
            self.server.release.wait(timeout=600)
            self.wfile.write(body[self.server.hold_bytes :])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the job was killed


@pytest.fixture
def server():
    srv = ShardServer()
    srv.RequestHandlerClass = HoldingHandler
    srv.hold, srv.hold_bytes = set(), 0
    srv.requested, srv.release = threading.Event(), threading.Event()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def lines(tmp_path_factory) -> list[bytes]:
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    write_corpus(path, max_bytes=200_000)
    return path.read_bytes().splitlines(keepends=True)


def config_file(workdir: Path, sources: list[dict], tokenizer: str | None = None) -> Path:
    config = tiny_config("shards")
    config["corpus"]["sources"] = sources
    config["tokenizer"].update(vocab_size=500, model=tokenizer)
    config["tokenize"]["workers"] = 1  # a shard job on one core, another job on the other
    path = workdir / "run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def tokenized(source: str) -> str:
    return f"{RUN}/tokenized/{source}_text_document.idx"


def test_sources_of_several_shards_tokenize_into_the_one_job_bytes(server, lines, tmp_path):
    third = len(lines) // 3
    web = [b"".join(lines[:third]).rstrip(b"\n"), b"".join(lines[third : 2 * third]), b"".join(lines[2 * third :])]
    server.files.update({"/a/00.jsonl.gz": gzip.compress(web[0]),
                         "/b/01.jsonl.zst": zstandard.ZstdCompressor().compress(web[1]), "/c/02": web[2]})
    local = [b"".join(lines[: 2 * third : 2]), b"".join(lines[1 : 2 * third : 2])]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "part-0.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(local[0]))
    (tmp_path / "data" / "part-1.jsonl").write_bytes(local[1])
    run = config_file(tmp_path, [
        {"name": "web", "urls": [f"{server.url}/a/00.jsonl.gz", f"{server.url}/b/01.jsonl.zst", f"{server.url}/c/02"]},
        {"name": "mine", "urls": ["data/part-*"], "weight": 0.5},
    ])
    result = snakemake(tmp_path, run, tokenized("web"), tokenized("mine"))
    assert result.returncode == 0, output_of(result)

    root = tmp_path / RUN
    tokenizer = root / "tokenizer" / "tokenizer.model"
    for name, pieces in (("web", web), ("mine", local)):
        assert files_of(root / "tokenized" / f"{name}_text_document") == one_job(tmp_path, tokenizer, pieces, name)
    # The downloads are kept as published, nothing decompressed; local shards are never copied;
    # the shards' datasets are gone once merged.
    assert sorted(p.relative_to(root / "corpus").as_posix() for p in (root / "corpus").rglob("*")) == [
        "web", "web/00000.jsonl.gz", "web/00001.jsonl.zst", "web/00002.jsonl"]
    assert sorted(p.name for p in (root / "tokenized").rglob("*") if p.is_file()) == [
        "mine_text_document.bin", "mine_text_document.idx", "web_text_document.bin", "web_text_document.idx"]
    rerun = snakemake(tmp_path, run, "-n", tokenized("web"), tokenized("mine"))
    assert "Nothing to be done" in rerun.stdout + rerun.stderr, output_of(rerun)
    # The same local files respelled, with ./ and a doubled slash, are the same inputs: they retrained the
    # tokenizer and retokenized every shard.
    for spelling in ("./data//part-*", "data/./part-*"):
        config = yaml.safe_load(run.read_text())
        config["corpus"]["sources"][1]["urls"] = [spelling]
        respelled = tmp_path / "respelled.yaml"
        respelled.write_text(yaml.safe_dump(config, sort_keys=False))
        rerun = snakemake(tmp_path, respelled, "-n", tokenized("web"), tokenized("mine"))
        assert "Nothing to be done" in rerun.stdout + rerun.stderr, (spelling, output_of(rerun))

    # A local shard replaced by a shorter file with the same change time is still noticed (its size),
    # though the shards' datasets are gone: the merge reruns and with it the shard jobs.
    changed = tmp_path / "data" / "part-1.jsonl"
    stat = changed.stat()
    local[1] = b"".join(lines[1:40:2])
    changed.write_bytes(local[1])
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    plan = planned_jobs(snakemake(tmp_path, run, "-n", tokenized("mine")))
    assert plan.get("tokenize") == 1 and plan.get("tokenize_shard") == 2 and plan.get("tokenizer") == 1, plan
    result = snakemake(tmp_path, run, tokenized("mine"))
    assert result.returncode == 0, output_of(result)
    assert files_of(root / "tokenized" / "mine_text_document") == one_job(tmp_path, tokenizer, local, "mine2")

    # A changed tokenization setting is noticed by the merge too, whose shards' outputs are gone.
    config = yaml.safe_load(run.read_text())
    config["tokenize"]["append_eod"] = False
    run.write_text(yaml.safe_dump(config, sort_keys=False))
    plan = planned_jobs(snakemake(tmp_path, run, "-n", tokenized("mine")))
    assert plan.get("tokenize") == 1 and plan.get("tokenize_shard") == 2 and "tokenizer" not in plan, plan


def test_the_tokenizer_reads_the_tokenized_keys_and_judges_bad_lines_as_tokenization(server, lines, tmp_path):
    """A corpus whose text is under another key, with two bad lines: the tokenizer job stops at the first,
    named by its URL and line, as a shard job would; with ``on_bad_line: skip`` it leaves both out, as the
    shard jobs do, and trains what it would train on the clean corpus."""
    content = [json.dumps({"content": json.loads(line)["text"]}).encode() + b"\n" for line in lines]
    server.files["/a/00.jsonl"] = b"".join(content[:100] + [b'{"content": 3}\n', b'{"text": "a key not tokenized"}\n']
                                           + content[100:])
    run = config_file(tmp_path, [{"name": "web", "urls": [f"{server.url}/a/00.jsonl"]}])
    config = yaml.safe_load(run.read_text())
    config["tokenize"]["json_keys"] = ["content"]
    run.write_text(yaml.safe_dump(config, sort_keys=False))
    target = f"{RUN}/tokenized/web_content_document.idx"

    result = snakemake(tmp_path, run, target)
    assert result.returncode != 0, output_of(result)
    log = (tmp_path / RUN / "logs" / "tokenizer.log").read_text()
    assert f"error: {server.url}/a/00.jsonl:101 (" in log and "key 'content' is int, not a string" in log, log

    config["tokenize"]["on_bad_line"] = "skip"
    run.write_text(yaml.safe_dump(config, sort_keys=False))
    result = snakemake(tmp_path, run, target)
    assert result.returncode == 0, output_of(result)
    (tmp_path / "clean.jsonl").write_bytes(b"".join(content))
    reference = train_tokenizer(Sentences([tmp_path / "clean.jsonl"], ["content"]), 500, "unigram",
                                tmp_path / "reference", seed=config["seed"])
    assert (tmp_path / RUN / "tokenizer" / "tokenizer.model").read_bytes() == reference.read_bytes()


def shard_job(snakemake_pid: int, shard_file: str) -> psutil.Process | None:
    """The `kotomamba download` process snakemake started for ``shard_file``, if running."""
    for child in psutil.Process(snakemake_pid).children(recursive=True):
        try:
            command = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "download" in command and any(part.endswith(shard_file) for part in command):
            return child
    return None


def test_a_killed_shard_job_is_redone_alone(server, lines, tmp_path):
    (tmp_path / "tok.jsonl").write_bytes(b"".join(lines))
    tokenizer = train_tokenizer([tmp_path / "tok.jsonl"], 500, "unigram", tmp_path / "tok")
    shards = [b"".join(lines[:40]), b"".join(lines[40:80]), b"".join(lines) * 12]  # the last over 2 MB
    for index, shard in enumerate(shards):
        server.files[f"/{index}.jsonl"] = shard
    server.hold, server.hold_bytes = {"/2.jsonl"}, 2 << 20
    run = config_file(tmp_path, [{"name": "web", "urls": [f"{server.url}/{i}.jsonl" for i in range(3)]}],
                      tokenizer=str(tokenizer))
    root, summaries = tmp_path / RUN, [tmp_path / RUN / "tokenized" / "web" / f"0000{i}.json" for i in range(2)]
    process = psutil.Popen(snakemake_command(tmp_path, run, tokenized("web")), cwd=tmp_path,
                           stdout=open(tmp_path / "first.out", "w"), stderr=open(tmp_path / "first.err", "w"))
    try:
        deadline = time.monotonic() + 600
        # Shards 0 and 1 tokenized while shard 2's download hangs half-way.
        while not (server.requested.is_set() and all(path.exists() for path in summaries)):
            assert process.poll() is None, (tmp_path / "first.err").read_text()[-3000:]
            assert time.monotonic() < deadline, "the shard jobs never got there"
            time.sleep(0.2)
        job = shard_job(process.pid, "00002.jsonl")
        assert job is not None
        job.kill()
        assert process.wait(timeout=300) != 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    part = root / "corpus" / "web" / ".00002.jsonl.part"
    kept = part.stat().st_size
    assert kept > 0 and not (root / "corpus" / "web" / "00002.jsonl").exists()
    logs = root / "logs" / "tokenize" / "web"
    done = {path.name: path.stat().st_mtime_ns for path in logs.iterdir()}
    assert sorted(done) == ["00000.log", "00001.log"]

    plan = planned_jobs(snakemake(tmp_path, run, "-n", tokenized("web")))
    assert plan.get("download") == 1 and plan.get("tokenize_shard") == 1 and plan.get("tokenize") == 1, plan

    server.hold = set()
    result = snakemake(tmp_path, run, tokenized("web"))
    assert result.returncode == 0, output_of(result)
    assert server.ranges[-1] == f"bytes={kept}-"  # the download resumed where the killed job stopped
    assert {name: (logs / name).stat().st_mtime_ns for name in done} == done  # shards 0 and 1 not redone
    assert files_of(root / "tokenized" / "web_text_document") == one_job(tmp_path, tokenizer, shards, "web")


