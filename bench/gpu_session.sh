#!/usr/bin/env bash
# One GPU-machine session: install the carried kernel wheels, run the `gpu` tests, then benchmark.
# Run from the repository root on a CUDA machine whose Python has torch (and triton):
#   bash bench/gpu_session.sh OUT_DIR [tests] [train PRESETS MICRO_BATCHES] [multi NGPU PRESETS MICRO_BATCHES]
#                                     [firststep PRESET MICRO_BATCH] [loss D_MODELS] [ssd] [op NAME] [ncu NAME IMPL KERNEL]
#                                     [trainer PRESET MICRO_BATCH] [pack]
# BENCH_ARGS (e.g. "--warmup 3 --steps 6 --rounds 3 --impls reference,kotomamba,kotomamba+compile") go to train
# and multi, which also append their RESULTS.md entries to OUT_DIR/results_entry.md. BENCH_TAG names a multi
# run's files (e.g. BENCH_TAG=sgo with BENCH_ARGS="--strategy SHARD_GRAD_OP" in a second invocation).
# TRAINER_ARGS go to trainer (bench/trainer_throughput.py: `kotomamba train` itself, one process per config variant;
# default: the default config against parallel.cuda_graph=false and the same without document resets).
# STEP_TIMEOUT (seconds, default 500) bounds each step (the tests, ssd and op steps get a --time-limit 20 s
# less, so that a cut-short run still prints its table of what ran); TEST_JOBS (default 16) is how many test
# processes run at once; TESTS_K (a pytest -k expression) picks some of the tests; TEST_SHARD=k/n runs the k-th of n
# interleaved shares of them (the whole suite takes longer than one device call: run 1/2 and 2/2 in two calls). Each
# test is bounded only by the step (pytest's --timeout is a hang guard): a parity test that compiles and autotunes
# mamba-ssm's kernels beside 15 others takes minutes, and how long must not decide whether it passes.
# Two invocations can share a machine of several GPUs (CUDA_VISIBLE_DEVICES, different OUT_DIRs).
# Wheels for mamba-ssm / causal-conv1d (and pytest, if missing) are taken from .gpu/ and .whl/ when present;
# elsewhere install them with pip (`pip install -e '.[gpu]' --no-build-isolation`).
set -uo pipefail
out=${1:?usage: gpu_session.sh OUT_DIR [steps...]}; shift
mkdir -p "$out"
source bench/gpu_env.sh
python3 -c "import torch, triton, mamba_ssm, causal_conv1d; print('torch', torch.__version__, 'triton', triton.__version__, 'mamba_ssm', mamba_ssm.__version__, 'causal_conv1d', causal_conv1d.__version__)" | tee -a "$out/card.txt"
status=0
# The op benchmarks' children share the step's time less a margin in which their parent still prints its table.
child_limit() { echo $(( ${STEP_TIMEOUT:-500} - 20 )); }
while [ $# -gt 0 ]; do
  case "$1" in
    tests)
      shift
      # Every gpu-marked test (kernels, model, training, export, decoding), one pytest process per test,
      # TEST_JOBS at a time, the slowest families first, each family's first test before the rest of it
      # (bench/gpu_tests.py): most of the time goes to compiling and autotuning Triton kernels, which the
      # processes share through Triton's cache on disk once one of them has finished.
      mkdir -p "$out/tests"
      python3 -m pytest -m gpu tests/gpu tests/test_convert_export.py tests/test_generate_decode.py \
        ${TESTS_K:+-k "$TESTS_K"} --collect-only -q -p no:cacheprovider 2>/dev/null | grep '::' > "$out/tests/ids.txt"
      slow='ssd|split|training|first_50|model_matches'
      shard=${TEST_SHARD:-1/1}
      { grep -E "$slow" "$out/tests/ids.txt"; grep -vE "$slow" "$out/tests/ids.txt"; } \
        | awk -v k="${shard%/*}" -v n="${shard#*/}" '(NR - 1) % n == k - 1' > "$out/tests/order.txt"
      echo "$(wc -l < "$out/tests/order.txt") of $(wc -l < "$out/tests/ids.txt") tests (share $shard)" | tee -a "$out/card.txt"
      python3 bench/gpu_tests.py "$out/tests/order.txt" "$out/tests" --jobs "${TEST_JOBS:-16}" \
        --time-limit "$(child_limit)" -- -m gpu -q -s -p no:cacheprovider --timeout "${STEP_TIMEOUT:-500}" --tb=short \
        -rfE --durations=4 | tee "$out/gpu_tests.log"
      status=$(( status | ${PIPESTATUS[0]} ))
      tail -1 "$out/gpu_tests.log" >> "$out/card.txt"
      grep -h -A12 '^FAILED\|^ERROR\|short test summary' "$out"/tests/*.log | head -60
      # One archive: few files come back from a GPU machine.
      tar -czf "$out/gpu_tests_logs.tar.gz" -C "$out" tests && rm -r "$out/tests";;
    train)
      presets=$2; micro=$3; shift 3
      timeout "${STEP_TIMEOUT:-500}" python3 bench/train_throughput.py --presets "$presets" --micro-batch "$micro" ${BENCH_ARGS:-} \
        --json "$out/train_1gpu.json" --markdown "$out/results_entry.md" 2>&1 | tee "$out/train_1gpu.log" | grep -v '^{'
      status=$(( status | ${PIPESTATUS[0]} ));;
    multi)
      ngpu=$2; presets=$3; micro=$4; shift 4
      # Scaling efficiency against a `train` step of the same presets earlier in the session.
      single=(); [ -f "$out/train_1gpu.json" ] && single=(--single-gpu-json "$out/train_1gpu.json")
      tag=${ngpu}gpu${BENCH_TAG:+_$BENCH_TAG}
      timeout "${STEP_TIMEOUT:-500}" python3 -m torch.distributed.run --standalone --nproc-per-node "$ngpu" bench/train_throughput.py \
        --presets "$presets" --micro-batch "$micro" ${BENCH_ARGS:-} --json "$out/train_$tag.json" \
        --markdown "$out/results_entry.md" "${single[@]}" 2>&1 \
        | tee "$out/train_$tag.log" | grep -v '^{'
      status=$(( status | ${PIPESTATUS[0]} ));;
    firststep)
      # Time to the first steps in a fresh process: with an empty Triton cache (autotuning runs), then
      # again with the cache the first process left (what a later stage or a resumed job sees).
      preset=$2; micro=$3; shift 3
      rm -rf /tmp/kotomamba-triton-firststep
      for cache in cold warm; do
        TRITON_CACHE_DIR=/tmp/kotomamba-triton-firststep timeout 400 python3 bench/train_throughput.py \
          --presets "$preset" --micro-batch "$micro" --impls kotomamba --warmup 1 --steps 2 \
          --json "$out/firststep_$cache.json" 2>&1 | tee "$out/firststep_$cache.log" | grep -v '^{'
        status=$(( status | ${PIPESTATUS[0]} ))
      done;;
    ssd)
      # The Mamba-2 SSD scan alone, ours against mamba-ssm's, one process per implementation (bench/ssd_throughput.py);
      # SSD_ARGS go to it (e.g. "--shapes 130m --impls ssd:mamba_ssm,ssd:ours=32.64.4-s64.64.32.8").
      shift
      timeout "${STEP_TIMEOUT:-500}" python3 bench/ssd_throughput.py --time-limit "$(child_limit)" ${SSD_ARGS:-} \
        --json "$out/ssd.json" 2>&1 \
        | tee "$out/ssd.log" | grep -v '^{'
      status=$(( status | ${PIPESTATUS[0]} ));;
    op)
      # One op alone, ours against the kernels it would replace, one process per implementation:
      # bench/NAME_throughput.py (conv: document-resetting convolution and mixer; norm: the RMSNorms); OP_ARGS go to it.
      name=$2; shift 2
      timeout "${STEP_TIMEOUT:-500}" python3 "bench/${name}_throughput.py" --time-limit "$(child_limit)" ${OP_ARGS:-} \
        --json "$out/$name.json" 2>&1 \
        | tee "$out/$name.log" | grep -v '^{'
      status=$(( status | ${PIPESTATUS[0]} ));;
    ncu)
      # Where one kernel's warps wait (Nsight Compute, the card's clocks left as they are): NAME's op benchmark
      # (bench/NAME_throughput.py with OP_ARGS; its first shape) runs IMPL once under ncu, which profiles the first
      # launch of the kernel whose name matches KERNEL (a regular expression). The report comes back as
      # ncu_NAME_KERNEL.ncu-rep (KERNEL's characters other than letters, digits, '.', '_' and '-' as '_') beside its
      # details page; bench/ncu_stalls.py prints the stall reasons and the instructions that wait, and _l1.txt what
      # went through L1/TEX.
      op=$2; impl=$3; kernel=$4; shift 4
      name=${op}_$(printf '%s' "$kernel" | tr -c 'A-Za-z0-9._-' '_')
      timeout "${STEP_TIMEOUT:-500}" ncu --clock-control none --profile-from-start off -k "regex:$kernel" \
        --launch-count 1 --set full --import-source yes -o "$out/ncu_$name" -f \
        python3 "bench/${op}_throughput.py" ${OP_ARGS:-} --child "$impl" --ncu > "$out/ncu_$name.log" 2>&1
      status=$(( status | $? ))
      ncu -i "$out/ncu_$name.ncu-rep" --page details > "$out/ncu_${name}_details.txt" 2>&1
      grep -E "^ +(Duration|Registers Per Thread|Achieved Occupancy|Issued Ipc Active|No Eligible) " \
        "$out/ncu_${name}_details.txt"
      ncu -i "$out/ncu_$name.ncu-rep" --page source --csv --print-source sass > "$out/ncu_${name}_sass.csv" 2>&1
      python3 bench/ncu_stalls.py "$out/ncu_${name}_sass.csv" | tee "$out/ncu_${name}_stalls.md"
      # What the L1/TEX path carried, by kind: shared memory's wavefronts and bank conflicts, global and local sectors.
      ncu -i "$out/ncu_$name.ncu-rep" --page raw 2>&1 | grep -E \
        "l1tex__data_(pipe_lsu_wavefronts|bank_conflicts_pipe_lsu)[a-z_]*\.sum |l1tex__t_sectors_pipe_lsu_mem_(global|local)_op_(ld|st)\.sum " \
        | tee "$out/ncu_${name}_l1.txt"
      rm "$out/ncu_${name}_sass.csv";;
    loss)
      # The language-model loss alone (bench/cross_entropy_throughput.py), for hidden sizes D_MODELS (e.g. 768,1024).
      timeout "${STEP_TIMEOUT:-500}" python3 bench/cross_entropy_throughput.py --d-model "$2" --json "$out/loss.json" \
        2>&1 | tee "$out/loss.log"
      status=$(( status | ${PIPESTATUS[0]} )); shift 2;;
    trainer)
      preset=$2; micro=$3; shift 3
      timeout "${STEP_TIMEOUT:-500}" python3 bench/trainer_throughput.py --preset "$preset" --micro-batch "$micro" \
        ${TRAINER_ARGS:---variants "default;parallel.cuda_graph=false;data.reset_at_eod=false;data.reset_at_eod=false parallel.cuda_graph=false"} \
        --json "$out/trainer.json" --markdown "$out/results_entry.md" 2>&1 | tee "$out/trainer.log" | grep -v '^{'
      status=$(( status | ${PIPESTATUS[0]} ));;
    pack)
      # Last: everything but the RESULTS entry into one archive (few files come back from a GPU machine).
      shift
      pack_out results_entry.md session.tar.gz;;
    *) echo "unknown step $1"; exit 2;;
  esac
done
exit $status
