"""What a cluster profile submits for each job, and what it needs before the first submission.

    kotomamba submissions --profile profiles/slurm [--configfile F] [TARGET ...] [-- SNAKEMAKE ARGS]

prints, for every job a ``snakemake --profile P`` run would submit, the ``sbatch`` or ``qsub`` command
line and the resources it asks for, then the problems :func:`check` finds (exit 1 when a submission
would fail). The jobs come from a dry run of the workflow under that profile (the Snakefile records
them when ``PLANNED_JOBS_ENV`` names a file); each job's command line comes from the code that
submits it: snakemake-executor-plugin-slurm's own ``get_submit_command`` (profiles/slurm), each qsub
profile's ``submit.py`` ``submit_command`` (profiles/sge, profiles/abci).

The same :func:`check` runs in the Snakefile's ``onstart`` of a real cluster run, before anything is
submitted: a missing required setting (ABCI's group, a multi-node Grid Engine PE, ...) stops the run
there, with the message the job's submission would have failed with; an empty SLURM account where the
cluster enforces associations (``AccountingStorageEnforce``, slurm.conf(5)) and the user has no default
account stops it too; an empty account where ``scontrol`` cannot tell is a warning; a partition the cluster
does not have, or an account the user has no association with where associations are enforced, stops it.
"""
from __future__ import annotations

import argparse
import functools
import getpass
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import yaml
from snakemake_interface_common.exceptions import WorkflowError

from kotomamba.cluster_jobs import SettingError
from kotomamba.errors import report

PLANNED_JOBS_ENV = "KOTOMAMBA_PLANNED_JOBS"
# The placeholder for what exists only at submission (Snakemake's job script, the SLURM run id).
JOBSCRIPT = ".snakemake/tmp.XXXXXXXX/snakejob.{rule}.{jobid}.sh"
RUN_UUID = "<run uuid>"


@dataclass
class PlannedJob:
    """One job as its submitter sees it: Snakemake's job properties (rule, jobid, threads, resources,
    wildcards); ``local`` jobs run in the Snakemake process and are never submitted."""
    rule: str
    jobid: int
    threads: int
    resources: dict
    wildcards: dict = field(default_factory=dict)
    local: bool = False

    def properties(self) -> dict:
        """The ``# properties = {...}`` a cluster-generic job script carries (what submit.py reads)."""
        return {"rule": self.rule, "jobid": self.jobid, "threads": self.threads, "resources": self.resources,
                "wildcards": self.wildcards}


def planned_job(job, local: bool) -> PlannedJob:
    """A Snakemake job's :class:`PlannedJob`. Resources Snakemake estimates from input sizes that do not
    exist yet (``<TBD>``: disk, and memory where the run config sets none) are left out."""
    from snakemake.common.tbdstring import TBDString

    resources = {name: value for name, value in job.resources.items()
                 if name not in ("_cores", "_nodes") and not isinstance(value, TBDString)}
    return PlannedJob(job.rule.name, int(job.dag.jobid(job)), int(job.threads), resources,
                      dict(job.wildcards_dict), local)


def submitted_jobs(workflow, jobs) -> list[PlannedJob]:
    """The jobs of ``jobs`` that a cluster run submits, in an order they can run (a job after the ones
    it needs). ``localrules`` and ``run:``-less rules run in the Snakemake process (Workflow.is_local
    without its executor test, which a dry run answers for every rule)."""
    dag, local_rules = workflow.dag, set(getattr(workflow, "_localrules", ()))
    ordered = [job for level in dag.toposorted(set(jobs)) for job in sorted(level, key=dag.jobid)]
    planned = [planned_job(job, job.rule.name in local_rules or job.rule.norun) for job in ordered]
    return [job for job in planned if not job.local]


def record_planned_jobs(workflow, path: str) -> None:
    """In a dry run, write the jobs it plans to ``path`` (JSON) when it lists the first one.

    A dry run runs no ``onstart``; its log's first job record is the first moment the DAG exists.
    """
    import logging

    from snakemake.logging import LogEvent, logger

    class Recorder(logging.Filter):
        done = False

        def filter(self, record) -> bool:
            if not self.done and getattr(record, "event", None) == LogEvent.JOB_INFO:
                self.done = True
                jobs = submitted_jobs(workflow, workflow.dag.needrun_jobs())
                Path(path).write_text(json.dumps([asdict(job) for job in jobs], default=str))
            return True

    logger.addFilter(Recorder())


