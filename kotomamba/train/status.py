"""``kotomamba status RUN [--json]``: how far each training stage is, read from its run directory alone.

RUN is a pipeline run's results (``results/<run>``: every stage under ``train/``) or one run directory.
Made to be run from a login node while jobs train: it only reads (the run lock is probed with a shared
lock given back at once, never taken), it tolerates the torn last line of a ``metrics.jsonl`` being
written. What it says of a stage that no trainer holds is what the next job's start will find: the
checkpoint it resumes is the newest one that verifies, by the start's own check less the checksums
(:func:`kotomamba.train.start_plan.newest_verified`: every file ``integrity.json`` records there, of its recorded
size, so no checkpoint's data is read; one from before checksums were recorded needs torch to read DCP's
metadata), a checkpoint that does not verify is named as one the next job sets aside, and an identity
record the start cannot read is named. While a trainer holds the run, its newest recorded checkpoint is
shown unverified (:func:`complete_checkpoint`: cheap, and the trainer's own start verified what it resumed).

Per stage: its state (not started; running: a trainer holds the lock; stopped: interrupted, the next job
resumes; finished: ``final.json``; outdated: finished, but the stage it starts from has trained again
since, or trains now, so the pipeline trains it again), the step of the total, tokens, the checkpoint the next job would
resume from, the jobs used (``jobs.jsonl``), the throughput of the last logged windows and the training
time left at that throughput (queue waits not counted), and how many earlier generations were superseded.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kotomamba.errors import UserError, report
from kotomamba.train.identity import changed_start, predecessor_run, unreadable_record
from kotomamba.train.job_log import read_job_starts
from kotomamba.train.metrics_file import read_metrics
from kotomamba.train.restart_request import pending_restart
from kotomamba.train.run_dir import DCP_METADATA, INTEGRITY, RunDir, step_of
from kotomamba.train.run_lock import held_by
from kotomamba.train.start_plan import StartPlan, newest_verified

# How many of the newest logged windows the throughput is averaged over.
THROUGHPUT_WINDOWS = 5


@dataclass
class StageStatus:
    name: str
    run_dir: str
    state: str  # "not started" | "running" | "stopped" | "finished" | "outdated"
    step: int = 0
    total_steps: int | None = None
    tokens: int | None = None
    total_tokens: int | None = None
    checkpoint: str | None = None  # the newest complete checkpoint's directory name
    checkpoint_step: int | None = None
    jobs: int | None = None  # None: the run is older than jobs.jsonl
    tokens_per_s: float | None = None
    seconds_left: float | None = None
    superseded: int = 0
    holder: str | None = None  # the lock's text while running
    notes: list[str] = field(default_factory=list)


def _config(run: RunDir):
    """The stage's trainer config: what its last job ran with, else what the pipeline wrote for it."""
    from kotomamba.train.config import load_config

    for path in (run.config, run.stage_config):
        if path.is_file():
            return load_config(path)
    return None


def complete_checkpoint(run: RunDir) -> Path | None:
    """The newest checkpoint whose save completed, as recorded: ``integrity.json`` is written before a checkpoint
    gets its ``step_N`` name; one from before checksums were recorded counts when ``latest`` names it."""
    latest = run.latest.read_text(errors="replace").strip() if run.latest.is_file() else None
    for checkpoint in run.step_dirs():
        if (checkpoint / INTEGRITY).is_file() or (checkpoint.name == latest and (checkpoint / DCP_METADATA).is_file()):
            return checkpoint
    return None


def _next_start(run: RunDir, status: StageStatus) -> Path | None:
    """The checkpoint the next job resumes, found by its start's own check less the checksums (status reads no
    checkpoint's data: on a login node that would be tens of GB); what that start would set aside or refuse goes
    to the stage's notes."""
    plan = StartPlan()
    checkpoint = newest_verified(run, plan, hashed=False)
    status.notes += [f"the next job's start: {note}" for note in plan.notes]
    if checkpoint is None and plan.set_aside:
        status.notes.append("no checkpoint verifies: the next job starts over at step 1 (this run is kept as a "
                            "superseded generation)")
    if unreadable_record(run) is not None:
        finished = " (unless its final.json records the identity the job is started with)" if run.final.is_file() \
            else ""
        status.notes.append(f"{run.identity}: the identity record is unreadable (empty or not the JSON train "
                            f"wrote): the next job refuses to resume{f' {checkpoint.name}' if checkpoint else ''}"
                            f"{finished} until it is restored, or restart the run with --resume never")
    return checkpoint


