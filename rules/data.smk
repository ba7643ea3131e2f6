# Corpus: one JSONL file per configured source, built offline (builtin) or downloaded and verified,
# with a record of which of the user's files each line came from (errors downstream name those).

from kotomamba.data.download import source_state


def corpus_source(wildcards):
    return next(s for s in config["corpus"]["sources"] if s["name"] == wildcards.source)


def corpus_command(wildcards):
    source = corpus_source(wildcards)
    if "builtin" in source:
        max_bytes = f" --max-bytes {source['max_bytes']}" if "max_bytes" in source else ""
        return f"collect-corpus{max_bytes}"
    return f"download {quoted(source.get('sha256', []), '--sha256')} {' '.join(map(shlex.quote, source['urls']))}"


def corpus_state(wildcards):
    """Each local source file's size and change time: a changed source file reruns this rule."""
    source = corpus_source(wildcards)
    return source_state(source["urls"]) if "urls" in source else []


rule corpus:
    output:
        corpus=PATHS.corpus("{source}"),
        origins=PATHS.corpus_origins("{source}"),
    params:
        command=corpus_command,
        state=corpus_state,
    log:
        log_path("corpus/{source}"),
    resources:
        **rule_resources("corpus"),
    shell:
        "kotomamba {params.command} --output {output.corpus} > {log} 2>&1"
