"""``torch.distributed.checkpoint`` read and written by this process alone, on every torch >= 2.6.

Converting, initialising a stage from another run's checkpoint and the tests read whole checkpoints
on one process, sometimes inside a process group (each rank reads the full weights of the previous
stage). ``no_dist=True`` makes DCP skip its collectives there. torch >= 2.7 takes it on
``dcp.load`` / ``dcp.save``; torch 2.6 only on the older ``load_state_dict`` / ``save_state_dict``
(deprecated later, same behaviour).
"""
from __future__ import annotations

import contextlib
import inspect
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch.distributed.checkpoint as dcp

_FLAG_ON_NEW_API = "no_dist" in inspect.signature(dcp.load).parameters


@contextlib.contextmanager
def _one_process() -> Iterator[None]:
    """DCP warns that it assumes a single process when none is up: that is what ``no_dist`` asks for
    (and torch 2.6 warns that its older calls are deprecated); a user's log need not say either."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def load_local(state_dict: dict[str, Any], path: str | Path, planner=None) -> None:
    """Fill ``state_dict`` (nested dicts of preallocated tensors) in place from the DCP checkpoint ``path``."""
    reader = dcp.FileSystemReader(str(path))
    with _one_process():
        if _FLAG_ON_NEW_API:
            dcp.load(state_dict, storage_reader=reader, planner=planner, no_dist=True)
        else:
            dcp.load_state_dict(state_dict, storage_reader=reader, planner=planner, no_dist=True)


def save_local(state_dict: dict[str, Any], path: str | Path) -> None:
    """Write ``state_dict`` as a complete DCP checkpoint at ``path`` (one process writes everything)."""
    writer = dcp.FileSystemWriter(str(path))
    with _one_process():
        if _FLAG_ON_NEW_API:
            dcp.save(state_dict, storage_writer=writer, no_dist=True)
        else:
            dcp.save_state_dict(state_dict, storage_writer=writer, no_dist=True)
