"""What the scheduler tests of several files share: one local run of the pipeline (``local_run``)."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def local_run(tmp_path_factory) -> Path:
    """test_scheduler_requeue.py's stage (3 steps on one process) run on this machine, no scheduler. The tests that
    train on a cluster, and their references, start from a copy of it (its tokenized data, tokenizer and Snakemake's
    records, times kept): the pipeline before training runs once for all of them."""
    from test_scheduler_requeue import snakemake, stage_config

    workdir = tmp_path_factory.mktemp("local_run") / "run"
    workdir.mkdir()
    result = snakemake(workdir, stage_config(None), "--cores", "2")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return workdir
