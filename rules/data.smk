# Corpus: the shards of each source (kotomamba/data/shards.py). An http(s) or hub shard is downloaded as
# published, verified and resumable, by its own job and kept compressed; local shards are read where
# the user keeps them; the builtin corpus is written offline as one piece. A remote tokenizer or initial
# checkpoint is fetched the same way, a job per file (kotomamba/pipeline/inputs.py). Every download is
# checked against its pin or the run's lock file, where an unpinned one is recorded on first use.

from kotomamba.data.download import source_state
from kotomamba.pipeline.config import locate

SOURCE_NAME = "[A-Za-z0-9][A-Za-z0-9_-]*"  # the config schema's pattern: never a path with a shard in it
SHARD_ID = r"\d\d\d\d\d+"  # kotomamba.data.shards.Shard.id


def source_entry(wildcards):
    return next(s for s in config["corpus"]["sources"] if s["name"] == wildcards.source)


rule corpus:
    output:
        PATHS.corpus("{source}"),
    params:
        max_bytes=lambda w: f"--max-bytes {source_entry(w)['max_bytes']}" if "max_bytes" in source_entry(w) else "",
    wildcard_constraints:
        source=SOURCE_NAME,
    log:
        log_path("corpus/{source}"),
    resources:
        **rule_resources("corpus"),
    shell:
        "kotomamba collect-corpus {params.max_bytes} --output {output} > {log} 2>&1"


def shard_of(wildcards):
    return PATHS.shard(wildcards.source, wildcards.shard)


def shard_field(wildcards):
    """Where the run config names a shard (its pin, when a sha256 list gives it), for download errors."""
    index = SOURCES.index(wildcards.source)
    shard = shard_of(wildcards)
    key = "sha256" if "sha256" in config["corpus"]["sources"][index] else "urls"
    return locate(["corpus", "sources", index, key, shard.entry], CONFIG_FILES)


rule download:
    # The .part file beside the output is not an output: a killed transfer resumes from it.
    output:
        PATHS.downloaded_shard("{source}", "{shard}", "{compression}"),
    params:
        url=lambda w: shlex.quote(shard_of(w).location),
        sha256=lambda w: f"--sha256 {shard_of(w).sha256}" if shard_of(w).sha256 else "",
    wildcard_constraints:
        source=SOURCE_NAME,
        shard=SHARD_ID,
        compression=r"(\.gz|\.zst)?",
    log:
        log_path("corpus/{source}/{shard}{compression}"),
    resources:
        **rule_resources("corpus"),
    # Not a shell directive: the lock file and the config's file and line are not params, so a line moved
    # in the config does not redo a download.
    run:
        fetch(params, output, log, shard_field(wildcards))


def fetch(params, output, log, where):
    shell("kotomamba download {params.url} {params.sha256} --keep-compressed --output {output}"
          " --lock {lock} --where {where} > {log} 2>&1", lock=PATHS.input_lock, where=shlex.quote(where))


def remote_input(wildcards):
    """(source, key path) of one remote tokenizer or initial-checkpoint file."""
    return PATHS.remote_inputs(wildcards.kind)[wildcards.name]


rule fetch_input:
    output:
        PATHS.input_file("{kind}", "{name}"),
    params:
        url=lambda w: shlex.quote(remote_input(w)[0].location),
        sha256=lambda w: f"--sha256 {remote_input(w)[0].sha256}" if remote_input(w)[0].sha256 else "",
    wildcard_constraints:
        kind="tokenizer|init",
        name=r"[^/]+",
    log:
        log_path("inputs/{kind}/{name}"),
    resources:
        **rule_resources("corpus"),
    run:
        fetch(params, output, log, locate(remote_input(wildcards)[1], CONFIG_FILES))


def shard_state(shard):
    """A local shard's size and change time (a changed file reruns what read it); a URL as given."""
    return [] if shard.is_builtin else source_state([shard.location])
