# Tokenize: each shard of a source by its own job (reading it compressed, as a stream), then the
# source's one Megatron .bin/.idx as the merge of its shards in order, byte for byte what tokenizing
# them in one job writes (kotomamba/data/merge.py). The shards' datasets are temporary: only the
# merge is kept, and a shard whose job failed or was killed is redone alone before the merge.

# What the tokens depend on besides the shard and the tokenizer: params of the shard jobs, and of the
# merge too, which alone notices a change once the shards' temporary outputs are gone.
TOKENIZE_SETTINGS = {
    "tokenizer_type": config["tokenizer"]["type"],
    "json_keys": " ".join(config["tokenize"]["json_keys"]),
    "append_eod": "--append-eod" if config["tokenize"]["append_eod"] else "",
    "on_bad_line": config["tokenize"]["on_bad_line"],
}


rule tokenize_shard:
    input:
        shard=lambda w: PATHS.shard_file(shard_of(w)),
        tokenizer=PATHS.tokenizer_model,
    output:
        datasets=[temp(path) for path in PATHS.shard_datasets("{source}", "{shard}")],
        summary=temp(PATHS.shard_summary("{source}", "{shard}")),
    params:
        prefix=PATHS.shard_prefix("{source}", "{shard}"),
        name=lambda w: shlex.quote(shard_of(w).location),  # errors name the user's URL or file and its line
        state=lambda w: shard_state(shard_of(w)),
        settings=TOKENIZE_SETTINGS,
    wildcard_constraints:
        source=SOURCE_NAME,
        shard=SHARD_ID,
    log:
        log_path("tokenize/{source}/{shard}"),
    # Written in a directory of its own under .snakemake/shadow: a killed job leaves no partial
    # dataset beside the others (snakemake removes the shadow of a failed job).
    shadow:
        "minimal"
    threads: config["tokenize"]["workers"]
    resources:
        **rule_resources("tokenize"),
    shell:
        "kotomamba preprocess --input {input.shard} --input-name {params.name} --output-prefix {params.prefix}"
        " --tokenizer-type {params.settings[tokenizer_type]} --tokenizer-model {input.tokenizer}"
        " --json-keys {params.settings[json_keys]} {params.settings[append_eod]} --workers {threads}"
        " --on-bad-line {params.settings[on_bad_line]} --allow-empty --summary {output.summary} --no-progress"
        " > {log} 2>&1"


def shard_ids(wildcards):
    return [shard.id for shard in PATHS.shards(wildcards.source)]


rule tokenize:
    input:
        datasets=lambda w: [path for shard in shard_ids(w) for path in PATHS.shard_datasets(w.source, shard)],
        summaries=lambda w: [PATHS.shard_summary(w.source, shard) for shard in shard_ids(w)],
        # Also here, not only in the shard jobs: their outputs are gone once merged, and a new
        # tokenizer must still redo them.
        tokenizer=PATHS.tokenizer_model,
    output:
        [f"{PATHS.tokenized_prefix('{source}', key)}.{ext}" for key in config["tokenize"]["json_keys"] for ext in ("bin", "idx")],
    params:
        inputs=lambda w: [PATHS.shard_prefix(w.source, shard) for shard in shard_ids(w)],
        prefix=PATHS.merged_prefix("{source}"),
        # The shards' sources and their state: a changed or added file reruns the merge (and with it
        # the shard jobs whose temporary outputs are gone).
        shards=lambda w: [(shard.location, shard.sha256, shard_state(shard)) for shard in PATHS.shards(w.source)],
        settings=TOKENIZE_SETTINGS,
    wildcard_constraints:
        source=SOURCE_NAME,
    log:
        log_path("tokenize/{source}"),
    resources:
        **rule_resources("tokenize"),
    shell:
        "kotomamba merge-datasets --input {params.inputs} --summaries {input.summaries}"
        " --json-keys {params.settings[json_keys]} --output-prefix {params.prefix} > {log} 2>&1"
