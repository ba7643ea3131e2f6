#!/bin/sh
# Cancel PBS jobs (cluster-generic cancel command): qdel JOB_ID..., each followed to the newest job of its
# resubmissions (the chain status.py follows, kotomamba.cluster_jobs.Resubmissions).
exec python3 -m kotomamba.cluster_jobs cancel pbs "$@"
