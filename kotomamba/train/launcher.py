"""``kotomamba launch``: start a kotomamba subcommand on every GPU (or CPU process) of every node.

    kotomamba launch [--nnodes N] [--nproc-per-node P] [--rdzv-port PORT] -- train --config F ...
    kotomamba launch --nproc-per-node P -- -m some.module args   (any Python module, as torchrun -m)

Where it runs decides how (the allocation, its hosts, its time left and its rendezvous port are
``scheduler_facts``'; this module controls the processes):

- one node (outside a scheduler or inside a job): ``P == 1`` outside a scheduler runs the
  subcommand as one plain process (this process is replaced by it); otherwise torchrun's
  standalone mode runs ``P`` workers here;
- ``N`` nodes of a SLURM job: one ``srun --nodes=N --ntasks-per-node=1`` task per node, each running
  torchrun with a c10d rendezvous on the first host;
- ``N`` nodes of a Grid Engine or a PBS job (ABCI 3.0): ``mpirun`` starts one launcher per host, each
  running torchrun as above.

``MASTER_ADDR``/``MASTER_PORT`` are exported with the first host and the job's rendezvous port. Each
worker's own ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_*`` come from torchrun, which the
trainer reads; its thread counts are its share of the node's CPUs (``node_threads_env``).

Exit status: the training's. torchrun reports any failed worker as 1, so every worker runs through
this module (``--worker-exit-dir``), which records its exit code and pid in a node-local directory;
exit code 75 (``stop_signals.EXIT_REQUEUE``, EX_TEMPFAIL: "checkpointed on a signal or wall-time
budget: requeue me") is recorded and reported to torchrun as success, so torchrun waits for every
rank to finish its checkpoint instead of killing the slower ones, and the launcher then exits 75.
The node launchers of a multi-node job do the same one floor up (``--node-exit-dir``, a directory
of the job's working directory, which the nodes share): srun's ``--kill-on-bad-exit`` and mpirun
would otherwise end the other nodes when the first exits 75, and report another code.

Signals: SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 (Grid Engine's ``-notify`` warning) received by a node's
launcher are sent straight to its workers (torchrun would answer SIGTERM by killing them after 30 s
and SIGUSR1 by dying), so they can save a checkpoint and exit 75. The job's launcher of a multi-node
job sends SIGUSR1 to srun/mpirun instead, whichever it received: both pass SIGUSR1 on to the node
launchers, while Open MPI's mpirun answers SIGTERM by killing its processes within seconds.
torchrun itself is started with SIGUSR1 and SIGUSR2 ignored (schedulers such as SLURM's
``--signal=USR1@T`` signal every process of the step); workers restore their default.
Told to stop before the workers could answer, the launcher exits 75 too. No signal is lost on the
way in: the launcher answers them from before it starts torchrun (or srun/mpirun, told as soon as
they run); one that came before a worker recorded its pid is left in the exit directory
(``STOP_RECORD``), where each worker looks once its pid is there and, finding it, exits 75 without
running; and Ctrl-C is heard even where the launcher started with SIGINT ignored
(``_hear_ctrl_c``). A signal that reached torchrun as well (the scheduler signals every process of
a job) ends without its traceback; the launcher's last line says which signal, the checkpoint the
run resumes from and the exit code (``torchrun_stop.py``). No worker outlives the launcher, whatever
ends it (``kill -9`` included): torchrun and each worker are killed by the kernel when their parent
dies (``parent_death.py``); the exit directories of launchers that died that way are removed by the
next launcher on the host.

Wall time: inside a job with a time limit, ``train`` gets ``train.wall_time_budget_s`` = the
job's time left less a margin (unless the config's own value is smaller; the launcher reads the
training config once, ``training_config``, for this, its run directory and its stop line), so the trainer
checkpoints and exits 75 before the scheduler kills it. When such a job advanced its stage and the
launcher was not told to stop, the launcher has the scheduler run the same job again (requeue in
place, ``requeue.py``), so a stage longer than a job goes on without using Snakemake's retries.

Environment: srun passes the whole environment to every node; ``mpirun`` gets ``-x`` for the names
in ``MPIRUN_EXPORTS`` and every variable of the families in ``MPIRUN_EXPORT_PREFIXES`` (``NCCL_*``,
``WANDB_*``, ``HF_*``, ``TRITON_*``, ``KOTOMAMBA_*``, ...). Triton: when no ``TRITON_CACHE_DIR`` is
set, the trainer gives the ranks of a node one node-local cache that keeps autotune results.

Devices: ``--device gpu`` checks on every node, before starting its workers, that it has
``--nproc-per-node`` CUDA devices and stops with an error naming the node otherwise; ``--device
cpu`` hides CUDA from the workers; ``auto`` (default) leaves it to the trainer.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from typing import TYPE_CHECKING

from kotomamba.errors import UserError, report
from kotomamba.train import requeue
from kotomamba.train.job_log import read_job_starts
from kotomamba.train.parent_death import LAUNCHER_PID, alive, die_with_parent
from kotomamba.train.run_dir import RunDir
from kotomamba.train.scheduler_facts import (Allocation, detect_allocation, job_seconds_left, rendezvous_port,
                                             slurm_job_fields)
from kotomamba.train.stop_signals import EXIT_REQUEUE
from kotomamba.train.torchrun_stop import TORCHRUN_MODULE, stop_line

if TYPE_CHECKING:
    from kotomamba.train.config import TrainConfig

EXIT_DIR_PREFIX = "kotomamba-launch-"
# In a node's exit directory: its launcher was told to stop (for the workers not told themselves).
STOP_RECORD = "stopped"
NODE_EXIT_DIR_PREFIX = ".kotomamba-nodes-"
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
# What a stop signal becomes on its way to the workers: srun and Open MPI's mpirun pass SIGUSR1 on to
# their tasks, while mpirun answers SIGTERM by killing them a few seconds later (before a checkpoint).
STOP = signal.SIGUSR1


WALL_TIME_KEY = "train.wall_time_budget_s"


def training_config(args: list[str]) -> TrainConfig | None:
    """The config a ``train --config F [overrides]`` command trains with, read once by the launcher (for
    its wall-time budget and its run directory); None for other commands, and for a command or config
    the trainer rejects (it reports them itself)."""
    if args[:1] != ["train"]:
        return None
    from kotomamba.train.cli import parse_args
    from kotomamba.train.config import load_config

    try:
        options = parse_args(args[1:])
        return load_config(options.config, options.overrides)
    except (UserError, SystemExit):
        return None


def run_dir(config: TrainConfig | None) -> RunDir | None:
    """The run directory of a ``training_config`` (None where that is None)."""
    return RunDir(config.run_dir) if config is not None else None


def with_wall_time_budget(args: list[str], seconds_left: float | None, config: TrainConfig | None) -> list[str]:
    """``args`` of a ``train`` command (whose config is ``config``) plus ``train.wall_time_budget_s=`` the
    job's time left less a margin (5%, at least a minute; at least one second), unless the command line
    sets it or the config sets no more (its own value then stands)."""
    if seconds_left is None or config is None or any(arg.startswith(WALL_TIME_KEY + "=") for arg in args):
        return args
    budget = max(seconds_left - max(60.0, 0.05 * seconds_left), 1.0)
    configured = config.train.wall_time_budget_s
    if configured is not None and configured <= budget:
        return args
    return [*args, f"{WALL_TIME_KEY}={budget:.0f}"]


def kotomamba_command(args: list[str]) -> list[str]:
    """This interpreter running ``kotomamba <args>`` (works without the console script on PATH), or
    ``python -m MODULE ...`` when ``args`` starts with ``-m MODULE``."""
    if args[:1] == ["-m"]:
        return [sys.executable, *args]
    return [sys.executable, "-m", "kotomamba", *args]


def run_in_process(args: list[str]) -> int:
    """Run ``kotomamba <args>`` (or ``-m MODULE args``) in this process; return its exit code."""
    try:
        if args[:1] == ["-m"]:
            if len(args) < 2:
                raise UserError("launch: `-m` needs a module name")
            sys.argv = [args[1], *args[2:]]
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
            return 0
        from kotomamba.cli import main as kotomamba_main

        return int(kotomamba_main(args) or 0)
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            return exit_.code or 0
        print(exit_.code, file=sys.stderr)
        return 1


def torchrun_command(
    nnodes: int, nproc_per_node: int, exit_dir: str, args: list[str], endpoint: str | None, rdzv_id: str
) -> list[str]:
    """torchrun on this node; every worker is ``kotomamba launch --worker-exit-dir DIR -- args``."""
    command = [sys.executable, "-m", TORCHRUN_MODULE, "--nproc-per-node", str(nproc_per_node)]
    if endpoint is None:
        command += ["--standalone", "--nnodes", "1"]
    else:
        command += ["--nnodes", str(nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
                    "--rdzv-id", rdzv_id]
    return command + ["--max-restarts", "0", "-m", "kotomamba", "launch", "--worker-exit-dir", exit_dir,
                      "--", *args]


def node_launcher_args(options: argparse.Namespace, endpoint: str, rdzv_id: str,
                       node_exit_dir: str | None = None) -> list[str]:
    """Arguments of the per-node launcher that the fan-out (srun/mpirun) starts on every host."""
    exits = ["--node-exit-dir", node_exit_dir] if node_exit_dir else []
    return ["launch", "--node-local", "--nnodes", str(options.nnodes), "--nproc-per-node",
            str(options.nproc_per_node), "--device", options.device, "--rdzv-endpoint", endpoint,
            "--rdzv-id", rdzv_id, *exits, "--", *options.args]


# The thread counts of the math libraries, which Snakemake sets to a rule's threads and CPU results depend on.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def node_threads_env(nproc_per_node: int, env: dict[str, str]) -> dict[str, str]:
    """The workers' thread counts: the node's CPU budget shared among its ``nproc_per_node`` ranks.

    The budget is the ``OMP_NUM_THREADS`` this launcher was given, where set (Snakemake sets it and the
    rest of ``THREAD_VARIABLES`` to the rule's ``threads``: the CPUs it reserved for the job, one per
    rank), else the CPUs this process may run on (one process without a budget keeps the libraries'
    defaults: torch's is the physical cores). Each rank gets its share in ``OMP_NUM_THREADS`` and in
    whichever of the others are set, so every rank runs as many threads however the job is laid out over
    nodes (CPU results depend on that number, through the order of multi-threaded sums, and a run over
    two nodes must equal the same run on one), and the ranks of a node do not oversubscribe its CPUs
    (torchrun hands inherited values to every worker unchanged)."""
    budget = env.get("OMP_NUM_THREADS", "")
    if not budget and nproc_per_node == 1:
        return env
    # The CPUs it may run on: its affinity where the system keeps one (Linux; not macOS).
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cpus = int(budget) if budget.isdigit() and int(budget) > 0 else usable
    share = str(max(1, cpus // nproc_per_node))
    return {**env, **{name: share for name in THREAD_VARIABLES if name in env}, "OMP_NUM_THREADS": share}


def node_device_env(device: str, nproc_per_node: int, env: dict[str, str]) -> dict[str, str]:
    """The workers' environment for ``--device``, checked on the node that runs them.

    ``gpu``: this node must show at least ``nproc_per_node`` CUDA devices, else a UserError (the
    trainer would otherwise train on CPU without a word). ``cpu``: CUDA is hidden from the workers,
    so they train on CPU even where GPUs exist. ``auto``: as the trainer finds it.
    """
    if device == "cpu":
        return {**env, "CUDA_VISIBLE_DEVICES": ""}
    if device == "gpu":
        import torch

        found = torch.cuda.device_count()
        if found < nproc_per_node:
            raise UserError(
                f"--device gpu: node {socket.gethostname()} has {found} usable CUDA device(s) "
                f"(CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '<unset>')}), the run needs "
                f"{nproc_per_node} per node (launch.nproc_per_node); ask the scheduler for GPUs, or set "
                "launch.device: cpu to train on CPU"
            )
    return env


# Passed by name to the other nodes (Open MPI's -x; srun passes the whole environment): what finds
# the interpreter and the code, the rendezvous, and every variable of these families, so that what
# the docs say to set in the environment (NCCL tuning, trackers, Hugging Face caches) reaches every
# rank. Not CUDA_*: CUDA_VISIBLE_DEVICES is each node's own.
MPIRUN_EXPORTS = ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "VIRTUAL_ENV", "MASTER_ADDR", "MASTER_PORT",
                  "OMP_NUM_THREADS", "CUDA_HOME")
MPIRUN_EXPORT_PREFIXES = ("KOTOMAMBA_", "NCCL_", "WANDB_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TOKENIZERS_",
                          "TRITON_", "TORCH_", "PYTORCH_", "UCX_", "GLOO_")


def fan_out_command(allocation: Allocation, nnodes: int, node_args: list[str], hostfile: str,
                    env: dict[str, str], cpus_per_node: str | None = None) -> list[str]:
    """The command that starts one per-node launcher on each of the first ``nnodes`` hosts.

    SLURM: one ``srun`` task per node given ``cpus_per_node`` CPUs (the job's CPUs per node: a
    step gets one CPU per task unless told) and, by SLURM's default, all of the node's GPUs.
    Grid Engine / PBS: ``mpirun`` with one process per host of ``hostfile``, exporting the
    environment the workers need (Open MPI's ``-x``).
    """
    if allocation.scheduler == "slurm":
        cpus = [f"--cpus-per-task={cpus_per_node}"] if cpus_per_node else []
        return ["srun", f"--nodes={nnodes}", f"--ntasks={nnodes}", "--ntasks-per-node=1", *cpus,
                "--kill-on-bad-exit=1", *kotomamba_command(node_args)]
    names = [name for name in MPIRUN_EXPORTS if name in env]
    names += [name for name in sorted(env) if name.startswith(MPIRUN_EXPORT_PREFIXES) and name not in names]
    exports = [item for name in names for item in ("-x", name)]
    return ["mpirun", "-np", str(nnodes), "--map-by", "ppr:1:node", "--hostfile", hostfile, "--bind-to", "none",
            *exports, *kotomamba_command(node_args)]


def node_local_scratch(env: dict[str, str]) -> str:
    """A node-local directory: the scheduler's scratch (PBS_LOCALDIR, SGE_LOCALDIR, TMPDIR) or /tmp's."""
    for name in ("PBS_LOCALDIR", "SGE_LOCALDIR", "SLURM_TMPDIR", "TMPDIR"):
        if env.get(name) and os.path.isdir(env[name]):
            return env[name]
    return tempfile.gettempdir()


def recorded_worker_pids(exit_dir: Path) -> list[int]:
    """Pids of the running workers that ``run_worker`` recorded in ``exit_dir``."""
    pids = []
    for pid_file in exit_dir.glob("rank-*.pid"):
        with contextlib.suppress(ValueError, OSError):
            pids.append(int(pid_file.read_text()))
    return pids


class _SignalForwarder:
    """While active, answer each of ``FORWARDED_SIGNALS`` by sending it on to the pids ``targets()``
    names, or to the process :meth:`started` named when it names none (workers not started yet); as
    ``sent`` instead where given (``STOP`` to srun/mpirun). ``stop_record``, where given, is created
    first (before ``targets()`` is read), for the workers that record their pids too late to be named.

    Entered before that process starts, so that a signal never finds the launcher without its answer
    (a default one would end it and leave srun/mpirun running), and one that comes before the process
    runs is passed on to it once it does."""

    def __init__(self, targets, sent: int | None = None, stop_record: Path | None = None):
        self.targets = targets
        self.sent = sent
        self.stop_record = stop_record
        self.process: subprocess.Popen | None = None
        self.previous: dict[int, object] = {}
        self.received = False
        self.signum: int | None = None  # the last one received

    def _forward(self, signum: int, frame) -> None:
        self.received = True
        self.signum = signum
        if self.stop_record is not None:
            self.stop_record.touch()
        for pid in self.targets() or ([self.process.pid] if self.process is not None else []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, self.sent or signum)

    def started(self, process: subprocess.Popen) -> None:
        """``process`` runs from now on: told of a signal that came before."""
        self.process = process
        if self.signum is not None:
            self._forward(self.signum, None)

    def __enter__(self) -> _SignalForwarder:
        for signum in FORWARDED_SIGNALS:
            self.previous[signum] = signal.signal(signum, self._forward)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def _torchrun_preexec(launcher_pid: int) -> None:
    for signum in (signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_IGN)
    die_with_parent(launcher_pid)


def remove_stale_exit_dirs(scratch: str) -> None:
    """Remove the exit directories of this host's launchers that are gone (``kill -9`` skips ``finally``)."""
    for path in Path(scratch).glob(f"{EXIT_DIR_PREFIX}{socket.gethostname()}-*-*"):
        pid = path.name[len(EXIT_DIR_PREFIX) + len(socket.gethostname()) + 1:].split("-")[0]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def node_exit_code(starter_code: int, recorded: list[int], stopped: bool = False) -> int:
    """A launcher's exit code from that of what it started (torchrun on a node; srun or mpirun for
    the job) and the codes its processes recorded (the workers'; the node launchers').

    A recorded failure (code other than 0 and 75) wins; else 75 if any process asked for a requeue,
    or if the launcher was told to stop (``stopped``) and the starter failed (processes stopped
    before they could answer: nothing trained since their last checkpoint); else the starter's code
    (nonzero when a process died without recording, e.g. killed).
    """
    failures = [code for code in recorded if code not in (0, EXIT_REQUEUE)]
    if failures:
        return failures[0]
    if stopped and starter_code != 0:
        return EXIT_REQUEUE
    if starter_code == 0 and EXIT_REQUEUE in recorded:
        return EXIT_REQUEUE
    if starter_code != 0 and recorded and all(code == EXIT_REQUEUE for code in recorded):
        return EXIT_REQUEUE
    return starter_code


@dataclasses.dataclass(frozen=True)
class Ended:
    """How the processes a launcher started ended: the exit code it reports (see ``node_exit_code``)
    and whether the launcher was told to stop meanwhile."""

    code: int
    stopped: bool


def run_node(nnodes: int, nproc_per_node: int, args: list[str], endpoint: str | None, rdzv_id: str,
             env: dict[str, str], run: RunDir | None) -> Ended:
    """Run torchrun on this node and wait for it, each worker with its share of the node's CPUs
    (:func:`node_threads_env`); ``run``: the run directory ``args`` train in (None: not a ``train``
    command), named by the log's last line when a signal stops them."""
    env = node_threads_env(nproc_per_node, env)
    scratch, pid = node_local_scratch(env), os.getpid()
    remove_stale_exit_dirs(scratch)
    exit_dir = Path(tempfile.mkdtemp(prefix=f"{EXIT_DIR_PREFIX}{socket.gethostname()}-{pid}-", dir=scratch))
    try:
        command = torchrun_command(nnodes, nproc_per_node, str(exit_dir), args, endpoint, rdzv_id)
        with _SignalForwarder(lambda: recorded_worker_pids(exit_dir), stop_record=exit_dir / STOP_RECORD) as forwarder:
            process = subprocess.Popen(command, env={**env, LAUNCHER_PID: str(pid)},
                                       preexec_fn=lambda: _torchrun_preexec(pid))
            forwarder.started(process)
            torchrun_code = process.wait()
        worker_codes = [int(path.read_text()) for path in sorted(exit_dir.glob("rank-*.exit"))]
        code = node_exit_code(torchrun_code, worker_codes, stopped=forwarder.received)
        if forwarder.signum is not None:
            print(stop_line(forwarder.signum, code, run), file=sys.stderr, flush=True)
        return Ended(code, forwarder.received)
    finally:
        shutil.rmtree(exit_dir, ignore_errors=True)


def report_node(code: int, node_exit_dir: str | None) -> int:
    """A node launcher's exit code for srun/mpirun: its code, recorded in the job's ``node_exit_dir``
    (shared by the nodes); 75 is recorded and reported as success, so that srun (``--kill-on-bad-exit``)
    and mpirun do not kill the other nodes while they finish their checkpoint (as ``run_worker`` does
    for torchrun). Where the record cannot be written, the code is reported as it is."""
    if node_exit_dir is None:
        return code
    record = Path(node_exit_dir) / f"node-{socket.gethostname()}.exit"
    try:
        record.write_text(str(code))
    except OSError as exc:
        print(f"kotomamba launch: node {socket.gethostname()}: cannot record exit code {code} in {record} "
              f"({exc})", file=sys.stderr, flush=True)
        return code
    return 0 if code == EXIT_REQUEUE else code


def run_worker(exit_dir: str, args: list[str]) -> int:
    """One torchrun worker: run ``kotomamba <args>`` here, record pid and exit code in ``exit_dir``;
    75 at once, without running them, where the launcher was told to stop before (``STOP_RECORD``).

    Returns 0 for exit code 75 (recorded as 75) so torchrun lets the other ranks finish.
    """
    launcher = os.environ.get(LAUNCHER_PID, "")
    die_with_parent(int(launcher) if launcher.isdigit() else None)
    for signum in (signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_DFL)
    rank = os.environ.get("RANK", "0")
    directory = Path(exit_dir)
    (directory / f"rank-{rank}.pid").write_text(str(os.getpid()))
    code = 1
    try:
        # Looked for after the pid is there: the launcher creates it before it reads the pids, so a
        # stop signal reaches this worker one way or the other.
        code = EXIT_REQUEUE if (directory / STOP_RECORD).exists() else run_in_process(args)
    finally:
        (directory / f"rank-{rank}.pid").unlink(missing_ok=True)
        (directory / f"rank-{rank}.exit").write_text(str(code))
    return 0 if code == EXIT_REQUEUE else code


def run_plain(args: list[str], env: dict[str, str]) -> int:
    """Replace this process by ``kotomamba <args>``: one process, its own exit code and signals."""
    command = kotomamba_command(args)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, env)
    return 1  # not reached: execve only returns by raising


def launch(options: argparse.Namespace, env: dict[str, str]) -> int:
    if options.nnodes < 1 or options.nproc_per_node < 1:
        raise UserError("launch: --nnodes and --nproc-per-node must be at least 1")
    if not options.args:
        raise UserError("launch: nothing to run; give a subcommand after `--`, e.g. `-- train --config F`")
    if options.node_local:
        # One line per node in the job's log: which hosts the ranks really ran on.
        print(f"kotomamba launch: node {socket.gethostname()}: {options.nproc_per_node} process(es), "
              f"rendezvous {options.rdzv_endpoint}", file=sys.stderr, flush=True)
        env = node_device_env(options.device, options.nproc_per_node, env)
        ended = run_node(options.nnodes, options.nproc_per_node, options.args, options.rdzv_endpoint,
                         options.rdzv_id, env, run_dir(training_config(options.args)))
        return report_node(ended.code, options.node_exit_dir)
    allocation = detect_allocation(env)
    if allocation is None:
        if options.nnodes > 1:
            raise UserError(
                f"launch: --nnodes {options.nnodes} needs a SLURM, Grid Engine or PBS allocation "
                "(no SLURM_JOB_ID, JOB_ID or PBS_JOBID in the environment)"
            )
        env = node_device_env(options.device, options.nproc_per_node, env)
        if options.nproc_per_node == 1:
            return run_plain(options.args, env)
        return run_node(1, options.nproc_per_node, options.args, None, "", env,
                        run_dir(training_config(options.args))).code
    config = training_config(options.args)
    options.args = with_wall_time_budget(options.args, job_seconds_left(allocation), config)
    if options.nnodes > len(allocation.hosts):
        raise UserError(
            f"launch: --nnodes {options.nnodes} but the {allocation.scheduler} job {allocation.job_id} "
            f"has {len(allocation.hosts)} host(s): {', '.join(allocation.hosts)}"
        )
    run = run_dir(config)
    starts_before = (read_job_starts(run) or []) if run is not None else []
    ended = launch_in_allocation(options, allocation, env, run)
    return requeue.after_training(ended.code, ended.stopped, run, starts_before, allocation.scheduler,
                                  allocation.job_id, env)


def launch_in_allocation(options: argparse.Namespace, allocation: Allocation, env: dict[str, str],
                         run: RunDir | None) -> Ended:
    """Run ``options.args`` (training in ``run``, when a ``train`` command) on the allocation's first
    ``--nnodes`` hosts.

    Several nodes: one node launcher per host (srun/mpirun), each recording its exit code in a
    directory of the job's working directory (which the nodes share, as Snakemake's cluster jobs
    need); the job's code is ``node_exit_code`` of srun's/mpirun's and the nodes' recorded ones, so
    a 75 on every node stays 75 whichever node finished first.
    """
    if options.nnodes == 1:
        return run_node(1, options.nproc_per_node, options.args, None, "", node_device_env(
            options.device, options.nproc_per_node, env), run)
    port = options.rdzv_port or rendezvous_port(allocation.job_id)
    env = {**env, "MASTER_ADDR": allocation.hosts[0], "MASTER_PORT": str(port)}
    endpoint = f"{allocation.hosts[0]}:{port}"
    rdzv_id = f"{allocation.scheduler}-{allocation.job_id}"
    cpus_per_node = None
    if allocation.scheduler == "slurm":
        cpus_per_node = env.get("SLURM_CPUS_PER_TASK") or slurm_job_fields(allocation.job_id).get("CPUs/Task")
    try:
        node_exit_dir = tempfile.mkdtemp(prefix=f"{NODE_EXIT_DIR_PREFIX}{allocation.job_id}-", dir=os.getcwd())
    except OSError as exc:  # the nodes then report their own codes, 75 a failure to srun/mpirun
        print(f"kotomamba launch: cannot create the nodes' exit directory in {os.getcwd()} ({exc})",
              file=sys.stderr, flush=True)
        node_exit_dir = None
    node_args = node_launcher_args(options, endpoint, rdzv_id, node_exit_dir)
    try:
        with tempfile.NamedTemporaryFile("w", prefix="kotomamba-hosts-", suffix=".txt") as hostfile:
            hostfile.write("".join(f"{host} slots=1\n" for host in allocation.hosts[: options.nnodes]))
            hostfile.flush()
            command = fan_out_command(allocation, options.nnodes, node_args, hostfile.name, env, cpus_per_node)
            print(f"kotomamba launch: {allocation.scheduler} job {allocation.job_id}: {' '.join(command)}",
                  file=sys.stderr, flush=True)
            with _SignalForwarder(list, sent=STOP) as forwarder:
                process = subprocess.Popen(command, env=env)
                forwarder.started(process)
                fan_out_code = process.wait()
        records = sorted(Path(node_exit_dir).glob("node-*.exit")) if node_exit_dir else []
        node_codes = [int(path.read_text()) for path in records]
        return Ended(node_exit_code(fan_out_code, node_codes, stopped=forwarder.received), forwarder.received)
    finally:
        if node_exit_dir:
            shutil.rmtree(node_exit_dir, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kotomamba launch",
        description="Start a kotomamba subcommand on every process of this machine or of a SLURM/SGE/PBS "
        "allocation. Everything after `--` is the subcommand and its arguments.",
    )
    parser.add_argument("--nnodes", type=int, default=1, help="nodes to use (default 1)")
    parser.add_argument("--nproc-per-node", type=int, default=1, help="processes (GPUs) per node (default 1)")
    parser.add_argument("--device", choices=("auto", "gpu", "cpu"), default="auto",
                        help="gpu: stop unless every node has --nproc-per-node CUDA devices; cpu: train on "
                        "CPU even where GPUs exist; auto (default): whatever the trainer finds")
    parser.add_argument("--rdzv-port", type=int, default=None,
                        help="rendezvous port on the first node (default 10000 + JOB_ID %% 50000)")
    parser.add_argument("--node-local", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rdzv-endpoint", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rdzv-id", default="", help=argparse.SUPPRESS)
    parser.add_argument("--worker-exit-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--node-exit-dir", default=None, help=argparse.SUPPRESS)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    if "--" in argv:
        split = argv.index("--")
        own, rest = argv[:split], argv[split + 1:]
    else:
        own, rest = argv, []
    options = build_parser().parse_args(own)
    options.args = rest
    return options


def _hear_ctrl_c() -> None:
    """Answer SIGINT with ``KeyboardInterrupt``, as Python does unless the process started with it ignored,
    which a non-interactive shell's background job does (``snakemake ... &``): left ignored, Ctrl-C would be
    lost here and, since ``exec`` keeps an ignored signal ignored, in the trainer that replaces this process
    (``run_plain``) until its own handler is in (``stop_signals``)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str]) -> int:
    _hear_ctrl_c()
    options = parse_args(argv)
    if options.worker_exit_dir is not None:
        return run_worker(options.worker_exit_dir, options.args)
    try:
        return launch(options, dict(os.environ))
    except UserError as error:
        return report("launch", error)
