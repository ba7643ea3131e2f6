"""The tiny DAG through real two-node SLURM and Grid Engine clusters on this machine, compared
with a local run.

Start the clusters first (as root): `tests/scheduler/start_slurm.sh` and `tests/scheduler/start_sge.sh`
(compute nodes ktnode1 and ktnode2, each a network namespace with its own hostname and address).
With KOTOMAMBA_SCHEDULER_TESTS=1 (CI) a cluster that is not up FAILS the tier; without it the tier
is skipped, so quick developer runs need no daemons.

Each run tokenizes the builtin corpus and trains one tiny stage as one scheduler job, world size 2
on CPU (gloo): either one node of 2 processes, or two nodes of 1 process each (FSDP2 across the
namespaces). The job also asks for a count-only GPU per process, so GPU requests are scheduled for
real. The tokenized .bin/.idx must equal the local run's byte for byte and the training losses must
be equal to the local one-node run's.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cluster_helpers import PROFILES, REQUIRED, SETUP_LINE, daemon_problem, scheduler_env

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.scheduler, pytest.mark.slow]
# Snakemake 9 needs Python >= 3.11; on 3.10 the library is tested without the pipeline.
pytest.importorskip("snakemake")

if not REQUIRED:
    pytestmark.append(pytest.mark.skip(reason="set KOTOMAMBA_SCHEDULER_TESTS=1 (and start the daemons) to run"))


def tiny_config(nodes: int = 1) -> dict:
    """The smoke-sized run: world size 2 as one node of 2 processes or `nodes` = 2 nodes of 1."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["run"] = "sched"
    config["corpus"]["sources"][0]["max_bytes"] = 200_000
    config["tokenizer"]["vocab_size"] = 800
    config["model"].update(d_model=32, n_layer=2)
    config["stages"] = [config["stages"][0]]
    config["stages"][0]["train"]["train"] = {"steps": 12}
    config["stages"][0]["train"]["data"] = {"seq_length": 32}
    config["train"]["train"].update(micro_batch_size=2, global_batch_size=4)
    config["train"]["schedule"] = {**config["train"]["schedule"], "warmup_steps": 2}
    config["train"]["eval"] = {"interval": 6, "steps": 1}
    config["train"]["checkpoint"] = {"interval": 6, "keep_last": 1}
    config["train"]["logging"] = {"interval": 1}
    config["launch"] = {"nodes": nodes, "nproc_per_node": 2 // nodes, "device": "cpu"}
    # A GPU per process, counted by the schedulers (the processes run on CPU: device cpu).
    config["resources"] = {"train": {"runtime": 20, "mem_mb": 3000, "gpus_per_node": 2 // nodes}}
    return config


def run_pipeline(workdir: Path, *profile_args: str, nodes: int = 1) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True)
    config_file = workdir / "sched.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config(nodes)))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
               "--configfile", str(config_file), "--until", "train", *profile_args]
    return subprocess.run(command, capture_output=True, text=True, env=scheduler_env(SETUP_LINE), cwd=workdir, timeout=1800)


def outputs(workdir: Path) -> tuple[dict[str, bytes], list[tuple]]:
    """(tokenized .bin/.idx contents by name, the training (step, loss) records)."""
    root = workdir / "results" / "sched"
    tokenized = {path.name: path.read_bytes() for path in sorted(root.rglob("*")) if path.suffix in (".bin", ".idx")}
    metrics = sorted(root.rglob("metrics.jsonl"))
    assert metrics, f"no metrics.jsonl under {root}"
    losses = []
    for line in metrics[0].read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            losses.append((record.get("step"), record["loss"]))
    assert losses, f"{metrics[0]} has no losses"
    return tokenized, losses


@pytest.fixture(scope="module")
def local_workdir(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("local") / "run"
    result = run_pipeline(workdir, "--cores", "2")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return workdir


@pytest.fixture(scope="module")
def local_run(local_workdir):
    return outputs(local_workdir)


def train_job_id(scheduler: str, output: str) -> str:
    """The scheduler's id of the one training job in snakemake's output."""
    pattern = (r"rule train:.*?submitted with SLURM jobid (\d+)" if scheduler == "slurm"
               else r"rule train:.*?with external jobid '(\d+)'")
    match = re.search(pattern, output, re.S)
    assert match, f"no {scheduler} training job in the output:\n{output[-3000:]}"
    return match.group(1)


def train_job_hosts(scheduler: str, job_id: str, nodes: int) -> tuple[str, list[str]]:
    """(the job's GPU request as accounted, the hosts its tasks ran on) from the accounting."""
    if scheduler == "slurm":
        fields = subprocess.run(["sacct", "-n", "-P", "-j", job_id, "-o", "JobID,NodeList,AllocTRES"],
                                capture_output=True, text=True, env=scheduler_env(SETUP_LINE), check=True).stdout
        rows = [line.split("|") for line in fields.splitlines()]
        job = next(row for row in rows if row[0] == job_id)
        steps = [row for row in rows if row[0] == f"{job_id}.0"]
        assert steps, f"the training job {job_id} ran no srun step: {fields}"
        hosts = subprocess.run(["scontrol", "show", "hostnames", steps[0][1]], capture_output=True, text=True,
                               check=True).stdout.split()
        return job[2], hosts
    # Grid Engine accounts the master task and each `qrsh -inherit` task (mpirun's daemons) apart.
    for _ in range(20):
        text = subprocess.run(["qacct", "-j", job_id], capture_output=True, text=True, env=scheduler_env(SETUP_LINE)).stdout
        hosts = re.findall(r"^hostname\s+(\S+)", text, re.M)
        if len(hosts) >= nodes:
            break
        time.sleep(1)
    category = re.search(r"^category\s+(.*)$", text, re.M)
    return category.group(1) if category else "", sorted(set(hosts))


@pytest.mark.parametrize("scheduler", sorted(PROFILES))
@pytest.mark.parametrize("nodes", [1, 2])
def test_dag_through_scheduler_equals_local_run(scheduler, nodes, local_run, tmp_path):
    problem = daemon_problem(scheduler)
    if problem:
        pytest.fail(f"{scheduler} is not up: {problem}")
    workdir = tmp_path / "run"
    result = run_pipeline(workdir, *PROFILES[scheduler], nodes=nodes)
    logs = "\n".join(path.read_text(errors="replace")[-3000:] for path in workdir.rglob("*.log"))
    output = result.stdout + result.stderr
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:] + logs[-6000:]
    assert ("submitted with SLURM jobid" if scheduler == "slurm" else "with external jobid") in output
    job_logs = "".join(path.read_text(errors="replace") for path in (workdir / ".snakemake").rglob("*.log"))
    assert re.search(r"setup line ran on ktnode[12]", job_logs), "the profile's setup hook did not run in the jobs"
    final = json.loads((workdir / "results" / "sched" / "train" / "pretrain" / "final.json").read_text())
    assert final["world_size"] == 2
    # One training job, on `nodes` hosts, granted 2 GPUs in all (SGE counts them per slot).
    request, hosts = train_job_hosts(scheduler, train_job_id(scheduler, output), nodes)
    assert len(hosts) == nodes and set(hosts) <= {"ktnode1", "ktnode2"}, (request, hosts)
    wanted = ["gres/gpu=2"] if scheduler == "slurm" else [f"-pe {'mpi' if nodes > 1 else 'smp'} 2", "gpu=1"]
    assert all(part in request for part in wanted), request
    if nodes > 1:  # the ranks ran on both hosts
        train_log = (workdir / "results" / "sched" / "logs" / "train" / "pretrain.log").read_text()
        assert sorted(re.findall(r"kotomamba launch: node (\S+):", train_log)) == ["ktnode1", "ktnode2"], train_log
    tokenized, losses = outputs(workdir)
    local_tokenized, local_losses = local_run
    assert sorted(tokenized) == sorted(local_tokenized) and tokenized, "different tokenized files"
    for name in tokenized:
        assert tokenized[name] == local_tokenized[name], f"{name} differs from the local run's"
    assert losses == local_losses


SSH_KEY = Path("/run/kt/ssh/id_ed25519")  # start_sge.sh: each node's sshd lets this key in (common.sh)


@pytest.mark.scheduler("sge")
def test_pbs_launch_path_across_two_hosts_equals_local_run(local_workdir, local_run, tmp_path):
    """No PBS server runs here, so the launcher is run as it runs in a two-node PBS job: on ktnode1,
    with `PBS_JOBID` and a `PBS_NODEFILE` of both nodes (two lines each, as `mpiprocs=2` writes it),
    and no other scheduler's variables; `mpirun` reaches ktnode2 by ssh, as Debian's Open MPI (built
    without PBS's TM interface) does on a PBS cluster. The losses must equal the local run's."""
    if not SSH_KEY.is_file():
        pytest.fail(f"{SSH_KEY} is missing: run tests/scheduler/start_sge.sh (it starts each node's sshd)")
    workdir = tmp_path / "run"
    shutil.copytree(local_workdir / "results", workdir / "results")
    stage = workdir / "results" / "sched" / "train" / "pretrain"
    for path in stage.iterdir():
        if path.name != "train.yaml":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("ktnode1\nktnode1\nktnode2\nktnode2\n")
    env = {name: value for name, value in scheduler_env(SETUP_LINE).items()
           if not name.startswith(("SLURM_", "SGE_", "PE_", "KOTOMAMBA_SGE", "KOTOMAMBA_SLURM")) and name != "JOB_ID"}
    env.update(PBS_JOBID="4242.pbs1", PBS_NODEFILE=str(nodefile), OMPI_MCA_plm_rsh_agent=(
        f"ssh -i {SSH_KEY} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"))
    as_ktnode1 = ["nsenter", "--net=/run/netns/kt1", "unshare", "--uts", "--mount", "sh", "-c",
                  'mount --bind /run/kt/hosts /etc/hosts && hostname ktnode1 && exec "$@"', "sh"]
    command = [*as_ktnode1, sys.executable, "-m", "kotomamba", "launch", "--nnodes", "2", "--nproc-per-node", "1",
               "--", "train", "--config", str(stage / "train.yaml"), "--resume", "auto"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=workdir, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    assert "kotomamba launch: pbs job 4242.pbs1: mpirun" in result.stderr
    assert sorted(re.findall(r"kotomamba launch: node (\S+):", result.stderr)) == ["ktnode1", "ktnode2"]
    assert json.loads((stage / "final.json").read_text())["world_size"] == 2
    assert outputs(workdir)[1] == local_run[1]


@pytest.mark.scheduler("sge")
def test_sge_status_reports_and_removes_a_job_in_error_state(tmp_path):
    """profiles/sge/status.py against the real qmaster: a job that can never run (its working
    directory is missing: state Eqw) is reported failed, with the reason, and is no longer queued."""
    problem = daemon_problem("sge")
    if problem:
        pytest.fail(f"sge is not up: {problem}")
    env = scheduler_env(SETUP_LINE)
    submitted = subprocess.run(["qsub", "-terse", "-b", "y", "-o", "/dev/null", "-j", "y", "-wd",
                                str(tmp_path / "missing"), "true"], capture_output=True, text=True, env=env, check=True)
    job_id = submitted.stdout.strip()
    status = [sys.executable, str(REPO / "profiles" / "sge" / "status.py"), job_id]
    for _ in range(120):
        result = subprocess.run(status, capture_output=True, text=True, env=env, timeout=120)
        if result.stdout.strip() != "running":
            break
        time.sleep(0.5)
    assert result.stdout.strip() == "failed" and "missing" in result.stderr, result.stdout + result.stderr
    assert subprocess.run(["qstat", "-j", job_id], capture_output=True, text=True, env=env).returncode != 0
