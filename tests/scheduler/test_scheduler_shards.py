"""A source of two shards through the two-node SLURM and Grid Engine test clusters: the two shard
jobs (tokenize_shard) run at the same time on different nodes, and the merged dataset is the bytes
one tokenization job over the concatenated shards writes.

Placement is forced, not left to timing: each shard job asks for a whole node's CPUs (as many threads
as a test node has CPUs), and a barrier in the profiles' setup hook holds every such job until both
have started. So both run at once, which means one on each node; the scheduler's own
records (sacct, qacct) must say so. A scheduler that would not place them so (one node down, say)
fails the test when the barrier gives up, never hangs it. The run stops at the tokenized dataset
(no training) and uses a tokenizer trained beforehand: 3 jobs per scheduler.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml
import zstandard
from cluster_helpers import PROFILES, REPO, REQUIRED, daemon_problem, scheduler_env
from pipeline_helpers import files_of, one_job, tiny_config

from kotomamba.data.corpus import write_corpus
from kotomamba.data.train_tokenizer import train_tokenizer

pytestmark = [pytest.mark.scheduler, pytest.mark.slow]
pytest.importorskip("snakemake")
if not REQUIRED:
    pytestmark.append(pytest.mark.skip(reason="set KOTOMAMBA_SCHEDULER_TESTS=1 (and start the daemons) to run"))

# start_slurm.sh / start_sge.sh give each node this machine's CPUs (`nproc`) as its CPUs / slots.
NODE_CPUS = len(os.sched_getaffinity(0))
DATASET = "results/shards/tokenized/web_text_document"


def barrier(directory: Path, parties: int) -> str:
    """The setup hook of the run: a job that holds a whole node (a shard job; the merge has one CPU)
    records its host, then waits until `parties` such jobs have, for at most 5 minutes.

    The line quotes and expands in the job (`$(hostname)`, the job's host, recorded by the script):
    a setup line is read where the job runs, as it is written, under both profiles."""
    script = directory / "barrier.sh"
    script.write_text(f"""cpus=${{SLURM_CPUS_PER_TASK:-${{NSLOTS:-1}}}}
[ "$cpus" -ge {NODE_CPUS} ] || exit 0
echo "$1" > {directory}/started/$(hostname).$$
i=0
while [ "$(ls {directory}/started | wc -l)" -lt {parties} ] && [ $i -lt 1200 ]; do sleep 0.25; i=$((i + 1)); done
""")
    (directory / "started").mkdir()
    return f'sh "{script}" "$(hostname)"'


def shard_job_ids(scheduler: str, workdir: Path) -> list[str]:
    """The scheduler's ids of the tokenize_shard jobs, from the per-job logs the profiles keep."""
    if scheduler == "slurm":  # .snakemake/slurm_logs/rule_<rule>/<wildcards>/<jobid>.log
        logs = (workdir / ".snakemake" / "slurm_logs" / "rule_tokenize_shard").rglob("*.log")
        return sorted(path.stem for path in logs)
    logs = (workdir / ".snakemake" / "sge_logs" / "tokenize_shard").glob("*.log")  # $JOB_NAME.$JOB_ID.log
    return sorted(path.name.split(".")[-2] for path in logs)


def accounted(scheduler: str, job_id: str) -> dict:
    """A finished job as the scheduler's accounting recorded it: host, CPUs, start and end."""
    for _ in range(60):  # the accounting lags the job's end by a moment
        if scheduler == "slurm":
            row = subprocess.run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State,NodeList,AllocCPUS,Start,End"],
                                 capture_output=True, text=True, env=scheduler_env("true")).stdout.strip()
            fields = row.split("|")
            if len(fields) == 5 and fields[0] == "COMPLETED":
                return {"host": fields[1], "cpus": int(fields[2]), "start": datetime.fromisoformat(fields[3]),
                        "end": datetime.fromisoformat(fields[4])}
        else:
            text = subprocess.run(["qacct", "-j", job_id], capture_output=True, text=True,
                                  env=scheduler_env("true")).stdout
            record = dict(re.findall(r"^(\w+)\s+(.*?)\s*$", text, re.M))
            if "end_time" in record:
                return {"host": record["hostname"], "cpus": int(record["slots"]),
                        "start": datetime.strptime(record["start_time"], "%a %b %d %H:%M:%S %Y"),
                        "end": datetime.strptime(record["end_time"], "%a %b %d %H:%M:%S %Y")}
        time.sleep(0.5)
    raise AssertionError(f"{scheduler} never accounted job {job_id} as finished: {row if scheduler == 'slurm' else text}")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, list[bytes]]:
    """A tokenizer and the two shards' lines (from the builtin corpus, cut in two)."""
    directory = tmp_path_factory.mktemp("shards")
    write_corpus(directory / "corpus.jsonl", max_bytes=100_000)
    lines = (directory / "corpus.jsonl").read_bytes().splitlines(keepends=True)
    tokenizer = train_tokenizer([directory / "corpus.jsonl"], 500, "unigram", directory / "tokenizer")
    return tokenizer, [b"".join(lines[: len(lines) // 2]), b"".join(lines[len(lines) // 2 :])]


@pytest.mark.parametrize("scheduler", sorted(PROFILES))
def test_shard_jobs_run_on_both_nodes_into_the_one_job_bytes(scheduler, shards, tmp_path):
    problem = daemon_problem(scheduler)
    if problem:
        pytest.fail(f"{scheduler} is not up: {problem}")
    tokenizer, pieces = shards
    data, hold = tmp_path / "data", tmp_path / "barrier"
    data.mkdir()
    hold.mkdir()
    # One shard compressed, one not: each job reads its shard as a stream where the user keeps it.
    (data / "part-0.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(pieces[0]))
    (data / "part-1.jsonl").write_bytes(pieces[1])
    config = tiny_config("shards")
    config["corpus"]["sources"] = [{"name": "web", "urls": [str(data / "part-*")]}]
    config["tokenizer"].update(vocab_size=500, model=str(tokenizer))
    config["tokenize"]["workers"] = NODE_CPUS  # a shard job's threads: a whole node
    config["resources"] = {"tokenize": {"runtime": 10, "mem_mb": 1000}}
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
               "--configfile", str(config_file), *PROFILES[scheduler], f"{DATASET}.bin", f"{DATASET}.idx"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600,
                            env=scheduler_env(barrier(hold, len(pieces))))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    # What each shard job logged (its host) and what the scheduler recorded agree: both nodes, at once.
    started = {path.name.split(".")[0]: path.read_text().strip() for path in (hold / "started").iterdir()}
    assert sorted(started) == ["ktnode1", "ktnode2"] and all(host == line for host, line in started.items())
    job_ids = shard_job_ids(scheduler, tmp_path)
    assert len(job_ids) == len(pieces), (job_ids, result.stderr[-3000:])
    jobs = [accounted(scheduler, job_id) for job_id in job_ids]
    assert sorted(job["host"] for job in jobs) == ["ktnode1", "ktnode2"], jobs
    assert all(job["cpus"] == NODE_CPUS for job in jobs), jobs
    assert max(job["start"] for job in jobs) <= min(job["end"] for job in jobs), f"not at the same time: {jobs}"

    assert files_of(tmp_path / DATASET) == one_job(tmp_path, tokenizer, pieces, "web")
