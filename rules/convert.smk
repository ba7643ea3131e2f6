# Export: the last stage's sharded checkpoint -> a transformers (hf) or mamba-ssm directory.


rule convert:
    input:
        PATHS.stage_final(PATHS.last_stage),
    output:
        directory(PATHS.export_dir("{fmt}")),
    params:
        run_dir=PATHS.stage_dir(PATHS.last_stage),
    wildcard_constraints:
        fmt="hf|mamba_ssm",
    log:
        log_path("convert/{fmt}"),
    resources:
        **rule_resources("convert"),
    shell:
        "kotomamba convert --checkpoint {params.run_dir} --to {wildcards.fmt} --output {output} > {log} 2>&1"
