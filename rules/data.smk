# Corpus: one JSONL file per configured source, built offline (builtin) or downloaded and verified.


def corpus_command(wildcards):
    source = next(s for s in config["corpus"]["sources"] if s["name"] == wildcards.source)
    if "builtin" in source:
        max_bytes = f" --max-bytes {source['max_bytes']}" if "max_bytes" in source else ""
        return f"collect-corpus{max_bytes}"
    return f"download {quoted(source.get('sha256', []), '--sha256')} {' '.join(map(shlex.quote, source['urls']))}"


rule corpus:
    output:
        PATHS.corpus("{source}"),
    params:
        command=corpus_command,
    log:
        log_path("corpus/{source}"),
    resources:
        **rule_resources("corpus"),
    shell:
        "kotomamba {params.command} --output {output} > {log} 2>&1"
