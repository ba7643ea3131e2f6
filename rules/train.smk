# Training: one job per stage; each later stage starts from the previous stage's final checkpoint.
# A stage's trainer config is written to its own file first, so a changed stage reruns only itself
# and what depends on it (snakemake's params trigger), never the tokenization.

localrules:
    stage_config,


rule stage_config:
    output:
        PATHS.stage_config("{stage}"),
    params:
        train_config=lambda w: stage_train_config(config, w.stage),
    log:
        log_path("train/{stage}.config"),
    run:
        from kotomamba.pipeline.config import write_stage_config

        write_stage_config(params.train_config, output[0])


def stage_start(wildcards):
    """What a stage starts from: the previous stage's final checkpoint, or for the first one `init` (if set:
    a local directory, or its fetched files)."""
    index = stage_index(config, wildcards.stage)
    if index > 0:
        return [PATHS.stage_final(STAGES[index - 1])]
    return PATHS.init_files


rule train:
    input:
        config=PATHS.stage_config("{stage}"),
        data=lambda w: tokenized_files(stage_sources(config, w.stage)),
        tokenizer=PATHS.tokenizer_model,
        start=stage_start,
    output:
        PATHS.stage_final("{stage}"),
    params:
        nodes=config["launch"]["nodes"],
        nproc_per_node=config["launch"]["nproc_per_node"],
        device=config["launch"]["device"],
    log:
        log_path("train/{stage}"),
    threads: config["launch"]["nproc_per_node"]
    resources:
        **rule_resources("train"),
    shell:
        "kotomamba launch --nnodes {params.nodes} --nproc-per-node {params.nproc_per_node} --device {params.device}"
        " -- train --config {input.config} --resume auto > {log} 2>&1"
