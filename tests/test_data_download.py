"""`kotomamba download` against a real HTTP server on loopback: checksums, resume, decompression, globs."""
from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import signal
import subprocess
import sys
import threading

import pytest
import zstandard

from kotomamba.data.download import Source, download, main, parse_source, source_state
from kotomamba.data.line_origins import locate
from kotomamba.errors import UserError

CONTENT = b"".join(b'{"text": "line %d of a shard"}\n' % i for i in range(5000))


class ShardServer(http.server.ThreadingHTTPServer):
    """Serves ``files`` with Range support; ``cut_first`` paths drop their first response half-way;
    ``hold_first`` paths send half their first response, set ``held`` and wait for ``release``."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.files: dict[str, bytes] = {}
        self.cut_first: set[str] = set()
        self.hold_first: set[str] = set()
        self.held, self.release = threading.Event(), threading.Event()
        self.ranges: list[str | None] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class RangeHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        header = self.headers.get("Range")
        self.server.ranges.append(header)
        start = int(header.removeprefix("bytes=").rstrip("-")) if header else 0
        if start >= len(body) and header:
            self.send_response(416)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if header else 200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if self.path in self.server.cut_first:
            self.server.cut_first.discard(self.path)
            payload = payload[: len(payload) // 2]  # then the connection closes early
        if self.path in self.server.hold_first:
            self.server.hold_first.discard(self.path)
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.server.held.set()
            self.server.release.wait(60)
            return
        self.wfile.write(payload)


@pytest.fixture
def server():
    srv = ShardServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_http_gz_and_zst_are_verified_and_decompressed(server, tmp_path):
    gz, zst = gzip.compress(CONTENT), zstandard.ZstdCompressor().compress(CONTENT)
    server.files.update({"/a.jsonl.gz": gz, "/b.jsonl.zst": zst, "/c.jsonl": CONTENT})
    out = tmp_path / "raw"
    rc = main([f"{server.url}/a.jsonl.gz#sha256={sha(gz)}", f"{server.url}/b.jsonl.zst#sha256={sha(zst)}",
               f"{server.url}/c.jsonl", "--output-dir", str(out)])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.jsonl", "b.jsonl", "c.jsonl"]
    assert all((out / n).read_bytes() == CONTENT for n in ("a.jsonl", "b.jsonl", "c.jsonl"))


def test_checksum_mismatch_fails_clearly_and_leaves_nothing(server, tmp_path, capsys):
    server.files["/a.jsonl"] = CONTENT
    wrong = sha(b"something else")
    rc = main([f"{server.url}/a.jsonl", "--sha256", wrong, "--output", str(tmp_path / "corpus.jsonl")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "sha256 mismatch" in err and wrong in err and sha(CONTENT) in err and "/a.jsonl" in err
    assert not (tmp_path / "corpus.jsonl").exists()
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == []  # nor a partial download


def test_pipeline_form_concatenates_shards_into_one_file(server, tmp_path):
    shards = [b'{"text": "a"}\n{"text": "b"}', b'{"text": "c"}\n']  # the first lacks its final newline
    server.files.update({"/0.jsonl.gz": gzip.compress(shards[0]), "/1.jsonl": shards[1]})
    out = tmp_path / "corpus" / "web.jsonl"
    rc = main([f"{server.url}/0.jsonl.gz", f"{server.url}/1.jsonl", "--sha256", sha(gzip.compress(shards[0])),
               "--sha256", sha(shards[1]), "--output", str(out)])
    assert rc == 0
    assert out.read_bytes() == b'{"text": "a"}\n{"text": "b"}\n{"text": "c"}\n'
    assert sorted(p.name for p in out.parent.iterdir()) == ["web.jsonl", "web.jsonl.origins.json"]
    assert locate(out, 2) == f"{server.url}/0.jsonl.gz:2 (line 2 of {out})"  # the piece without a final newline
    assert locate(out, 3) == f"{server.url}/1.jsonl:1 (line 3 of {out})"
    assert main([f"{server.url}/1.jsonl", "--sha256", sha(b""), "--sha256", sha(b""), "--output", str(out)]) == 2


def test_interrupted_transfer_resumes_with_a_range_request(server, tmp_path):
    gz = gzip.compress(CONTENT, compresslevel=1)
    server.files["/big.jsonl.gz"] = gz
    server.cut_first.add("/big.jsonl.gz")
    logs = []
    [path] = download([Source(f"{server.url}/big.jsonl.gz", sha(gz))], tmp_path, log=logs.append)
    assert path.read_bytes() == CONTENT
    assert server.ranges == [None, f"bytes={len(gz) // 2}-"]
    assert any("resuming" in line for line in logs)


def test_ctrl_c_ends_the_command_in_one_line_and_a_rerun_completes(server, tmp_path):
    """Ctrl-C while a transfer waits: the process ends by SIGINT, as Python's own Ctrl-C does (so that a shell
    script or Snakemake stops too), saying so in one line naming the command instead of the traceback of
    wherever the signal landed; the rerun fetches the file whole."""
    gz = gzip.compress(CONTENT, compresslevel=1)
    server.files["/slow.jsonl.gz"] = gz
    server.hold_first.add("/slow.jsonl.gz")
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "kotomamba", "download", f"{server.url}/slow.jsonl.gz#sha256={sha(gz)}",
               "--output", str(out)]
    # Python answers SIGINT with KeyboardInterrupt only where it did not start with SIGINT ignored (as under a
    # background job): start it with the default, as a terminal's foreground command does.
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert server.held.wait(60), "the download never reached the server"
        os.kill(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        server.release.set()
        process.kill()
    assert process.returncode == -signal.SIGINT, stderr
    assert stderr.strip().splitlines()[-1] == "kotomamba download: interrupted" and "Traceback" not in stderr, stderr
    assert not out.exists()
    assert subprocess.run(command, capture_output=True, text=True, timeout=120).returncode == 0
    assert out.read_bytes() == CONTENT


def test_a_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    server.files["/s.jsonl"] = CONTENT
    (tmp_path / ".s.jsonl.part").write_bytes(CONTENT[:1000])
    download([Source(f"{server.url}/s.jsonl", sha(CONTENT))], tmp_path, log=lambda _: None)
    assert (tmp_path / "s.jsonl").read_bytes() == CONTENT
    assert server.ranges == ["bytes=1000-"]
    assert not (tmp_path / ".s.jsonl.part").exists()


def test_http_error_is_a_user_error(server, tmp_path):
    with pytest.raises(UserError, match="HTTP 404"):
        download([Source(f"{server.url}/missing.jsonl")], tmp_path, log=lambda _: None)


def test_local_glob_and_file_url(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(3):
        (shards / f"part-{i}.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(CONTENT[i:]))
    (shards / "single.jsonl").write_bytes(CONTENT)
    out = tmp_path / "out"
    paths = download([parse_source(str(shards / "part-*.jsonl.zst")),
                      parse_source(f"file://{shards / 'single.jsonl'}#sha256={sha(CONTENT)}")], out, log=lambda _: None)
    assert [p.name for p in paths] == ["part-0.jsonl", "part-1.jsonl", "part-2.jsonl", "single.jsonl"]
    assert [p.read_bytes() for p in paths[:3]] == [CONTENT[i:] for i in range(3)]
    with pytest.raises(UserError, match="matches no file"):
        download([parse_source(str(shards / "*.parquet"))], out, log=lambda _: None)
    with pytest.raises(UserError, match="64 hex digits"):
        parse_source("a.jsonl#sha256=abc")


def test_sources_file_and_corrupt_archive(tmp_path):
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip at all")
    listing = tmp_path / "sources.yaml"
    listing.write_text(f"- url: {tmp_path / 'bad.jsonl.gz'}\n")
    assert main(["--sources", str(listing), "--output-dir", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out" / "bad.jsonl").exists()


def test_source_state_changes_with_a_local_source_and_names_a_missing_one(tmp_path):
    shard = tmp_path / "a.jsonl"
    shard.write_bytes(CONTENT)
    before = source_state([str(tmp_path / "*.jsonl"), "https://example.org/b.jsonl"])
    assert before == source_state([str(tmp_path / "*.jsonl"), "https://example.org/b.jsonl"])
    assert before[1] == "https://example.org/b.jsonl"
    shard.write_bytes(CONTENT + b'{"text": "one more"}\n')
    assert source_state([str(tmp_path / "*.jsonl"), "https://example.org/b.jsonl"]) != before
    with pytest.raises(UserError, match="missing.jsonl: source file not found"):
        source_state([str(tmp_path / "missing.jsonl")])
