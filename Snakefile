# kotomamba: raw corpus -> tokenizer -> .bin/.idx -> Mamba training stages -> export -> evaluation -> report.
# The work is done by the `kotomamba` library; rules only name inputs, outputs, logs and resources.
# Every artifact lands under results/<run>/ (paths: kotomamba/pipeline/config.py).

import os

from kotomamba.cluster_jobs import SettingError
from kotomamba.errors import UserError
from kotomamba.pipeline import RunPaths, validate
from kotomamba.pipeline.submissions import PLANNED_JOBS_ENV, check_before_submitting, record_planned_jobs

# The embedded default, unless --configfile names a run config (merging the two would mix runs).
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


CONFIG_FILES = list(workflow.configfiles)  # errors name the file of these that sets a key, and its line

try:
    validate(config, CONFIG_FILES, command_line=dict(workflow.config_settings.config))  # --config values only
except UserError as error:
    raise WorkflowError(str(error)) from None

PATHS = RunPaths(config)
# `kotomamba submissions`: its dry run records the jobs a cluster run would submit.
if os.environ.get(PLANNED_JOBS_ENV):
    record_planned_jobs(workflow, os.environ[PLANNED_JOBS_ENV])
SOURCES = [source["name"] for source in config["corpus"]["sources"]]
STAGES = [stage["name"] for stage in config["stages"]]


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/tokenizer.smk"
include: "rules/tokenize.smk"
include: "rules/train.smk"
include: "rules/convert.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    # Every artifact, not only the last ones: an intermediate that is missing (a stage interrupted or
    # forced and not finished) is rebuilt, and with it everything after it, whatever exists downstream.
    input:
        [PATHS.corpus_artifacts(source) for source in SOURCES],  # downloads, the builtin corpus
        PATHS.tokenizer_model,
        tokenized_files(SOURCES),
        [PATHS.stage_final(stage) for stage in STAGES],
        [PATHS.export_dir(fmt) for fmt in config["export"]["formats"]],
        PATHS.export_dir("mamba_ssm"),  # evaluation's input, whatever the formats
        PATHS.eval_json,
        PATHS.report,
        PATHS.resolved_config,
        PATHS.manifest,


onstart:
    # A cluster run whose jobs cannot be submitted as configured (ABCI group unset, no SLURM account where
    # the cluster requires one, ...) stops here, before its first job and before anything changes.
    dag = workflow.dag
    try:
        check_before_submitting(workflow, dag.needrun_jobs())
    except SettingError as error:
        raise WorkflowError(str(error)) from None
    # A training job the user forced starts its stage over (the earlier run is kept as a superseded generation).
    # Forced by the user: a rule of --forcerun, --forceall or -f, or a file of --forcerun or -f. Not a job whose
    # output Snakemake found incomplete (dag.forcefiles holds those too under --rerun-incomplete): a stage stopped
    # mid-run, or one that finished after Snakemake itself died, resumes from its checkpoints instead.
    from kotomamba.train.restart_request import request_restart

    settings = workflow.dag_settings
    user_files = [*settings.forcerun, *(settings.targets if settings.forcetargets else ())]
    forced_files = {os.path.abspath(f) for f in user_files if not workflow.is_rule(f)}
    for job in dag.needrun_jobs():
        # Snakemake marks only the first of several forced jobs of one rule as "forced": the rule is asked.
        forced = job.rule in dag.forcerules or any(os.path.abspath(f) in forced_files for f in job.output)
        if job.rule.name == "train" and forced:
            request_restart(PATHS.stage_dir(job.wildcards.stage), "snakemake forced this stage to run again")