def throughput(records: list[dict]) -> float | None:
    """Tokens per second over the newest logged windows (each holds ``logging.interval`` steps, so the harmonic
    mean of their rates is their tokens over their time; the time includes evaluations and checkpoint saves)."""
    rates = [r["tokens_per_s"] for r in records if r.get("tokens_per_s")][-THROUGHPUT_WINDOWS:]
    return len(rates) / sum(1.0 / rate for rate in rates) if rates else None


def _readable(status: StageStatus, read, *args, **kwargs):
    """``read(*args, **kwargs)``, or ``None`` with the reason in the stage's notes: one unreadable record does
    not hide the rest of the stage, nor the other stages."""
    try:
        return read(*args, **kwargs)
    except UserError as exc:
        status.notes.append(str(exc))
        return None


def stage_status(root: Path, name: str | None = None) -> StageStatus:
    """The status of the run directory ``root`` (only reads it)."""
    for _ in range(2):
        try:
            return _read_stage(root, name)
        except FileNotFoundError:
            pass  # a job set its run aside (a new generation) or pruned a checkpoint while we read: read again
    return _read_stage(root, name)


def _read_stage(root: Path, name: str | None) -> StageStatus:
    run = RunDir(root)
    status = StageStatus(name=name or run.root.name, run_dir=str(run.root), state="not started")
    status.superseded = sum(1 for p in run.superseded.iterdir() if p.name.isdigit()) if run.superseded.is_dir() else 0
    status.holder = held_by(run.lock)
    config = _readable(status, _config, run)
    checkpoint = complete_checkpoint(run) if status.holder is not None else _next_start(run, status)
    if checkpoint is not None:
        status.checkpoint = checkpoint.name
        status.checkpoint_step = step_of(checkpoint)
    records = (_readable(status, read_metrics, run.metrics, note_torn=False) or []) if run.metrics.is_file() else []
    logged = max((r["step"] for r in records), default=0)
    jobs = read_job_starts(run)
    status.jobs = len(jobs) if jobs is not None else None
    final = json.loads(run.final.read_text()) if run.final.is_file() else None
    if status.holder is not None:
        status.state = "running"
        status.step = max(logged, status.checkpoint_step or 0)
    elif final is not None:
        status.state = "finished"
        status.step = final["step"]
    elif any(path.exists() for path in run.records()):
        status.state = "stopped"
        # What is kept: steps logged after the checkpoint are trained again by the next job.
        status.step = status.checkpoint_step or 0
        if logged > status.step:
            status.notes.append(f"logged up to step {logged}; the next job resumes from step {status.step}")
    changed = changed_start(run, config.init.from_) if config is not None and config.init.from_ else None
    if changed is not None and status.state in ("finished", "stopped"):
        predecessor = predecessor_run(config.init.from_).root.name  # a stage's name, also where it names a checkpoint
        if status.state == "finished":
            status.state = "outdated"
            status.notes.append(f"trained from an earlier result of {predecessor}, which {changed}: the pipeline "
                                f"trains this stage again")
        else:
            status.notes.append(f"started from an earlier result of {predecessor}, which {changed}: its next job "
                                f"starts over")
    why = pending_restart(run)
    if why is not None:
        status.notes.append(f"restart requested: the next job starts over ({why})")
    if config is not None:
        tokens_per_step = config.train.global_batch_size * config.data.seq_length
        status.total_steps = config.train.steps
        status.total_tokens = config.train.steps * tokens_per_step
        status.tokens = status.step * tokens_per_step
        if status.state in ("running", "stopped"):
            status.tokens_per_s = throughput(records)
            if status.tokens_per_s:
                status.seconds_left = (config.train.steps - status.step) * tokens_per_step / status.tokens_per_s
        elif status.state == "finished":
            status.seconds_left = 0.0
    return status


