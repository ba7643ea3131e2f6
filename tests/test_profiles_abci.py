"""ABCI 3.0 (PBS Professional) profile: PBS cannot run here, so the rendered qsub command and job
script are checked against PBS's syntax (ABCI's documented form `qsub -P group -q rt_HF -l select=N
-l walltime=HH:MM:SS`), and status.py's parsing against the shapes `qstat -x -f` prints."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

PROFILE = Path(__file__).resolve().parents[1] / "profiles" / "abci"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"abci_{name}", PROFILE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


submit = load("submit")
status = load("status")


def properties(rule="train", threads=8, **resources) -> dict:
    return {"rule": rule, "jobid": 7, "threads": threads, "resources": resources}


def option_values(command: list[str], flag: str) -> list[str]:
    return [command[i + 1] for i, item in enumerate(command[:-1]) if item == flag]


def test_training_goes_to_full_nodes_with_pbs_resource_syntax(monkeypatch):
    monkeypatch.setenv("KOTOMAMBA_ABCI_GROUP", "gaa50000")
    monkeypatch.delenv("KOTOMAMBA_ABCI_QUEUE", raising=False)
    command = submit.qsub_command(properties(nodes=4, runtime=150, mem_mb=1), "job.sh")
    assert command[0] == "qsub" and command[-1] == "job.sh"
    assert option_values(command, "-P") == ["gaa50000"]
    assert option_values(command, "-q") == ["rt_HF"]
    limits = option_values(command, "-l")
    assert "select=4" in limits
    walltime = [limit for limit in limits if limit.startswith("walltime=")]
    assert walltime == ["walltime=02:30:00"]
    assert all(re.fullmatch(r"(select=\d+(:\w+=\w+)*|walltime=\d{2,}:\d{2}:\d{2})", limit) for limit in limits)
    name = option_values(command, "-N")[0]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,14}", name)


def test_other_rules_go_to_cpu_nodes_and_config_beats_environment(monkeypatch):
    monkeypatch.setenv("KOTOMAMBA_ABCI_GROUP", "gaa50000")
    monkeypatch.setenv("KOTOMAMBA_ABCI_QUEUE", "rt_HG")
    assert option_values(submit.qsub_command(properties("tokenize", runtime=60), "j"), "-q") == ["rt_HG"]
    monkeypatch.delenv("KOTOMAMBA_ABCI_QUEUE")
    assert option_values(submit.qsub_command(properties("tokenize", runtime=60), "j"), "-q") == ["rt_HC"]
    from_config = properties("tokenize", abci_group="gbb60000", runtime=60)
    assert option_values(submit.qsub_command(from_config, "j"), "-P") == ["gbb60000"]


def test_reservation_queue_names_the_resource_type(monkeypatch):
    monkeypatch.setenv("KOTOMAMBA_ABCI_GROUP", "gaa50000")
    command = submit.qsub_command(properties(nodes=2, abci_queue="R1234", runtime=10), "j")
    assert option_values(command, "-q") == ["R1234"] and option_values(command, "-v") == ["RTYPE=rt_HF"]


def test_multi_node_jobs_refuse_single_gpu_types(monkeypatch):
    monkeypatch.setenv("KOTOMAMBA_ABCI_GROUP", "gaa50000")
    with pytest.raises(submit.SettingError, match="rt_HF"):
        submit.qsub_command(properties(nodes=2, abci_queue="rt_HG"), "j")


def test_job_script_enters_the_workdir_loads_modules_and_runs_snakemakes_script(monkeypatch):
    monkeypatch.setenv("KOTOMAMBA_ABCI_SETUP", "source ~/venvs/k/bin/activate")
    monkeypatch.delenv("KOTOMAMBA_ABCI_MODULES", raising=False)
    script = submit.wrapper_script(properties(), "#!/bin/sh\n# properties = {}\ncd /w && python -m snakemake x\n", "/w/logs",
                                   "/w/requeue")
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert lines.index('cd "$PBS_O_WORKDIR"') < lines.index("module load cuda/12.6/12.6.1 cudnn/9.5/9.5.1 hpcx/2.20")
    assert lines.index("source ~/venvs/k/bin/activate") < lines.index("cd /w && python -m snakemake x")
    assert 'exec > /w/logs/"${PBS_JOBID}.log" 2>&1' in lines
    assert 'export KOTOMAMBA_REQUEUE_FILE=/w/requeue/"$PBS_JOBID"' in lines  # where status.py looks
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_missing_group_fails_before_qsub_with_a_clear_message(tmp_path, monkeypatch):
    jobscript = tmp_path / "snakejob.train.7.sh"
    jobscript.write_text(f"#!/bin/sh\n# properties = {json.dumps(properties(nodes=1))}\ntrue\n")
    env = {key: value for key, value in __import__("os").environ.items() if not key.startswith("KOTOMAMBA_ABCI")}
    result = subprocess.run([sys.executable, str(PROFILE / "submit.py"), str(jobscript)], capture_output=True,
                            text=True, env={**env, "PATH": str(tmp_path)}, cwd=tmp_path)
    assert result.returncode == 1
    assert "KOTOMAMBA_ABCI_GROUP" in result.stderr and "abci_group" in result.stderr
    assert result.stdout == ""
    assert not list(tmp_path.glob("*.pbs.sh"))  # nothing written either


QSTAT_FINISHED = """Job Id: 1234.pbs1
    Job_Name = smk.train
    Job_Owner = user@login1.abci.local
    resources_used.cpupercent = 3149
    resources_used.cput = 05:12:40
    resources_used.mem = 104857600kb
    resources_used.ncpus = 192
    resources_used.walltime = 00:09:55
    job_state = F
    queue = rt_HF
    server = pbs1
    Checkpoint = u
    ctime = Mon Mar 17 10:00:00 2025
    Error_Path = login1.abci.local:/dev/null
    exec_host = hnode001/0*192
    exec_vnode = (hnode001:ncpus=192:ngpus=8)
    Resource_List.ncpus = 192
    Resource_List.ngpus = 8
    Resource_List.nodect = 1
    Resource_List.select = 1:ncpus=192:ngpus=8
    Resource_List.walltime = 00:10:00
    Variable_List = PBS_O_HOME=/home/user,PBS_O_LOGNAME=user,PBS_O_PATH=/usr/bin:/bin,PBS_O_WORKDIR=/ho
