# Corpus: the shards of each source (kotomamba/data/shards.py). An http(s) shard is downloaded as
# published, verified and resumable, by its own job and kept compressed; local shards are read where
# the user keeps them; the builtin corpus is written offline as one piece.

from kotomamba.data.download import source_state

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
    shell:
        "kotomamba download {params.url} {params.sha256} --keep-compressed --output {output} > {log} 2>&1"


def shard_state(shard):
    """A local shard's size and change time (a changed file reruns what read it); a URL as given."""
    return [] if shard.is_builtin else source_state([shard.location])
