"""`kotomamba launch` and the cluster: `--device` (a GPU run that finds no GPU stops, a CPU run
hides them) and the environment that mpirun passes to the other nodes. No daemons needed."""
from __future__ import annotations

import pytest

from kotomamba.errors import UserError
from kotomamba.train import launcher
from kotomamba.train.scheduler_facts import Allocation


def test_a_gpu_run_on_a_node_without_gpus_stops_with_a_clear_error(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match=r"has 2 usable CUDA device\(s\).*needs 8 per node.*launch.device: cpu"):
        launcher.node_device_env("gpu", 8, {})
    assert launcher.node_device_env("gpu", 2, {"A": "1"}) == {"A": "1"}


def test_a_cpu_run_hides_cuda_and_auto_leaves_the_environment():
    assert launcher.node_device_env("cpu", 4, {"CUDA_VISIBLE_DEVICES": "0,1"})["CUDA_VISIBLE_DEVICES"] == ""
    assert launcher.node_device_env("auto", 4, {"A": "1"}) == {"A": "1"}


def test_the_device_reaches_every_node_launcher():
    options = launcher.parse_args(["--nnodes", "2", "--nproc-per-node", "8", "--device", "gpu", "--", "train"])
    args = launcher.node_launcher_args(options, "h1:10001", "pbs-1")
    assert args[args.index("--device") + 1] == "gpu"
    assert launcher.parse_args(args[1:args.index("--")]).device == "gpu"


def test_mpirun_passes_the_users_families_of_variables_but_not_per_node_ones():
    env = {"PATH": "/bin", "NCCL_IB_HCA": "mlx5", "NCCL_DEBUG": "INFO", "WANDB_API_KEY": "k", "HF_HOME": "/h",
           "HF_DATASETS_OFFLINE": "1", "TRITON_CACHE_DIR": "/t", "KOTOMAMBA_X": "1",
           "CUDA_VISIBLE_DEVICES": "0", "CUDA_HOME": "/cuda", "UNRELATED": "2"}
    command = launcher.fan_out_command(Allocation("sge", "5", ("h1", "h2")), 2, ["launch"], "/h", env)
    exported = {command[i + 1] for i, item in enumerate(command) if item == "-x"}
    assert exported == {"PATH", "CUDA_HOME", "NCCL_IB_HCA", "NCCL_DEBUG", "WANDB_API_KEY", "HF_HOME",
                        "HF_DATASETS_OFFLINE", "TRITON_CACHE_DIR", "KOTOMAMBA_X"}