@dataclass
class Profile:
    """What decides a submission in a profile: its executor, the qsub profiles' submit script, the
    SLURM executor's settings (requeue, QoS, reservation, log directory)."""
    executor: str
    submit_script: Path | None = None
    slurm: SimpleNamespace | None = None

    @classmethod
    def from_dir(cls, directory: str | Path) -> Profile:
        directory = Path(directory)
        path = directory / "config.yaml"
        if not path.is_file():
            raise SettingError(f"{directory}: no config.yaml; is this a Snakemake profile?")
        settings = yaml.safe_load(path.read_text()) or {}
        executor = str(settings.get("executor", "local"))
        submit = settings.get("cluster-generic-submit-cmd")
        slurm = SimpleNamespace(**{name: settings.get(f"slurm-{name.replace('_', '-')}")
                                   for name in ("requeue", "no_requeue", "qos", "reservation", "logdir",
                                                   "pass_command_as_script")})
        return cls(executor, directory / submit if submit else None, slurm if executor == "slurm" else None)

    @classmethod
    def from_workflow(cls, workflow) -> Profile:
        """The profile a running Snakemake was started with, from its executor and executor settings."""
        plugin = workflow.executor_plugin
        executor = plugin.name if plugin is not None else "local"
        settings = workflow.executor_settings
        if executor == "cluster-generic":
            return cls(executor, Path(shlex.split(settings.submit_cmd)[-1]) if settings.submit_cmd else None)
        return cls(executor, slurm=settings if executor == "slurm" else None)

    def submits(self) -> bool:
        """Whether jobs are submitted in a way known here: the SLURM plugin, or a kotomamba qsub profile
        (a cluster-generic profile of your own is not checked)."""
        if self.executor == "slurm":
            return True
        return self.executor == "cluster-generic" and _submit_module(self.submit_script) is not None