def _stage_order(stages: dict[str, RunDir]) -> list[str]:
    """The stages in training order: a stage starts from its predecessor (``init.from`` names its run
    directory or one of its checkpoints), so it comes after it; stages that do not say keep their names' order."""
    before: dict[str, str] = {}
    for name, run in stages.items():
        try:
            config = _config(run)
        except UserError:
            config = None  # its status says why
        start = predecessor_run(config.init.from_).root.name if config is not None and config.init.from_ else None
        if start in stages and start != name:
            before[name] = start

    def depth(name: str, seen: tuple = ()) -> int:
        previous = before.get(name)
        return 0 if previous is None or previous in seen else 1 + depth(previous, seen + (name,))

    return sorted(stages, key=lambda name: (depth(name), name))


def run_status(path: Path) -> list[StageStatus]:
    """Every stage of a pipeline run's results directory, or the one run directory ``path``."""
    if not path.is_dir():
        raise UserError(f"{path}: no such directory")
    stages_dir = path / "train"
    if not stages_dir.is_dir():
        runs = sorted(child.name for child in path.iterdir() if (child / "train").is_dir())
        if runs:  # e.g. results/ itself: a pipeline run of its own has no runs inside
            raise UserError(f"{path}: holds the pipeline runs {', '.join(runs)}, not one run: "
                            f"kotomamba status {path / runs[0]}")
        return [stage_status(path)]
    stages = {p.name: RunDir(p) for p in stages_dir.iterdir() if p.is_dir()}
    configured = _configured_stages(path)
    statuses = [stage_status(stages[name].root, name) for name in _stage_order(stages)]
    for status in statuses:
        if configured is not None and status.name not in configured:
            status.notes.append(f"not a stage of this run's config ({RunDir(path).config}: "
                                f"{', '.join(configured)}): left by an earlier config, the pipeline neither trains "
                                "nor exports it")
    return statuses


def _configured_stages(results: Path) -> list[str] | None:
    """The stages the pipeline run's own record of its config names (written once its data is ready, whenever the
    config changed); None where there is no such record."""
    config = RunDir(results).read_config()
    stages = config.get("stages") if config is not None else None
    if not isinstance(stages, list):
        return None
    return [stage.get("name") for stage in stages if isinstance(stage, dict)]


def _time_left(seconds: float) -> str:
    if seconds < 60:
        return "under a minute"
    minutes = round(seconds / 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    return "about " + (f"{days}d " if days else "") + (f"{hours}h " if days or hours else "") + f"{minutes}m"


def _of(value: int | None, total: int | None) -> str:
    if value is None:
        return "?"
    if not total:
        return f"{value:,}"
    return f"{value:,} of {total:,} ({100 * value / total:.1f}%)"


def format_status(status: StageStatus) -> str:
    state = f"{status.state} ({status.holder})" if status.holder else status.state
    lines = [f"{status.name}: {state}"]
    if status.state != "not started" or status.total_steps:
        lines.append(f"  step {_of(status.step, status.total_steps)}, tokens {_of(status.tokens, status.total_tokens)}")
    if status.state != "not started":
        lines.append(f"  checkpoint {status.checkpoint or 'none yet'}; "
                     f"jobs {status.jobs if status.jobs is not None else '? (not recorded)'}")
    if status.tokens_per_s:
        lines.append(f"  {status.tokens_per_s:,.0f} tokens/s over the last logs; "
                     f"{_time_left(status.seconds_left)} of training left at that speed")
    if status.superseded:
        kept = RunDir(status.run_dir).superseded.name
        lines.append(f"  superseded generations: {status.superseded} (kept in {kept}/)")
    lines += [f"  note: {note}" for note in status.notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kotomamba status", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a pipeline run's results/<run> directory, or one run directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        stages = run_status(args.run)
    except UserError as exc:
        return report("status", exc)
    if args.json:
        print(json.dumps({"run": str(args.run), "stages": [asdict(s) for s in stages]}, indent=2))
    else:
        print("\n".join(format_status(s) for s in stages))
    return 0
