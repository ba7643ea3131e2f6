#!/usr/bin/env bash
# The pipeline's GPU jobs (train, convert, evaluate, report) end to end on a GPU machine that has no
# Snakemake and no network, running exactly the shell commands Snakemake would run (issue 8).
#
# Here, with Snakemake (CPU jobs run here: corpus, tokenizer, tokenization, stage configs):
#   bash bench/gpu_pipeline.sh prepare configs/mamba2-130m.yaml configs/gpu-e2e.yaml
# There (carry: .gpu results/gpu-e2e/tokenized results/gpu-e2e/tokenizer results/gpu-e2e/train
# results/gpu-e2e/commands.sh):
#   bash bench/gpu_pipeline.sh run OUT_DIR results/gpu-e2e
# OUT_DIR receives timings.txt and pipeline.tar.gz: the logs, metrics, evaluation, report and the export's
# model card (not the weights).
#
# The sharded trainer on NGPU GPUs of one host (FSDP2 over NCCL), on the same data and stage config:
#   bash bench/gpu_pipeline.sh sharded OUT_DIR results/gpu-e2e NGPU [STEPS]
# runs STEPS / 2 steps as one job (`train.max_steps_this_job`: it checkpoints and stops), resumes to STEPS
# in a second job, then exports the sharded checkpoint to transformers. TRAIN_OVERRIDES (dotted.key=value
# ...) go to both jobs. OUT_DIR receives the logs, metrics.jsonl and final.json.
set -uo pipefail
mode=${1:?usage: gpu_pipeline.sh prepare CONFIG... | run OUT_DIR RESULTS_DIR | sharded OUT_DIR RESULTS_DIR NGPU [STEPS]}
shift

if [ "$mode" = prepare ]; then
  configs=("$@")
  results=results/$(python3 -c "import sys, yaml; r = None
for path in sys.argv[1:]:
    r = (yaml.safe_load(open(path)) or {}).get('run', r)
print(r)" "${configs[@]}")
  snakemake --configfile "${configs[@]}" --profile profiles/local --until tokenize stage_config || exit 1
  # The remaining jobs in the order Snakemake would run them; the report script by its relative path.
  snakemake --configfile "${configs[@]}" --profile profiles/local -n -p all \
    | sed -n 's/^Shell command: //p' | grep -v '^None$' \
    | sed -E 's#^python [^ ]*/workflow_scripts/#python3 workflow_scripts/#' > "$results/commands.sh"
  cat "$results/commands.sh"
  du -sh "$results"/{tokenized,tokenizer,train,commands.sh}
  exit 0
fi

[ "$mode" = run ] || [ "$mode" = sharded ] || { echo "unknown mode $mode"; exit 2; }
out=${1:?OUT_DIR}; results=${2:?RESULTS_DIR}
mkdir -p "$out"
source bench/gpu_env.sh
# The dataset index helpers are C++ (pybind11); without them the NumPy twins give the same indices.
python3 setup.py -q build_ext --inplace > "$out/build_ext.log" 2>&1 || echo "C++ helpers not built (NumPy twins used)"

if [ "$mode" = sharded ]; then
  ngpu=${3:?NGPU}; steps=${4:-60}
  run=$results/train/sharded-$ngpu
  rm -rf "$run"
  train=(python3 -m kotomamba launch --nnodes 1 --nproc-per-node "$ngpu" -- train
         --config "$results/train/pretrain/train.yaml" "run_dir=$run" "train.steps=$steps"
         "train.global_batch_size=$(( 8 * ngpu ))" "checkpoint.interval=$(( steps / 2 ))"
         "eval.interval=$(( steps / 2 ))" "schedule.warmup_steps=$(( steps / 10 ))" ${TRAIN_OVERRIDES:-})
  began=$(date +%s)
  "${train[@]}" "train.max_steps_this_job=$(( steps / 2 ))" > "$out/sharded_job1.log" 2>&1
  first=$?
  echo "job 1: exit $first after $(( $(date +%s) - began )) s" | tee "$out/sharded.txt"
  began=$(date +%s)
  "${train[@]}" > "$out/sharded_job2.log" 2>&1
  status=$?
  echo "job 2: exit $status after $(( $(date +%s) - began )) s" | tee -a "$out/sharded.txt"
  python3 -m kotomamba convert --checkpoint "$run" --to hf --output "$run/export-hf" > "$out/sharded_convert.log" 2>&1
  convert=$?
  echo "convert: exit $convert" | tee -a "$out/sharded.txt"
  cp "$run/metrics.jsonl" "$out/sharded_metrics.jsonl"; cp "$run/final.json" "$out/sharded_final.json"
  exit $(( first | status | convert ))
fi
status=0
while IFS= read -r command; do
  command=${command/#kotomamba /python3 -m kotomamba }
  echo "+ $command"
  log=$(grep -o '> [^ ]*\.log' <<< "$command" | tail -1 | cut -c3-)
  [ -n "$log" ] && mkdir -p "$(dirname "$log")"  # Snakemake makes a job's log directory before the job
  began=$(date +%s)
  bash -c "$command"
  rc=$?
  echo "  exit $rc after $(( $(date +%s) - began )) s" | tee -a "$out/timings.txt"
  if [ $rc -ne 0 ]; then
    status=$rc
    [ -n "$log" ] && tail -40 "$log"
    break
  fi
done < "$results/commands.sh"
cp -r "$results/logs" "$out/" 2>/dev/null
for stage in "$results"/train/*/; do
  name=$(basename "$stage")
  mkdir -p "$out/train/$name"
  cp "$stage"/{metrics.jsonl,final.json,manifest.json,config.resolved.yaml} "$out/train/$name/" 2>/dev/null
done
cp -r "$results/eval" "$results/report" "$out/" 2>/dev/null
cp "$results/export/hf/README.md" "$out/model_card.md" 2>/dev/null
cp "$results/export/hf/config.json" "$out/hf_config.json" 2>/dev/null
pack_out timings.txt pipeline.tar.gz
exit $status