@functools.cache
def _submit_module(script: Path | None):
    """A kotomamba qsub profile's submit.py as a module, or None for another submit command."""
    if script is None or script.suffix != ".py" or not script.is_file():
        return None
    spec = importlib.util.spec_from_file_location(f"kotomamba_profile_{script.parent.name}_submit", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module if hasattr(module, "submit_command") else None


@functools.cache
def _slurm_guesses() -> tuple[str, str, str | None]:
    """The account and partition the SLURM plugin uses when a job names none: your last job's account
    (``sacct``), the default partition (``sinfo``); asked once, as the plugin asks once per run. The third
    item says why the partition could not be guessed, where the plugin's ``sinfo`` failed (no controller
    answers, no munge): every job that names none would fail to submit, for that one reason."""
    quiet = SimpleNamespace(warning=lambda *args: None)
    account = partition = ""
    if shutil.which("sacct"):
        from snakemake_executor_plugin_slurm.accounts import get_account
        account = get_account(quiet) or ""
    if shutil.which("sinfo"):
        from snakemake_executor_plugin_slurm.partitions import get_default_partition
        try:
            partition = get_default_partition("a job without slurm_partition", quiet) or ""
        except WorkflowError as error:
            return account, "", (f"no SLURM partition is named, and the SLURM executor's guess of the default one "
                                 f"failed ({' '.join(str(error).split())}); name it (KOTOMAMBA_SLURM_PARTITION, or "
                                 f"resources: {{RULE: {{slurm_partition: ...}}}} in the run config), or run where "
                                 f"sinfo reaches the cluster's controller")
    return account, partition, None


class _Resources(dict):
    """A job's resources as the SLURM plugin reads them (``.get(name)`` and ``.name``)."""

    def __getattr__(self, name):
        return self.get(name)


def sbatch_command(job: PlannedJob, settings: SimpleNamespace, workdir: Path) -> str:
    """The ``sbatch`` line snakemake-executor-plugin-slurm runs for ``job`` (its ``run_job``: the
    plugin's submit string and GRES string, the command passed as a script on stdin). The account and
    partition are the job's ``slurm_account`` / ``slurm_partition``; left empty, the plugin's own guesses
    (your last job's account from ``sacct``, the default partition from ``sinfo``), asked here as it asks.
    A multi-account ``slurm_account`` ("a,b": the plugin tries each in turn) shows the first."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    resources = _Resources(job.resources)
    adapter = SimpleNamespace(resources=resources, threads=job.threads, wildcards=list(job.wildcards.values()),
                              name=job.rule, is_group=lambda: False)
    wildcards = "_".join(str(value) for value in job.wildcards.values()).replace("/", "_")
    logdir = Path(settings.logdir) if getattr(settings, "logdir", None) else Path(".snakemake/slurm_logs")
    logdir = logdir if logdir.is_absolute() else workdir / logdir
    account = next(iter(re.split(r"[,\s]+", str(resources.get("slurm_account") or "").strip())), "")
    partition = resources.get("slurm_partition")
    if not account or not partition:
        guessed_account, guessed_partition, unguessable = _slurm_guesses()
        if not partition and unguessable:
            raise SettingError(unguessable)
        account, partition = account or guessed_account, partition or guessed_partition
    params = {
        "run_uuid": RUN_UUID,
        "slurm_logfile": logdir / f"rule_{job.rule}" / wildcards / "%j.log",
        "comment_str": f"rule_{job.rule}_wildcards_{wildcards}" if wildcards else f"rule_{job.rule}",
        "account": f" -A {shlex.quote(str(account))}" if account else "",
        "partition": f" -p {shlex.quote(str(partition))}" if partition else "",
        "workdir": str(workdir),
    }
    call = get_submit_command(adapter, params, settings=settings) + set_gres_string(adapter)
    return call + (" /dev/stdin" if settings.pass_command_as_script else ' --wrap="<job command>"')


def submission(profile: Profile, job: PlannedJob, workdir: Path) -> str:
    """The command line that submits ``job`` under ``profile``; a SettingError names what is missing."""
    if profile.executor == "slurm":
        return sbatch_command(job, profile.slurm, workdir)
    module = _submit_module(profile.submit_script) if profile.executor == "cluster-generic" else None
    if module is None:
        raise SettingError(f"{profile.executor} with {profile.submit_script}: not a kotomamba cluster profile")
    jobscript = JOBSCRIPT.format(rule=job.rule, jobid=job.jobid)
    return shlex.join(module.submit_command(job.properties(), jobscript))


# AccountingStorageEnforce values that make SLURM refuse a job without a valid association (slurm.conf(5):
# limits, qos and safe imply associations).
ENFORCING = {"associations", "limits", "qos", "safe"}


def _output(command: list[str]) -> str | None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def enforced_accounting(config_text: str) -> set[str]:
    """The ``AccountingStorageEnforce`` items of ``scontrol show config`` output."""
    for line in config_text.splitlines():
        name, _, value = line.partition("=")
        if name.strip() == "AccountingStorageEnforce":
            return {item.strip().lower() for item in value.split(",") if item.strip() not in ("", "none")}
    return set()


def slurm_account_problems(jobs: list[PlannedJob]) -> tuple[list[str], list[str]]:
    """(errors, warnings) for jobs without a ``slurm_account``: asked of the cluster where it answers."""
    rules = sorted({job.rule for job in jobs if not job.resources.get("slurm_account")})
    if not rules:
        return [], []
    fix = ("export KOTOMAMBA_SLURM_ACCOUNT=<account> or set `resources: {<rule>: {slurm_account: ...}}` "
           "in the run config")
    config = _output(["scontrol", "show", "config"])
    if config is None:
        return [], [f"no SLURM account for {', '.join(rules)}, and `scontrol show config` did not answer, so "
                    f"whether this cluster requires one is unknown; if it does, {fix}"]
    enforced = enforced_accounting(config) & ENFORCING
    if not enforced:
        return [], []
    user = getpass.getuser()
    default = (_output(["sacctmgr", "-nP", "show", "user", user, "format=DefaultAccount"]) or "").strip()
    where = f"this cluster enforces associations (AccountingStorageEnforce={','.join(sorted(enforced))})"
    if not default:
        return [f"no SLURM account for {', '.join(rules)}: {where} and user {user} has no default account "
                f"(sacctmgr), so sbatch would refuse the jobs; {fix}"], []
    return [], [f"no SLURM account for {', '.join(rules)}: {where}; the jobs are charged to {user}'s default "
                f"account {default} (or the one of {user}'s last job, which the SLURM executor guesses); to "
                f"choose, {fix}"]


def _rules_by(pairs) -> dict[str, list[str]]:
    """{key: its rules, each once, in order} from (key, rule) pairs: one message per problem, naming every rule."""
    found: dict[str, list[str]] = {}
    for key, rule in pairs:
        rules = found.setdefault(key, [])
        if rule not in rules:
            rules.append(rule)
    return found


def _naming(rules: list[str], problem: str) -> str:
    return f"rule{'s' if len(rules) > 1 else ''} {', '.join(rules)}: {problem}"


def _asking(jobs: list[PlannedJob], resource: str) -> dict[str, list[str]]:
    """{value of ``resource``: the rules whose jobs ask for it}, for the jobs that set it."""
    return _rules_by((str(job.resources[resource]), job.rule) for job in jobs if job.resources.get(resource))


def slurm_name_problems(jobs: list[PlannedJob]) -> list[str]:
    """Errors for partitions this cluster does not have (``sinfo``) and, where it enforces associations, accounts
    the user has no association with (``sacctmgr``): sbatch would refuse those jobs, and a misspelt name set for
    one rule (``resources.train.slurm_partition``) would stop the run only when that rule is reached, after the
    stages before it ran. Asked only where the cluster answers; the names a job gives are its own or the profile's."""
    errors = []
    partitions = _asking(jobs, "slurm_partition")
    listed = _output(["sinfo", "-h", "-o", "%R"]) if partitions else None
    if listed is not None:
        known = sorted(set(listed.split()))
        errors += [_naming(rules, f"partition {name!r} is not one of this cluster's ({', '.join(known) or 'none'}, "
                                  "sinfo); set resources.<rule>.slurm_partition or KOTOMAMBA_SLURM_PARTITION to one of "
                                  "them")
                   for name, rules in partitions.items() if name not in known]
    accounts = _asking(jobs, "slurm_account")
    config = _output(["scontrol", "show", "config"]) if accounts else None
    if config is None or not enforced_accounting(config) & ENFORCING:
        return errors
    user = getpass.getuser()
    associated = _output(["sacctmgr", "-nP", "show", "association", f"user={user}", "format=Account"])
    if associated is None:
        return errors
    mine = sorted(set(associated.split()))
    errors += [_naming(rules, f"account {name!r} has no association with user {user} on this cluster, which "
                              f"enforces them ({user}'s accounts: {', '.join(mine) or 'none'}, sacctmgr); set "
                              "resources.<rule>.slurm_account or KOTOMAMBA_SLURM_ACCOUNT to one of them")
               for name, rules in accounts.items() if name not in mine]
    return errors


def check(profile: Profile, jobs: list[PlannedJob], workdir: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) about submitting ``jobs`` under ``profile``: each job whose submission would
    fail (one message per reason, naming the rules it stops), and the SLURM account's."""
    refusals = []
    for job in jobs:
        try:
            submission(profile, job, workdir)
        except (SettingError, WorkflowError) as error:  # WorkflowError: the SLURM plugin's refusals
            refusals.append((str(error), job.rule))
    errors = [_naming(rules, reason) for reason, rules in _rules_by(refusals).items()]
    warnings: list[str] = []
    if profile.executor == "slurm":
        account_errors, warnings = slurm_account_problems(jobs)
        errors += account_errors + slurm_name_problems(jobs)
    return errors, warnings


def local_span_problem(jobs, env: dict[str, str]) -> str | None:
    """Why a run without a scheduler (``profiles/local``) cannot run ``jobs``: a training of several nodes, which
    `kotomamba launch` starts only inside an allocation of them (``salloc``, an interactive ``qrsh``/``qsub -I``),
    would otherwise stop at its own start, after the stages before it ran. None when it can."""
    from kotomamba.train.scheduler_facts import job_id

    nodes = max((int(dict(job.resources.items()).get("nodes", 1)) for job in jobs if job.rule.name == "train"),
                default=1)
    if nodes == 1 or job_id(env) is not None:
        return None
    return (f"rule train: launch.nodes {nodes} needs {nodes} nodes, and this run has no scheduler (executor local, "
            "no SLURM_JOB_ID, JOB_ID or PBS_JOBID): run it with --profile profiles/slurm, profiles/sge or "
            "profiles/abci, or inside an allocation of the nodes")


def check_before_submitting(workflow, jobs) -> None:
    """The Snakefile's ``onstart`` (a real run, before its first job): stop a cluster run whose jobs
    cannot be submitted as configured; print the warnings."""
    profile = Profile.from_workflow(workflow)
    if profile.executor == "local" and (problem := local_span_problem(jobs, os.environ)):
        raise SettingError(f"nothing was run: {problem}")
    if not profile.submits():
        return
    errors, warnings = check(profile, submitted_jobs(workflow, jobs), Path(workflow.workdir_init))
    for warning in warnings:
        print(f"kotomamba: warning: {warning}", file=sys.stderr)
    if errors:
        raise SettingError("nothing was submitted:\n" + "\n".join(f"  {error}" for error in errors))


def plan(profile_dir: str, configfile: str | None, targets: list[str], extra: list[str]) -> list[PlannedJob]:
    """The jobs a run under the profile would submit: a dry run in this directory, recorded by the Snakefile."""
    with tempfile.TemporaryDirectory(prefix="kotomamba-plan-") as scratch:
        record = Path(scratch, "jobs.json")
        command = [sys.executable, "-m", "snakemake", "--dry-run", *targets, "--profile", profile_dir,
                   *(["--configfile", configfile] if configfile else []), *extra]
        result = subprocess.run(command, capture_output=True, text=True,
                                env={**os.environ, PLANNED_JOBS_ENV: str(record)})
        if result.returncode != 0:
            raise SettingError(f"the dry run failed ({shlex.join(command)}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
        return [PlannedJob(**job) for job in json.loads(record.read_text())] if record.exists() else []


REQUESTS = ("nodes", "gpus_per_node", "gres", "threads", "cpus_per_task", "mem_mb", "runtime")


def describe(job: PlannedJob) -> str:
    wildcards = ", ".join(f"{name}={value}" for name, value in job.wildcards.items())
    asked = {"threads": job.threads, **job.resources}
    requests = ", ".join(f"{name}={asked[name]}" for name in REQUESTS if name in asked)
    return f"job {job.jobid}: rule {job.rule}" + (f" ({wildcards})" if wildcards else "") + f"; {requests}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kotomamba submissions",
        description="Show the sbatch/qsub command line and resources of every job a `snakemake --profile P` "
        "run would submit (a dry run; nothing is submitted), and what the profile still needs. "
        "Arguments after `--` go to snakemake.")
    parser.add_argument("--profile", required=True, help="a profile directory: profiles/slurm, profiles/sge, ...")
    parser.add_argument("--configfile", help="the run config (default: the Snakefile's config.yaml)")
    parser.add_argument("targets", nargs="*", default=["all"], help="targets (default: all)")
    return parser


def main(argv: list[str]) -> int:
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    options = build_parser().parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    try:
        profile = Profile.from_dir(options.profile)
        if profile.executor not in ("slurm", "cluster-generic"):
            print(f"kotomamba submissions: {options.profile} runs every job on this machine; nothing is submitted")
            return 0
        if not profile.submits():
            raise SettingError(f"{options.profile}: its submit command {profile.submit_script} is not a kotomamba "
                               "profile's submit.py (with submit_command)")
        jobs = plan(options.profile, options.configfile, options.targets, extra)
    except SettingError as error:
        return report("submissions", error)
    # Snakemake's -d/--directory: the jobs' working directory, where submit.py and the SLURM plugin run.
    flags = [i for i, arg in enumerate(extra[:-1]) if arg in ("-d", "--directory")]
    workdir = Path(extra[flags[-1] + 1]).resolve() if flags else Path.cwd()
    os.chdir(workdir)
    for job in jobs:
        print(describe(job))
        try:
            print(f"  {submission(profile, job, workdir)}")
        except (SettingError, WorkflowError):
            print(f"  (cannot be submitted: see the error naming rule {job.rule} below)")
    if not jobs:
        print("nothing to submit: every target is up to date")
    errors, warnings = check(profile, jobs, workdir)
    for warning in warnings:
        print(f"warning: {warning}")
    for error in errors:
        print(f"error: {error}")
    return 1 if errors else 0
