"""`kotomamba download` against a real HTTP server on loopback: checksums, resume, decompression, globs."""
from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading

import pytest
import zstandard

from kotomamba.data.download import Source, download, main, parse_source, source_state
from kotomamba.data.line_origins import locate, origins_path, sources_of
from kotomamba.errors import UserError

CONTENT = b"".join(b'{"text": "line %d of a shard"}\n' % i for i in range(5000))


class ShardServer(http.server.ThreadingHTTPServer):
    """Serves ``files`` with Range and If-Range support, as static file servers do (an ETag of the content, a
    Content-Range); ``cut_first`` paths drop their first response half-way; ``hold_first`` paths send half
    their first response, set ``held`` and wait for ``release``; ``without_if_range`` paths ignore If-Range,
    ``without_range`` paths Range."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.files: dict[str, bytes] = {}
        self.cut_first: set[str] = set()
        self.hold_first: set[str] = set()
        self.without_if_range: set[str] = set()
        self.without_range: set[str] = set()
        self.held, self.release = threading.Event(), threading.Event()
        self.ranges: list[str | None] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def etag(body: bytes) -> str:
    return f'"{sha(body)[:16]}"'


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
        if self.path in self.server.without_range:
            header = None
        if self.headers.get("If-Range") not in (None, etag(body)) and self.path not in self.server.without_if_range:
            header = None  # the file changed since the client's part of it: send it whole
        start = int(header.removeprefix("bytes=").rstrip("-")) if header else 0
        if start >= len(body) and header:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if header else 200)
        self.send_header("ETag", etag(body))
        if header:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
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
    assert sorted(p.name for p in out.iterdir()) == [".a.jsonl.sha256", ".b.jsonl.sha256", "a.jsonl", "b.jsonl",
                                                     "c.jsonl"]  # what each was decompressed from
    assert (out / ".a.jsonl.sha256").read_text() == f"{sha(gz)}  a.jsonl.gz\n"
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


def test_line_origins_name_only_the_file_they_were_written_for(server, tmp_path):
    """A corpus replaced after its concatenation (by the user's own file, or by one source fetched as published)
    is named by itself: its old record would give its lines to sources that do not hold them."""
    server.files.update({"/0.jsonl": b'{"text": "a"}\n', "/1.jsonl": b'{"text": "b"}\n{"text": "c"}\n'})
    out = tmp_path / "web.jsonl"
    both = [f"{server.url}/0.jsonl", f"{server.url}/1.jsonl", "--output", str(out)]
    assert main(both) == 0
    assert locate(out, 2) == f"{server.url}/1.jsonl:1 (line 2 of {out})"
    out.write_bytes(b'{"text": "mine"}\n' * 3)
    assert locate(out, 2) == f"{out}:2" and sources_of(out) == [str(out)]
    assert main(both) == 0 and locate(out, 2) == f"{server.url}/1.jsonl:1 (line 2 of {out})"
    assert main([f"{server.url}/1.jsonl", "--keep-compressed", "--output", str(out)]) == 0
    assert not origins_path(out).exists() and locate(out, 2) == f"{out}:2"


@pytest.mark.parametrize("record", ['{"pieces": [{"source": "a.jsonl", "lines": 5}]}', '{"pieces": [', "[]"])
def test_an_origins_record_that_does_not_say_its_corpus_matches_none(tmp_path, record):
    """One written before records named their corpus, or one that is not a record: lines are named in the corpus."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(b'{"text": "a"}\n' * 5)
    origins_path(corpus).write_text(record)
    assert locate(corpus, 2) == f"{corpus}:2" and sources_of(corpus) == [str(corpus)]


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


def test_a_source_that_is_not_what_its_suffix_says_names_itself_and_leaves_no_part(server, tmp_path, capsys):
    """The rerun after the publisher mends the file fetches it anew: no .part that only fails again."""
    url = f"{server.url}/shard.jsonl.gz"
    server.files["/shard.jsonl.gz"] = CONTENT  # not gzip
    assert main([url, "--output-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"kotomamba download: error: {url}: truncated or corrupt gzip data (")
    assert list(tmp_path.iterdir()) == []
    server.files["/shard.jsonl.gz"] = gzip.compress(CONTENT)
    assert main([url, "--output-dir", str(tmp_path)]) == 0
    assert (tmp_path / "shard.jsonl").read_bytes() == CONTENT and server.ranges == [None, None]


def test_a_cut_local_zst_names_the_source(tmp_path, capsys):
    data = zstandard.ZstdCompressor().compress(CONTENT)
    (tmp_path / "cut.jsonl.zst").write_bytes(data[: len(data) // 2])
    assert main(["--output-dir", str(tmp_path / "dl"), str(tmp_path / "cut.jsonl.zst")]) == 2
    assert capsys.readouterr().err.strip() == (f"kotomamba download: error: {tmp_path / 'cut.jsonl.zst'}: truncated "
                                               f"or corrupt zstd data (the file ends inside a frame) (the download "
                                               f"was removed)")
    assert list((tmp_path / "dl").iterdir()) == []


def interrupted(server, tmp_path, path: str, body: bytes) -> None:
    """A first run of ``path`` cut half-way with no retry: a .part and its record stay."""
    server.files[path] = body
    server.cut_first.add(path)
    with pytest.raises(UserError, match="run again to resume"):
        download([Source(server.url + path)], tmp_path, retries=0, log=lambda _: None)
    assert (tmp_path / f".{path[1:]}.part").stat().st_size == len(body) // 2


@pytest.mark.parametrize("server_kind", ["if-range", "ignores if-range", "ignores range"])
@pytest.mark.parametrize("change", ["longer", "same size"])
def test_a_changed_file_is_fetched_whole_not_spliced_onto_the_part(server, tmp_path, server_kind, change):
    interrupted(server, tmp_path, "/s.jsonl", CONTENT)
    if change == "longer":
        changed = b'{"text": "a new first line"}\n' + CONTENT
    else:  # only the ETag of the server's 206 tells this file from the one the part began with
        changed = CONTENT.replace(b"line 4999 of", b"line NEW! of")
        assert len(changed) == len(CONTENT) and changed[len(CONTENT) // 2:] != CONTENT[len(CONTENT) // 2:]
    server.files["/s.jsonl"] = changed
    {"if-range": set(), "ignores if-range": server.without_if_range,
     "ignores range": server.without_range}[server_kind].add("/s.jsonl")
    download([Source(f"{server.url}/s.jsonl")], tmp_path, log=lambda _: None)
    assert (tmp_path / "s.jsonl").read_bytes() == changed
    assert server.ranges[1] == f"bytes={len(CONTENT) // 2}-"
    assert server.ranges[2:] == ([None] if server_kind == "ignores if-range" else [])  # a 206 of another file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.jsonl"]


def test_an_unchanged_file_resumes_and_a_part_nothing_vouches_for_starts_over(server, tmp_path):
    interrupted(server, tmp_path, "/s.jsonl", CONTENT)
    download([Source(f"{server.url}/s.jsonl")], tmp_path, log=lambda _: None)
    assert (tmp_path / "s.jsonl").read_bytes() == CONTENT and server.ranges[1] == f"bytes={len(CONTENT) // 2}-"
    (tmp_path / ".t.jsonl.part").write_bytes(b"bytes of who knows what")  # no record, no sha256 pinned
    server.files["/t.jsonl"] = CONTENT
    download([Source(f"{server.url}/t.jsonl")], tmp_path, log=lambda _: None)
    assert (tmp_path / "t.jsonl").read_bytes() == CONTENT and server.ranges[2:] == [None]


def test_a_416_is_a_whole_part_only_at_the_size_the_server_states(server, tmp_path):
    server.files["/s.jsonl"] = CONTENT
    stale = CONTENT + b"stale tail\n"
    for part, ranges in ((CONTENT, [f"bytes={len(CONTENT)}-"]), (stale, [f"bytes={len(stale)}-", None])):
        (tmp_path / ".s.jsonl.part").write_bytes(part)
        (tmp_path / ".s.jsonl.part.json").write_text(json.dumps({"validator": etag(CONTENT), "size": len(part)}))
        server.ranges.clear()
        download([Source(f"{server.url}/s.jsonl")], tmp_path, log=lambda _: None)
        assert (tmp_path / "s.jsonl").read_bytes() == CONTENT
        assert server.ranges == ranges
        (tmp_path / "s.jsonl").unlink()


def test_sources_of_one_name_concatenate_into_one_output(server, tmp_path):
    """--output writes one file: the sources' own names (en/train.jsonl, ja/train.jsonl) never meet."""
    texts = {lang: b'{"text": "%s"}\n' % lang.encode() for lang in ("en", "ja")}
    for lang, text in texts.items():
        (tmp_path / "src" / lang).mkdir(parents=True)
        (tmp_path / "src" / lang / "train.jsonl").write_bytes(text)
        server.files[f"/{lang}/train.jsonl"] = text
    both = texts["en"] + texts["ja"]
    for number, sources in enumerate(([str(tmp_path / "src" / lang / "train.jsonl") for lang in ("en", "ja")],
                                      [str(tmp_path / "src" / "*" / "train.jsonl")],
                                      [f"{server.url}/{lang}/train.jsonl" for lang in ("en", "ja")])):
        assert main([*sources, "--output", str(tmp_path / f"all{number}.jsonl")]) == 0
        assert (tmp_path / f"all{number}.jsonl").read_bytes() == both
    assert main([*reversed(sources), "--output", str(tmp_path / "reversed.jsonl")]) == 0
    assert (tmp_path / "reversed.jsonl").read_bytes() == texts["ja"] + texts["en"]


def test_a_present_file_is_kept_only_as_what_its_pin_names(tmp_path, capsys):
    """Not downloaded over: the file may be the user's own, or another source's of the same name."""
    for lang in ("en", "ja"):
        (tmp_path / "src" / lang).mkdir(parents=True)
        (tmp_path / "src" / lang / "train.jsonl").write_bytes(b'{"text": "%s"}\n' % lang.encode())
        (tmp_path / "src" / lang / "train.jsonl.gz").write_bytes(gzip.compress(b'{"text": "%s"}\n' % lang.encode()))
    out = tmp_path / "k"
    for name in ("train.jsonl", "train.jsonl.gz"):
        en, ja = tmp_path / "src" / "en" / name, tmp_path / "src" / "ja" / name
        assert main(["--output-dir", str(out), str(en)]) == 0
        assert main(["--output-dir", str(out), f"{en}#sha256={sha(en.read_bytes())}"]) == 0  # its own: kept
        assert main(["--output-dir", str(out), f"{ja}#sha256={sha(ja.read_bytes())}"]) == 2
        found = f"its sha256 is {sha(en.read_bytes())}" if name == "train.jsonl" else (
            f"it was decompressed from a file of sha256 {sha(en.read_bytes())}")
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f"kotomamba download: error: {out / 'train.jsonl'}: present, but {ja} pins sha256 "
            f"{sha(ja.read_bytes())} and {found}; move or remove it to fetch the source, or correct the pin")
        assert (out / "train.jsonl").read_bytes() == b'{"text": "en"}\n'
        (out / "train.jsonl").unlink()


def test_a_negative_retry_count_is_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--retries", "-1", "--output-dir", str(tmp_path), "a.jsonl"])
    assert exit_.value.code == 2
    assert "--retries: expected a whole number, 0 or more, got '-1'" in capsys.readouterr().err
