# Report: loss curves of every stage, evaluation scores and samples, as markdown with a PNG.

# The script by the path of this checkout, named in the command's template rather than in its params, so that
# a checkout moved or copied elsewhere does not make the report out of date.
REPORT_SCRIPT = f"{workflow.basedir}/workflow_scripts/report.py"


rule report:
    input:
        finals=[PATHS.stage_final(stage) for stage in STAGES],
        eval=PATHS.eval_json,
    output:
        report=PATHS.report,
        plot=report(PATHS.report_plot, category="Training", caption="../workflow_scripts/loss_caption.rst"),
    params:
        stage_dirs=[PATHS.stage_dir(stage) for stage in STAGES],
    log:
        log_path("report"),
    resources:
        **rule_resources("report"),
    shell:
        "python {REPORT_SCRIPT} --stage-dirs {params.stage_dirs} --eval {input.eval}"
        " --output {output.report} --plot {output.plot} > {log} 2>&1"


localrules:
    run_record,


rule run_record:
    input:
        corpus=[PATHS.corpus_files(source) for source in SOURCES],
        tokenizer=PATHS.tokenizer_model,
        data=tokenized_files(SOURCES),
    output:
        config=PATHS.resolved_config,
        manifest=PATHS.manifest,
    params:
        config=config,
    log:
        log_path("run_record"),
    run:
        from kotomamba.pipeline.config import write_run_record

        write_run_record(params.config, list(input), output.config, output.manifest)
