"""Where a training job starts: decided once, on rank 0, and carried out before any rank reads the run dir.

:func:`plan_start` only reads: it verifies the checkpoints (integrity.py) newest first and compares
the run's recorded identity (identity.py) with this job's. :func:`carry_out` then makes the run
directory match the plan (an earlier run moved to ``superseded/<n>/``, ``latest`` pointed at the
checkpoint resumed from, ``identity.json`` written). The trainer broadcasts the plan, so every rank
resumes the same checkpoint whatever it would have seen of the directory on its own.

Rules: a complete, verified checkpoint of the same identity is always resumed (never step 1 while
one exists); a checkpoint that does not verify is set aside by name with the reason; a changed
identity, ``--resume never``, a restart request (restart_request.py), or a run whose checkpoints all
fail to verify starts over and keeps the earlier run as a new generation, never overwriting an older one.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from kotomamba.errors import UserError
from kotomamba.io import atomic_write, write_json
from kotomamba.train.identity import identity_changes
from kotomamba.train.integrity import checkpoint_defect
from kotomamba.train.restart_request import clear_restart, pending_restart
from kotomamba.train.run_dir import STEP_DIR, SUPERSEDED_NOTE, RunDir


@dataclass
class StartPlan:
    """``resume_from``: the checkpoint to load (None: the initial weights); ``supersede``: why the earlier
    run moves aside (None: it stays); ``finished``: the run is already complete, nothing to do;
    ``set_aside``: checkpoints that failed verification (moved out of retention's and resume's way);
    ``restart_requested``: restart_request.py's request was found (removed once carried out); ``roll_back``: for
    ``--resume DIR`` of one of this run's own checkpoints, what the earlier trajectory left past it (later
    checkpoints, ``final.json``), kept in a new generation so that neither retention nor a later resume mixes
    the two trajectories."""

    resume_from: Path | None = None
    supersede: str | None = None
    finished: bool = False
    notes: list[str] = field(default_factory=list)
    set_aside: list[Path] = field(default_factory=list)
    restart_requested: bool = False
    roll_back: list[Path] = field(default_factory=list)


def _latest_note(run: RunDir) -> str | None:
    """What is wrong with ``checkpoints/latest`` (None when it names an existing checkpoint directory)."""
    if not run.latest.is_file():
        return f"{run.latest}: missing" if run.step_dirs() else None
    name = run.latest.read_text(errors="replace").strip()
    if not STEP_DIR.match(name):
        return f"{run.latest}: names {name[:40]!r}, not a checkpoint directory"
    if not (run.checkpoints / name).is_dir():
        return f"{run.latest}: names {name}, which does not exist"
    return None


def newest_verified(run: RunDir, plan: StartPlan, hashed: bool = True) -> Path | None:
    """The newest checkpoint that verifies (``hashed``: :func:`checkpoint_defect`'s); each newer one that does not
    goes to ``plan.set_aside``, with why in ``plan.notes``."""
    for checkpoint in run.step_dirs():
        defect = checkpoint_defect(checkpoint, hashed)
        if defect is None:
            return checkpoint
        plan.set_aside.append(checkpoint)
        plan.notes.append(f"set aside {checkpoint.name} (into {run.set_aside}): {defect}")
    return None


def _finished_at(run: RunDir, checkpoint: Path) -> bool:
    try:
        final = json.loads(run.final.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(final, dict) and Path(str(final.get("checkpoint"))).name == checkpoint.name


def _same_directory(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def plan_start(run: RunDir, identity: dict, resume: str, config=None) -> StartPlan:
    """The plan for ``--resume auto|never|DIR`` in run directory ``run`` of ``identity`` (identity.py's
    :func:`stage_identity` of ``config``; reads only)."""
    plan = StartPlan()
    if resume not in ("auto", "never"):
        from kotomamba.train.run_dir import resolve_checkpoint

        found = resolve_checkpoint(resume)
        if found is None:
            raise UserError(f"--resume {resume}: no complete checkpoint there")
        defect = checkpoint_defect(found)
        if defect is not None:
            raise UserError(f"--resume {resume}: {defect}")
        plan.resume_from = found
        if _same_directory(found.parent, run.checkpoints):
            plan.roll_back = [p for p in run.step_dirs() if p.name > found.name] + [
                p for p in (run.final,) if p.exists()]
        elif any(p.exists() for p in run.records()):
            plan.supersede = f"--resume {resume}: another run's checkpoint"
        return plan
    earlier = [p for p in run.records() if p.exists()]
    requested = pending_restart(run)
    plan.restart_requested = requested is not None
    if not earlier:
        return plan
    if resume == "never" or requested:
        plan.supersede = "--resume never" if resume == "never" else requested
        return plan
    note = _latest_note(run)
    if note:
        plan.notes.append(note)
    verified = newest_verified(run, plan)
    changes = identity_changes(run, identity, config)
    same = changes == []
    changed = ("the stage's identity changed: " + "; ".join(changes) if changes
               else "no identity.json records what the earlier run was trained with")
    if verified is not None and same:
        plan.resume_from = verified
        plan.finished = _finished_at(run, verified)
    elif verified is not None:
        plan.supersede = changed
    elif run.step_dirs():
        plan.supersede = "no checkpoint of the earlier run verifies"
    elif not same:
        plan.supersede = changed
    # else: the same run, interrupted before its first checkpoint: it starts again in place.
    return plan


def next_generation(run: RunDir) -> Path:
    """``superseded/<n>`` with n one above every generation there (never an existing one)."""
    taken = [int(p.name) for p in run.superseded.iterdir() if p.name.isdigit()] if run.superseded.is_dir() else []
    return run.superseded / str(max(taken, default=0) + 1)


def _new_generation(run: RunDir, why: str, notes: list[str]) -> Path:
    """A new, empty ``superseded/<n>`` holding only its ``superseded.json`` (why, and when)."""
    target = next_generation(run)
    target.mkdir(parents=True)
    write_json(target / SUPERSEDED_NOTE, {"why": why, "notes": notes,
                                          "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return target


def carry_out(run: RunDir, plan: StartPlan, identity: dict) -> None:
    """Make the run directory match ``plan`` (rank 0; each move is one atomic rename)."""
    for note in plan.notes:
        print(f"kotomamba train: {note}", flush=True)
    for checkpoint in plan.set_aside:
        # Out of step_* so that neither retention counts it (keeping it instead of a good one) nor a resume tries it.
        run.set_aside.mkdir(exist_ok=True)
        target, copies = run.set_aside / checkpoint.name, 1
        while target.exists():
            copies += 1
            target = run.set_aside / f"{checkpoint.name}.{copies}"
        os.replace(checkpoint, target)
    if plan.supersede is not None:
        target = _new_generation(run, plan.supersede, plan.notes)
        for path in run.records():
            if path.exists():
                os.replace(path, target / path.name)
        print(f"kotomamba train: starting over ({plan.supersede}); the earlier run is kept in {target}", flush=True)
    elif plan.resume_from is not None and _same_directory(plan.resume_from.parent, run.checkpoints):
        if plan.roll_back:
            why = f"--resume {plan.resume_from}: rolled back to {plan.resume_from.name}"
            target = _new_generation(run, why, plan.notes)
            # A run directory of its own (convert reads it): the earlier trajectory's records, copied.
            for path in (run.config, run.manifest, run.model_config, run.identity, run.metrics, run.jobs):
                if path.exists():
                    shutil.copy2(path, target / path.name)
            (target / run.checkpoints.name).mkdir()
            for path in plan.roll_back:
                os.replace(path, target / path.relative_to(run.root))
            later = [p.name for p in plan.roll_back if p.parent == run.checkpoints]
            if later:
                with atomic_write(target / run.checkpoints.name / run.latest.name) as handle:
                    handle.write(max(later) + "\n")
            names = ", ".join(p.name for p in plan.roll_back)
            print(f"kotomamba train: {why}; what the earlier trajectory left past it ({names}) is kept in {target}",
                  flush=True)
        if not run.latest.is_file() or run.latest.read_text().strip() != plan.resume_from.name:
            with atomic_write(run.latest) as handle:
                handle.write(plan.resume_from.name + "\n")
        if not plan.finished and run.final.exists():
            # Its checkpoint did not verify: the run is not finished until it is trained again.
            os.unlink(run.final)
        print(f"kotomamba train: resuming from {plan.resume_from}", flush=True)
    write_json(run.identity, identity)
    if plan.restart_requested:
        clear_restart(run)