\tme/user/kotomamba,PBS_O_QUEUE=rt_HF
    comment = Job run at Mon Mar 17 at 10:00 on (hnode001:ncpus=192:ngpus=8) and finished
    Exit_status = {exit_status}
    project = gaa50000
"""


@pytest.mark.parametrize("exit_status, expected", [("0", "success"), ("75", "failed"), ("271", "failed"),
                                                   ("-3", "failed")])
def test_finished_jobs_are_judged_by_exit_status(exit_status, expected):
    fields = status.parse_qstat_full(QSTAT_FINISHED.format(exit_status=exit_status))
    assert fields["Variable_List"].endswith("PBS_O_WORKDIR=/home/user/kotomamba,PBS_O_QUEUE=rt_HF")
    assert status.job_status(fields) == expected


@pytest.mark.parametrize("state", ["Q", "R", "E", "H", "W", "S", "B", "T", "M"])
def test_unfinished_states_are_running(state):
    text = QSTAT_FINISHED.replace("job_state = F", f"job_state = {state}").replace("    Exit_status = {exit_status}\n", "")
    assert status.job_status(status.parse_qstat_full(text)) == "running"


QSTAT_STATE = "Job Id: {id}\n    job_state = {state}\n    Exit_status = {exit}\n"


def test_a_requeue_request_submits_the_job_again_and_status_follows_the_chain(tmp_path):
    """No PBS server here: `qstat -x -f`, `qsub` and `qdel` are scripts answering as PBS does (a job's
    state from a file per id, the next id, the ids deleted). A finished job that left a requeue request
    is submitted again with its own qsub command; Snakemake's first id then follows the chain."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for name, body in {
        "qstat": 'cat "$FAKE/$3.qstat" 2>/dev/null || { echo "qstat: Unknown Job Id $3" >&2; exit 153; }',
        "qsub": 'echo "$*" >> "$FAKE/qsub.calls"; echo "$(( $(wc -l < "$FAKE/qsub.calls") + 100 )).pbs1"',
        "qdel": 'echo "$*" >> "$FAKE/qdel.calls"',
    }.items():
        (fake / name).write_text(f"#!/bin/sh\n{body}\n")
        (fake / name).chmod(0o755)
    # The profile's commands run `python3` from PATH (with kotomamba): this interpreter's.
    env = {**__import__("os").environ, "FAKE": str(fake), "PATH": f"{fake}:{Path(sys.executable).parent}:/usr/bin:/bin"}

    def status(job_id: str) -> str:
        result = subprocess.run([sys.executable, str(PROFILE / "status.py"), job_id], capture_output=True,
                                text=True, env=env, cwd=tmp_path, check=True)
        return result.stdout.strip()

    def job(job_id: str, state: str, exit_status: str = "") -> None:
        (fake / f"{job_id}.qstat").write_text(QSTAT_STATE.format(id=job_id, state=state, exit=exit_status))

    jobscript = tmp_path / "snakejob.train.7.sh"
    jobscript.write_text(f"#!/bin/sh\n# properties = {json.dumps(properties(nodes=1))}\ntrue\n")
    submitted = subprocess.run([sys.executable, str(PROFILE / "submit.py"), str(jobscript)], capture_output=True,
                               text=True, env={**env, "KOTOMAMBA_ABCI_GROUP": "gaa50000"}, cwd=tmp_path)
    assert submitted.stdout == "101.pbs1\n", submitted.stderr
    requeue = tmp_path / submit.REQUEUE_DIR
    command = json.loads((requeue / "101.pbs1.qsub").read_text())  # submit.py keeps the job's qsub command
    assert command[0] == "qsub" and command[-1] == f"{jobscript}.pbs.sh"
    (requeue / "7.pbs1.qsub").write_text(json.dumps(command))  # the same job, under the id used below
    job("7.pbs1", "R")
    assert status("7.pbs1") == "running"
    (requeue / "7.pbs1").write_text("7.pbs1\n")  # kotomamba launch's request, while the job still runs
    assert status("7.pbs1") == "running" and len((fake / "qsub.calls").read_text().splitlines()) == 1
    job("7.pbs1", "F", "1")  # finished (the requeued training's exit 75 fails Snakemake's job script)
    assert status("7.pbs1") == "running"
    assert (fake / "qsub.calls").read_text().splitlines() == [" ".join(command[1:])] * 2
    assert (requeue / "7.pbs1.next").read_text() == "102.pbs1\n" and not (requeue / "7.pbs1").exists()
    job("102.pbs1", "R")
    assert status("7.pbs1") == "running"
    subprocess.run(["sh", str(PROFILE / "cancel.sh"), "7.pbs1"], env=env, cwd=tmp_path, check=True)
    assert (fake / "qdel.calls").read_text() == "102.pbs1\n"  # the newest job of the chain
    job("102.pbs1", "F", "0")
    assert status("7.pbs1") == "success"
    job("102.pbs1", "F", "75")  # exit 75 without a request (no progress, or cancelled): a failure
    assert status("7.pbs1") == "failed"
