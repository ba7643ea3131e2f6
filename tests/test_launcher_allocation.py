"""`kotomamba launch` inside allocations: host lists, ports, fan-out commands and wall-time budgets,
from the files and variables SLURM, Grid Engine and PBS give a job."""
from __future__ import annotations

import sys

import pytest
import yaml

from kotomamba.errors import UserError
from kotomamba.train import launcher, scheduler_facts


def test_pbs_nodefile_hosts_in_order_without_repeats(tmp_path):
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("hnode003\nhnode003\nhnode001\nhnode001\n")
    allocation = scheduler_facts.detect_allocation({"PBS_JOBID": "1234.pbs1", "PBS_NODEFILE": str(nodefile)})
    assert allocation == scheduler_facts.Allocation("pbs", "1234.pbs1", ("hnode003", "hnode001"))


def test_sge_pe_hostfile_and_hostlist(tmp_path):
    pe = tmp_path / "pe_hostfile"
    pe.write_text("a0001.abci.local 72 gpu@a0001 UNDEFINED\na0002.abci.local 72 gpu@a0002 UNDEFINED\n")
    allocation = scheduler_facts.detect_allocation({"JOB_ID": "77", "PE_HOSTFILE": str(pe)})
    assert allocation.scheduler == "sge" and allocation.hosts == ("a0001.abci.local", "a0002.abci.local")
    hostlist = tmp_path / "hostlist"
    hostlist.write_text("g0001\ng0002\n")
    assert scheduler_facts.detect_allocation({"JOB_ID": "77", "SGE_JOB_HOSTLIST": str(hostlist)}).hosts == ("g0001", "g0002")


def test_no_scheduler_variables_means_no_allocation():
    assert scheduler_facts.detect_allocation({"HOME": "/home/u", "JOB_ID": ""}) is None


@pytest.mark.parametrize("job_id, port", [("1234.pbs1", 11234), ("77", 10077), ("123456", 33456)])
def test_rendezvous_port_from_the_job_id(job_id, port):
    assert scheduler_facts.rendezvous_port(job_id) == port


def test_mpirun_fan_out_starts_one_launcher_per_host_with_the_environment():
    allocation = scheduler_facts.Allocation("pbs", "1234.pbs1", ("h1", "h2"))
    env = {"PATH": "/bin", "MASTER_ADDR": "h1", "KOTOMAMBA_X": "1", "UNRELATED": "2"}
    command = launcher.fan_out_command(allocation, 2, ["launch", "--node-local"], "/tmp/hosts", env)
    assert command[:9] == ["mpirun", "-np", "2", "--map-by", "ppr:1:node", "--hostfile", "/tmp/hosts",
                           "--bind-to", "none"]
    exported = [command[i + 1] for i, item in enumerate(command) if item == "-x"]
    assert exported == ["PATH", "MASTER_ADDR", "KOTOMAMBA_X"]
    assert command[-5:] == [sys.executable, "-m", "kotomamba", "launch", "--node-local"]


def test_srun_fan_out_one_task_per_node_with_the_nodes_cpus():
    allocation = scheduler_facts.Allocation("slurm", "9", ("n1", "n2", "n3"))
    command = launcher.fan_out_command(allocation, 3, ["launch"], "", {}, cpus_per_node="64")
    assert command[:6] == ["srun", "--nodes=3", "--ntasks=3", "--ntasks-per-node=1", "--cpus-per-task=64",
                           "--kill-on-bad-exit=1"]


def test_per_node_torchrun_uses_a_c10d_rendezvous_on_the_first_host():
    command = launcher.torchrun_command(2, 8, "/x", ["train", "--config", "c.yaml"], "h1:11234", "pbs-1234.pbs1")
    text = " ".join(command)
    assert "--nnodes 2 --rdzv-backend c10d --rdzv-endpoint h1:11234 --rdzv-id pbs-1234.pbs1" in text
    assert text.endswith("-m kotomamba launch --worker-exit-dir /x -- train --config c.yaml")


def test_too_many_nodes_for_the_allocation_is_a_clear_error(tmp_path):
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("h1\n")
    options = launcher.parse_args(["--nnodes", "2", "--", "train", "--config", "c.yaml"])
    with pytest.raises(UserError, match="--nnodes 2 but the pbs job 5.pbs1 has 1 host"):
        launcher.launch(options, {"PBS_JOBID": "5.pbs1", "PBS_NODEFILE": str(nodefile), "PATH": ""})


@pytest.mark.parametrize("text, seconds", [("59:30", 3570), ("1-02:00:00", 93600), ("3600", 3600),
                                           ("UNLIMITED", None), ("NOT_SET", None), ("", None)])
def test_scheduler_durations(text, seconds):
    assert scheduler_facts.parse_duration(text) == seconds


def test_wall_time_budget_leaves_a_margin_and_respects_the_config(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"train": {"steps": 100}}))
    args = ["train", "--config", str(config)]

    def with_wall_time_budget(args, seconds_left):
        return launcher.with_wall_time_budget(args, seconds_left, launcher.training_config(args))

    assert with_wall_time_budget(args, 3600)[-1] == "train.wall_time_budget_s=3420"
    config.write_text(yaml.safe_dump({"train": {"wall_time_budget_s": 600}}))
    assert with_wall_time_budget(args, 3600) == args  # the config's smaller budget stands
    config.write_text(yaml.safe_dump({"train": {"wall_time_budget_s": 0.5}}))
    assert with_wall_time_budget(args, 30) == args  # below the one-second floor too
    config.write_text(yaml.safe_dump({"train": {"wall_time_budget_s": 5000}}))
    assert with_wall_time_budget(args, 3600)[-1] == "train.wall_time_budget_s=3420"
    assert with_wall_time_budget(args, 30)[-1] == "train.wall_time_budget_s=1"
    assert with_wall_time_budget(args, None) == args
    assert with_wall_time_budget(["evaluate", "--model", "m"], 3600) == ["evaluate", "--model", "m"]
    explicit = [*args, "train.wall_time_budget_s=99"]
    assert with_wall_time_budget(explicit, 3600) == explicit
