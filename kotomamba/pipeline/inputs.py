"""The inputs a run names, where each lives, and the override file that puts them elsewhere.

An input is named where it lives:

- a local path (corpus shards may be globs), read where it is;
- an ``http(s)://`` URL, or a hub file ``hf://[datasets/]org/name@revision/path`` (:mod:`kotomamba.data.hub`),
  either optionally pinned as ``<reference>#sha256=<hex>`` (a corpus source may give its pins as a
  ``sha256`` list instead). Remote inputs are fetched by the pipeline's own ``download`` jobs through
  :func:`kotomamba.data.download.download_file` (resumed, verified, placed atomically), each checked
  against its pin or else against the run's lock file, where its sha256 is recorded on first download
  (:mod:`kotomamba.data.input_lock`).

Which config fields take which:

- ``corpus.sources[i].urls[j]``: any of them; a remote shard is kept at ``results/<run>/corpus/<source>/``;
- ``tokenizer.model``: one file (``tokenizer.json``, or a SentencePiece ``.model``); a remote one is kept at
  ``results/<run>/inputs/tokenizer/<file name>``;
- ``init``: a local model or run directory, or the list of a released model's remote files (its
  ``config.json`` and weights), kept in ``results/<run>/inputs/init/``, the directory the first stage
  starts from.

Fetched files are inputs like local ones: the tokenizer's sha256 and the initial weights' files enter the
training stage's identity, and the corpus's and tokenizer's the run's manifest.

``inputs_override`` (usually in a file given after the run config, ``--configfile RUN.yaml MINE.yaml``) maps
references to replacements: a key equal to a reference (its ``#sha256=`` left out) replaces it; a key ending
in ``/`` replaces that prefix of every reference starting with it. A replacement is a local path or another
remote reference (a mirror: the pin, if any, is kept; a local file is read as it is). A key that matches no
input of the run is an error, as is a local replacement that does not exist.
"""
from __future__ import annotations

import glob
from pathlib import Path, PurePosixPath

from kotomamba.data.download import Source, is_remote, parse_source
from kotomamba.data.hub import is_hub_file, parse_hub_file, parse_hub_id
from kotomamba.errors import UserError

OVERRIDES = "inputs_override"
KINDS = ("tokenizer", "init")  # inputs fetched into results/<run>/inputs/<kind>/
Problem = tuple[list, str]


def _split(reference: str) -> tuple[str, str]:
    """(location, ``#sha256=...`` suffix or "")."""
    location, found, digest = reference.partition("#sha256=")
    return location, f"#sha256={digest}" if found else ""


def init_references(config: dict) -> list[str]:
    init = config.get("init")
    return [] if init is None else [init] if isinstance(init, str) else list(init)


def references(config: dict) -> list[tuple[list, str]]:
    """Every (key path, reference) the config names as an input."""
    found = [(["corpus", "sources", i, "urls", j], url) for i, source in enumerate(config["corpus"]["sources"])
             for j, url in enumerate(source.get("urls", []))]
    if config["tokenizer"].get("model"):
        found.append((["tokenizer", "model"], config["tokenizer"]["model"]))
    init = config.get("init")
    if isinstance(init, str):
        found.append((["init"], init))
    elif init is not None:
        found += [(["init", j], item) for j, item in enumerate(init)]
    return found


def _set(config: dict, path: list, value: str) -> None:
    holder = config
    for part in path[:-1]:
        holder = holder[part]
    holder[path[-1]] = value


def _local_exists(path: str) -> bool:
    return bool(glob.glob(path)) if glob.has_magic(path) else Path(path).exists()


def apply_overrides(config: dict) -> list[Problem]:
    """Replace the references ``inputs_override`` maps (in place) and drop the mapping: what the run records
    is what it read. Returns the problems, each at the override's key."""
    overrides = config.pop(OVERRIDES, None) or {}
    problems: list[Problem] = []
    named = references(config)
    for key, replacement in overrides.items():
        path = [OVERRIDES, key]
        matched = [(where, ref) for where, ref in named
                   if _split(ref)[0] == key or (key.endswith("/") and _split(ref)[0].startswith(key))]
        if not matched:
            problems.append((path, "matches no input of this run (inputs are the corpus sources' urls, "
                                   "tokenizer.model and init; a key ending in / replaces a prefix)"))
            continue
        for where, reference in matched:
            location, pin = _split(reference)
            new = replacement + location[len(key):] if key.endswith("/") else replacement
            if is_remote(new):
                _set(config, where, new + pin)
            elif not _local_exists(new):
                problems.append((path, f"{new}: not found (replacing {location})"))
            else:
                _set(config, where, new)
    return problems


def respell_local_inputs(config: dict) -> None:
    """Write every local input's path (corpus shards, tokenizer, init) in one spelling, in place: without ``.``
    parts and doubled or trailing slashes. The jobs' inputs and params hold these paths, and Snakemake reruns a job
    whose paths changed, so the same file respelled (``./data/x.jsonl``, ``data//x.jsonl``) would train the
    tokenizer and tokenize every shard again. ``..`` parts are kept (past a symbolic link they lead elsewhere), and
    an absolute path stays absolute: errors name the file as the user wrote it."""
    for where, reference in references(config):
        location, pin = _split(reference)
        if not is_remote(location) and "://" not in location:
            _set(config, where, str(PurePosixPath(location)) + pin)


def remote_problems(config: dict) -> list[Problem]:
    """Malformed remote references, and inputs the pipeline cannot fetch as named (no network asked)."""
    problems: list[Problem] = []
    for where, reference in references(config):
        try:
            source = parse_source(reference)
            if is_hub_file(source.location):
                parse_hub_file(source.location)
        except UserError as error:
            problems.append((where, str(error)))
    tokenizer = config["tokenizer"].get("model")
    if tokenizer and not is_remote(tokenizer) and parse_hub_id(tokenizer) and not Path(tokenizer).exists():
        problems.append((["tokenizer", "model"], f"{tokenizer}: name the file of the hub repository, "
                         f"hf://{tokenizer}/tokenizer.json (or its SentencePiece .model)"))
    init = init_references(config)
    remote = [ref for ref in init if is_remote(ref)]
    if isinstance(config.get("init"), str) and not remote and parse_hub_id(config["init"]) \
            and not Path(config["init"]).exists():
        problems.append((["init"], f"{config['init']}: name the files of the hub repository as a list, "
                                   f"[hf://{config['init']}/config.json, hf://{config['init']}/<weights file>]"))
    elif remote:
        if len(remote) != len(init):
            problems.append((["init"], "either one local directory or a list of remote files (URLs, hf://)"))
        names = [Source(_split(ref)[0]).name for ref in remote]
        if "config.json" not in names:
            problems.append((["init"], "a released model's files include its config.json"))
        for duplicate in sorted({name for name in names if names.count(name) > 1}):
            problems.append((["init"], f"two files named {duplicate}"))
    return problems


def remote_sources(config: dict, kind: str) -> dict[str, tuple[Source, list]]:
    """The remote files of the tokenizer or the initial checkpoint: file name -> (source, key path)."""
    if kind == "tokenizer":
        model = config["tokenizer"].get("model")
        named = [(["tokenizer", "model"], model)] if model and is_remote(model) else []
    else:
        init = config.get("init")
        named = [(["init"], init)] if isinstance(init, str) else [(["init", j], ref) for j, ref in enumerate(init or [])]
        named = [(where, ref) for where, ref in named if is_remote(ref)]
    sources = {}
    for where, reference in named:
        source = parse_source(reference)
        sources[source.name] = (source, where)
    return sources

