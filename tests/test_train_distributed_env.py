"""Launch environments: torchrun, Open MPI, PMI/PALS (PBS), SLURM, none."""
import os
import socket
import subprocess
import sys

import pytest

from kotomamba.errors import UserError
from kotomamba.train.distributed import detect_launch_env
from kotomamba.train.scheduler_facts import expand_nodelist


def test_expand_nodelist():
    assert expand_nodelist("gpu[01-03,07],login1") == ("gpu01", "gpu02", "gpu03", "gpu07", "login1")
    assert expand_nodelist("node5") == ("node5",)
    # A suffix after the brackets, several brackets, and repeats (kept once, first place).
    assert expand_nodelist("n[1-2]-ib,rack[1-2]n[8,10]") == ("n1-ib", "n2-ib", "rack1n8", "rack1n10",
                                                             "rack2n8", "rack2n10")
    assert expand_nodelist("a1,a[1-2]") == ("a1", "a2")


def test_torchrun():
    env = detect_launch_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                             "MASTER_ADDR": "h0", "MASTER_PORT": "29500"})
    assert (env.launcher, env.rank, env.world_size, env.local_rank, env.local_world_size) == ("torchrun", 3, 4, 1, 2)
    assert (env.master_addr, env.master_port) == ("h0", 29500)


def test_openmpi_under_pbs_takes_first_host_of_the_nodefile(tmp_path):
    nodefile = tmp_path / "nodes"
    nodefile.write_text("cn12\ncn12\ncn13\n")
    env = detect_launch_env({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4",
                             "OMPI_COMM_WORLD_LOCAL_RANK": "0", "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
                             "PBS_NODEFILE": str(nodefile), "PBS_JOBID": "4711.pbs"})
    assert (env.launcher, env.rank, env.world_size, env.local_rank) == ("openmpi", 2, 4, 0)
    assert env.master_addr == "cn12" and env.master_port == 10000 + 4711


def test_pmi_and_pals():
    env = detect_launch_env({"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1", "MASTER_ADDR": "a"})
    assert (env.launcher, env.rank, env.world_size, env.local_rank) == ("pmi", 1, 2, 1)
    env = detect_launch_env({"PALS_RANKID": "5", "PMI_SIZE": "8", "PALS_LOCAL_RANKID": "1", "MASTER_ADDR": "a"})
    assert (env.launcher, env.rank, env.local_rank) == ("pals", 5, 1)


def test_srun():
    env = detect_launch_env({"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1",
                             "SLURM_STEP_TASKS_PER_NODE": "4(x2)", "SLURM_STEP_NODELIST": "gpu[10-11]",
                             "SLURM_JOB_ID": "123"})
    assert (env.launcher, env.rank, env.world_size, env.local_rank, env.local_world_size) == ("slurm", 5, 8, 1, 4)
    assert env.master_addr == "gpu10" and env.master_port == 10123


def test_sbatch_script_without_srun_is_a_single_process():
    env = detect_launch_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "1"})
    assert (env.launcher, env.world_size, env.master_addr, env.master_port) == ("none", 1, None, None)


@pytest.mark.parametrize("launcher", ["none", "torchrun"])
def test_a_world_of_one_takes_no_port(launcher):
    """Single-GPU runs share a host: a world of one starts its process group without a rendezvous, so
    a port held by someone else (here: the one its environment names) cannot stop it."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        if launcher == "torchrun":
            env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        code = ("import torch.distributed as dist\n"
                "from kotomamba.train.distributed import detect_launch_env, init_distributed\n"
                "init_distributed(detect_launch_env(), 'cpu')\n"
                "print(dist.get_world_size(), dist.get_rank())\n"
                "dist.destroy_process_group()\n")
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["1", "0"]


def test_multi_process_world_without_a_rendezvous_host_is_a_user_error():
    with pytest.raises(UserError, match="MASTER_ADDR"):
        detect_launch_env({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2",
                           "OMPI_COMM_WORLD_LOCAL_RANK": "0", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"})


def test_job_port_is_the_launchers_rendezvous_port():
    from kotomamba.train.launcher import rendezvous_port

    base = {"PMI_RANK": "0", "PMI_SIZE": "2", "MASTER_ADDR": "a"}
    for job_id in ("123456", "98765.pbs1", "60000"):
        assert detect_launch_env({**base, "PBS_JOBID": job_id}).master_port == rendezvous_port(job_id)
    assert detect_launch_env({**base, "PBS_JOBID": "98765.pbs1"}).master_port == 10000 + 98765 % 50000
    assert detect_launch_env(base).master_port == 10000
    with pytest.raises(UserError, match="MASTER_PORT"):
        detect_launch_env({**base, "JOB_ID": "interactive"})


def test_node_env_gives_the_ranks_of_a_node_one_triton_cache_with_autotune_results(monkeypatch, tmp_path):
    import os
    import socket
    import tempfile

    from kotomamba.train.distributed import apply_node_env

    for key in ("TRITON_CACHE_DIR", "TRITON_CACHE_AUTOTUNING", "TRITON_LIBCUDA_PATH"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("USER", "alice")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    apply_node_env({"TRITON_LIBCUDA_PATH": "/usr/lib64"})
    assert os.environ["TRITON_LIBCUDA_PATH"] == "/usr/lib64"
    assert os.environ["TRITON_CACHE_DIR"] == os.path.join(tmp_path, f"kotomamba-triton-alice-{socket.gethostname()}")
    assert os.environ["TRITON_CACHE_AUTOTUNING"] == "1"

    monkeypatch.setenv("TRITON_CACHE_DIR", "/shared/cache")
    monkeypatch.setenv("TRITON_CACHE_AUTOTUNING", "0")
    apply_node_env({})
    assert (os.environ["TRITON_CACHE_DIR"], os.environ["TRITON_CACHE_AUTOTUNING"]) == ("/shared/cache", "0")
