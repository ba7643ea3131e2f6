#!/bin/sh
# Cancel Grid Engine jobs (cluster-generic cancel command): qdel JOB_ID..., each followed to the newest job
# of its resubmissions (status.py's .snakemake/sge_logs/requeue/<id>.next chain, multi-host jobs).
chain=.snakemake/sge_logs/requeue
ids=""
for id in "$@"; do
    while [ -f "$chain/$id.next" ]; do id=$(cat "$chain/$id.next"); done
    ids="$ids $id"
done
exec qdel $ids
