# Export: the last stage's sharded checkpoint -> a mamba-ssm or transformers (hf) directory.
# Evaluation runs on the mamba-ssm export, so the hf export's model card can carry its scores.


rule convert:
    input:
        final=PATHS.stage_final(PATHS.last_stage),
        scores=lambda w: [PATHS.eval_json] if w.fmt == "hf" else [],
    output:
        directory(PATHS.export_dir("{fmt}")),
    params:
        run_dir=PATHS.stage_dir(PATHS.last_stage),
        scores=lambda w, input: f"--eval-json {input.scores}" if input.scores else "",
    wildcard_constraints:
        fmt="hf|mamba_ssm",
    log:
        log_path("convert/{fmt}"),
    resources:
        **rule_resources("convert"),
    shell:
        "kotomamba convert --checkpoint {params.run_dir} --to {wildcards.fmt} {params.scores}"
        " --output {output} > {log} 2>&1"
