"""Hugging Face hub references: what a repository at a revision is called, and its files' download URLs.

Two forms name hub content:

- a repository, ``org/name@revision`` (:class:`HubId`): what the commands' model and tokenizer arguments
  accept; the files of a kind are chosen from it (:mod:`kotomamba.data.remote_inputs`);
- one file, ``hf://[datasets/]org/name@revision/path/in/repo`` (:class:`HubFile`): what the pipeline's
  inputs accept where a URL is (corpus shards, a tokenizer file, an initial checkpoint's files). The form is
  the one ``huggingface_hub``'s file system reads (``hf://datasets/...`` for dataset repositories).

Either resolves to the hub's ``resolve`` URL, ``<endpoint>/[datasets/]org/name/resolve/<revision>/<path>``,
at the moment a file is fetched. The endpoint is ``HF_ENDPOINT`` when set (the variable the hub's own
libraries read: mirrors, or a server on loopback in tests), else https://huggingface.co. A revision is
always written out (a commit hash keeps the files fixed; a branch such as ``main`` can move, which the
pipeline's lock file notices, see :mod:`kotomamba.data.input_lock`).
"""
from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass

from kotomamba.errors import UserError

HUB_ENDPOINT_VARIABLE = "HF_ENDPOINT"
DEFAULT_HUB_ENDPOINT = "https://huggingface.co"
SCHEME = "hf://"
_REPO = r"[A-Za-z0-9][\w.-]*/[\w.-]+"
_HUB_ID = re.compile(rf"^(?P<repo>{_REPO})@(?P<revision>[^@\s]+)$")
_HUB_FILE = re.compile(rf"^hf://(?P<type>datasets/)?(?P<repo>{_REPO})@(?P<revision>[^/@\s]+)/(?P<path>[^@\s]+)$")


@dataclass(frozen=True)
class HubId:
    """A hub repository at a revision."""

    repo_id: str
    revision: str

    @property
    def cache_parts(self) -> tuple[str, ...]:
        # A revision may hold slashes (refs/pr/1): one directory level per revision all the same.
        return ("hub", *self.repo_id.split("/"), self.revision.replace("/", "--"))


@dataclass(frozen=True)
class HubFile:
    """One file of a hub repository at a revision; ``repo_type`` is "model" or "dataset"."""

    repo_type: str
    repo_id: str
    revision: str
    path: str

    def url(self, endpoint: str | None = None) -> str:
        return resolve_url(HubId(self.repo_id, self.revision), self.path, self.repo_type, endpoint)


def parse_hub_id(text: str) -> HubId | None:
    """``org/name@revision`` as a :class:`HubId`; ``None`` when ``text`` is not shaped like one.

    There is no ``org/name`` without a revision: the files behind a branch change, a run's must not.
    """
    match = _HUB_ID.match(text)
    return HubId(match["repo"], match["revision"]) if match else None


def is_hub_file(text: str) -> bool:
    return text.startswith(SCHEME)


def parse_hub_file(text: str) -> HubFile:
    """``hf://[datasets/]org/name@revision/path`` as a :class:`HubFile`.

    Raises:
        UserError: ``text`` starts with ``hf://`` but is not of that form (a missing revision included).
    """
    match = _HUB_FILE.match(text)
    if match is None:
        raise UserError(f"{text}: a hub file is hf://org/name@<revision>/<path> (a model repository) or "
                        f"hf://datasets/org/name@<revision>/<path>; the revision is a commit hash or a branch")
    return HubFile("dataset" if match["type"] else "model", match["repo"], match["revision"], match["path"])


def hub_endpoint() -> str:
    return os.environ.get(HUB_ENDPOINT_VARIABLE, DEFAULT_HUB_ENDPOINT).rstrip("/")


def resolve_url(hub_id: HubId, filename: str, repo_type: str = "model", endpoint: str | None = None) -> str:
    """The hub's download URL of one file (``repo_type`` "dataset" for datasets' ``datasets/`` prefix)."""
    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    revision = urllib.parse.quote(hub_id.revision, safe="")
    return (f"{endpoint or hub_endpoint()}/{prefix}{hub_id.repo_id}/resolve/{revision}/"
            f"{urllib.parse.quote(filename)}")


def fetch_url(location: str) -> str:
    """The URL that fetches ``location``: a hub file's resolve URL at the current endpoint, else itself."""
    return parse_hub_file(location).url() if is_hub_file(location) else location
