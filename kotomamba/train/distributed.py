"""Which launcher started this process, and the process group / device mesh built from it.

The same ``kotomamba train`` command works under every launcher; each one describes the world in
its own variables:

| launcher | rank | world size | local rank | rendezvous host |
| --- | --- | --- | --- | --- |
| torchrun | ``RANK`` | ``WORLD_SIZE`` | ``LOCAL_RANK`` | ``MASTER_ADDR`` |
| Open MPI ``mpirun`` | ``OMPI_COMM_WORLD_RANK`` | ``OMPI_COMM_WORLD_SIZE`` | ``OMPI_COMM_WORLD_LOCAL_RANK`` | ``MASTER_ADDR``, else the first host of the allocation |
| MPICH / Intel MPI (``mpiexec`` under PBS) | ``PMI_RANK`` | ``PMI_SIZE`` | ``MPI_LOCALRANKID`` | as above |
| Cray PALS (PBS ``mpiexec``) | ``PALS_RANKID`` | ``PMI_SIZE`` | ``PALS_LOCAL_RANKID`` | as above |
| SLURM ``srun`` | ``SLURM_PROCID`` | ``SLURM_STEP_NUM_TASKS`` | ``SLURM_LOCALID`` | first host of ``SLURM_STEP_NODELIST`` |
| none (plain ``python``) | 0 | 1 | 0 | none |

The first host of the allocation and the job's rendezvous port (``10000 + JOB_ID % 50000``, unless
``MASTER_PORT`` is set) are ``scheduler_facts``', so every rank computes the same ones. A world of one
meets nobody: its process group lives in an in-process store and takes no port, so any number of
single-GPU runs share a host (a port picked free and bound later can be taken in between).
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from kotomamba.errors import UserError
from kotomamba.train.scheduler_facts import first_host, job_id, rendezvous_port


@dataclass(frozen=True)
class LaunchEnv:
    launcher: str
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str | None  # None: a world of one, no rendezvous
    master_port: int | None


def _job_port(env: dict) -> int:
    """The launcher's rendezvous port of this job (``scheduler_facts.rendezvous_port``), so ranks started
    by ``kotomamba launch`` and by a bare ``srun`` / ``mpirun`` agree; outside a scheduler job (no job
    id) every rank takes the port of job 0."""
    return rendezvous_port(job_id(env) or "0")


def _int(env: dict, key: str) -> int:
    try:
        return int(env[key])
    except ValueError as exc:
        raise UserError(f"environment variable {key}={env[key]!r} is not an integer") from exc


def detect_launch_env(env: dict | None = None) -> LaunchEnv:
    """Read the world from the environment (see the module table)."""
    env = dict(os.environ if env is None else env)
    if "RANK" in env and "WORLD_SIZE" in env:
        launcher, rank, world = "torchrun", _int(env, "RANK"), _int(env, "WORLD_SIZE")
        local = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0
        local_world = _int(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else world
    elif "OMPI_COMM_WORLD_RANK" in env:
        launcher, rank, world = "openmpi", _int(env, "OMPI_COMM_WORLD_RANK"), _int(env, "OMPI_COMM_WORLD_SIZE")
        local = _int(env, "OMPI_COMM_WORLD_LOCAL_RANK")
        local_world = _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE")
    elif "PALS_RANKID" in env:
        launcher, rank, world = "pals", _int(env, "PALS_RANKID"), _int(env, "PMI_SIZE")
        local = _int(env, "PALS_LOCAL_RANKID")
        local_world = _int(env, "PALS_LOCAL_SIZE") if "PALS_LOCAL_SIZE" in env else world
    elif "PMI_RANK" in env and "PMI_SIZE" in env:
        launcher, rank, world = "pmi", _int(env, "PMI_RANK"), _int(env, "PMI_SIZE")
        local = _int(env, "MPI_LOCALRANKID") if "MPI_LOCALRANKID" in env else 0
        local_world = _int(env, "MPI_LOCALNRANKS") if "MPI_LOCALNRANKS" in env else world
    elif "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:
        launcher, rank, world = "slurm", _int(env, "SLURM_PROCID"), _int(env, "SLURM_STEP_NUM_TASKS")
        local = _int(env, "SLURM_LOCALID")
        per_node = env.get("SLURM_STEP_TASKS_PER_NODE", "").split("(")[0].split(",")[0]
        local_world = int(per_node) if per_node.isdigit() else world
    else:
        return LaunchEnv("none", 0, 1, 0, 1, None, None)
    if not 0 <= rank < world:
        raise UserError(f"launcher {launcher}: rank {rank} is outside the world of size {world}")
    addr = env.get("MASTER_ADDR") or first_host(env)
    if addr is None:
        if world > 1:
            raise UserError(
                f"launcher {launcher}: cannot tell the rendezvous host; export MASTER_ADDR (and MASTER_PORT)"
            )
        addr = "127.0.0.1"
    port = int(env["MASTER_PORT"]) if env.get("MASTER_PORT") else _job_port(env)
    return LaunchEnv(launcher, rank, world, local, local_world, addr, port)


_started = False


def process_group_started() -> bool:
    """Whether this process started a process group (``kotomamba.cli.run`` then ends it at once)."""
    return _started


def init_distributed(launch: LaunchEnv, device_type: str):
    """Start the default process group (NCCL on CUDA, gloo on CPU); always, even for one process.

    A world of one still gets a process group so that FSDP2 and ``torch.distributed.checkpoint``
    take the same code path everywhere.
    """
    import datetime

    import torch.distributed as dist

    global _started
    if dist.is_initialized():
        return
    backend = "nccl" if device_type == "cuda" else "gloo"
    kwargs = {}
    if device_type == "cuda":
        import torch

        kwargs["device_id"] = torch.device("cuda", launch.local_rank)
    if launch.world_size == 1:
        kwargs["store"] = dist.HashStore()
    else:
        os.environ["MASTER_ADDR"] = launch.master_addr
        os.environ["MASTER_PORT"] = str(launch.master_port)
        kwargs["init_method"] = f"tcp://{launch.master_addr}:{launch.master_port}"
    dist.init_process_group(backend=backend, rank=launch.rank, world_size=launch.world_size,
                            timeout=datetime.timedelta(minutes=30), **kwargs)
    _started = True


def build_mesh(device_type: str, world_size: int, strategy: str, shard_size: int | None):
    """A 1-D ``("shard",)`` mesh, or for HYBRID_SHARD a 2-D ``("replicate", "shard")`` mesh."""
    from torch.distributed.device_mesh import init_device_mesh

    if strategy != "HYBRID_SHARD":
        return init_device_mesh(device_type, (world_size,), mesh_dim_names=("shard",))
    shard = shard_size or world_size
    if world_size % shard:
        raise UserError(
            f"parallel.hybrid_shard_size ({shard}) must divide the world size ({world_size})"
        )
    return init_device_mesh(device_type, (world_size // shard, shard), mesh_dim_names=("replicate", "shard"))


def apply_node_env(env_vars: dict) -> None:
    """Set the configured variables, and a persistent per-node Triton cache that keeps autotune results.

    The ranks of a node share one cache directory: Triton (>= 3.2, which torch >= 2.6 requires) writes
    each cache file to a temporary name and renames it into place, so concurrent ranks never read a
    partial file. ``TRITON_CACHE_AUTOTUNING=1`` also stores the autotuner's choices there, so a
    later job on the node (the next stage, a resumed run) skips the mamba-ssm kernels' autotuning
    (over 100 s on the first Mamba-2 steps) and picks the same kernel configurations again.
    ``TRITON_LIBCUDA_PATH`` (set through the config's ``env`` section) tells Triton where libcuda is
    when ``ldconfig`` cannot; nothing installed is ever patched. Values already in the environment win.
    """
    import tempfile

    for key, value in env_vars.items():
        os.environ[str(key)] = str(value)
    if "TRITON_CACHE_DIR" not in os.environ:
        user = os.environ.get("USER") or str(os.getuid())
        os.environ["TRITON_CACHE_DIR"] = os.path.join(
            tempfile.gettempdir(), f"kotomamba-triton-{user}-{socket.gethostname()}"
        )
    os.environ.setdefault("TRITON_CACHE_AUTOTUNING", "1")
