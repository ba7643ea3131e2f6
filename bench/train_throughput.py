"""Training throughput: kotomamba's trainer step against the reference, same card, same run.

Reference (a): state-spaces' ``MambaLMHeadModel`` (mamba-ssm kernels) with a plain AMP loop: fp32
weights, bf16 autocast, fp32 cross-entropy over the full logits, fused AdamW, global-norm clipping.
On several GPUs (under torchrun) the reference is the predecessor's method instead: FSDP1 wrap per
block, everything bf16, activation checkpointing per block.
kotomamba (b): ``MambaLM`` with what ``kotomamba train`` applies (``parallelize``: FSDP2 per block and
root, bf16 compute with fp32 master weights and fp32 reduction; AdamW as the default config builds it),
stepped by the trainer's own step (``kotomamba.train.step.TrainStep``: the chunked cross-entropy inside
``forward(labels=...)``, the loss averaged over ranks, the global grad norm, the skip rules and clipping,
the optimizer step), on a process group started as the trainer starts its own.

Both see the same random tokens; steps are timed with CUDA events after warm-up, in windows that
alternate between the implementations with ``--rounds``; the median step gives tokens/s. With
``--isolate`` (one GPU) every implementation is instead timed in a fresh process of its own, once per
round (the order reversed every other round), so that no ratio depends on what else was built, compiled
or allocated in the same process: each implementation's figure is the median over rounds of its
per-process median step, with the range over rounds, and the ratio's range pairs the extremes. MFU counts
6N FLOPs per token (N without the input embedding) and the exact Mamba FLOP count of
``kotomamba.train.flops``, against the card's dense bf16 peak.

    python bench/train_throughput.py --presets mamba2-130m,mamba-1.4b --micro-batch 16,8 --json out.json
    python bench/train_throughput.py --presets mamba2-130m --isolate --rounds 3 --impls reference,kotomamba+graph
    torchrun --nproc-per-node 4 bench/train_throughput.py --presets mamba2-1.4b --micro-batch 8
    python bench/train_throughput.py --impls kotomamba+graph --doc-tokens 1000 --profile   # document resets
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from documents import random_seq_idx


def rank_world() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def init_process_group(device: torch.device) -> None:
    """The trainer's process group (``kotomamba.train.distributed``): torchrun's world, or one process alone
    on a free port of its own, so runs on other GPUs of the host can start beside it."""
    from kotomamba.train.distributed import detect_launch_env, init_distributed

    init_distributed(detect_launch_env(), device.type)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, steps: int, device: torch.device) -> list[float]:
    """Milliseconds of each of ``steps`` calls of ``step``: CUDA events on a GPU, the clock on a CPU
    (``--device cpu`` checks the script itself, not a speed anyone needs)."""
    times = []
    for _ in range(steps):
        if device.type != "cuda":
            began = time.perf_counter()
            step()
            times.append((time.perf_counter() - began) * 1e3)
            continue
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        step()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end))
    return times


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reference_step_fn(model_config, micro_batch: int, seq: int, device, world: int, batches):
    """mamba-ssm's model and plain AMP loop (1 GPU) or the predecessor's FSDP1 all-bf16 wrap with
    activation checkpointing (several)."""
    from mamba_ssm.models.config_mamba import MambaConfig as RefConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    torch.manual_seed(0)
    ref = MambaLMHeadModel(RefConfig(**model_config.to_dict()), device=device, dtype=torch.float32)
    if world > 1:
        from functools import partial

        from mamba_ssm.modules.block import Block
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp import MixedPrecision, ShardingStrategy
        from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

        ref = ref.to(torch.bfloat16)
        ref = FSDP(ref, auto_wrap_policy=partial(transformer_auto_wrap_policy, transformer_layer_cls={Block}),
                   mixed_precision=MixedPrecision(torch.bfloat16, torch.bfloat16, torch.bfloat16),
                   sharding_strategy=ShardingStrategy.FULL_SHARD, device_id=device, use_orig_params=True)
        # The predecessor also checkpointed every block's activations (as llama-recipes does after the wrap).
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
            CheckpointImpl, apply_activation_checkpointing, checkpoint_wrapper)

        apply_activation_checkpointing(
            ref, checkpoint_wrapper_fn=partial(checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT),
            check_fn=lambda module: isinstance(module, Block))
    optimizer = torch.optim.AdamW(ref.parameters(), lr=1e-4, weight_decay=0.1, fused=True)
    it = iter(batches)

    def step():
        x, y, _, _ = next(it)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=world == 1):
            logits = ref(x).logits
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        if world > 1:
            ref.clip_grad_norm_(1.0)
        else:
            torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step, (ref, optimizer)


def kotomamba_step_fn(model_config, device, strategy: str, compile_blocks: bool, cuda_graph: bool, batches):
    """The trainer's model, parallelism, optimizer and step (kotomamba.train): one micro-batch per step;
    ``cuda_graph``: its forward and backward replayed from a CUDA graph after two eager steps
    (``parallel.cuda_graph``)."""
    from torch.distributed.device_mesh import init_device_mesh

    from kotomamba.model.lm import MambaLM
    from kotomamba.train.config import OptimConfig, TrainLoopConfig
    from kotomamba.train.optim import build_optimizer
    from kotomamba.train.parallelize import parallelize
    from kotomamba.train.step import TrainStep

    mesh = init_device_mesh(device.type, (dist.get_world_size(),), mesh_dim_names=("shard",))
    torch.manual_seed(0)
    # The trainer initialises the full model once and scatters it into the shards; the same here.
    model = MambaLM(model_config, device=device, dtype=torch.float32)
    parallelize(model, mesh, strategy, "bf16", False, 1, compile_blocks)
    o = OptimConfig()
    optimizer = build_optimizer(model, o.lr, o.weight_decay, o.betas, o.eps, o.no_decay)
    train_step = TrainStep(model, optimizer, accumulation=1, grad_clip=TrainLoopConfig().grad_clip, graphed=cuda_graph)
    micro_batches = ({"tokens": tokens, "seq_idx": seq_idx} for _, _, tokens, seq_idx in batches)

    def step():
        return train_step(micro_batches).record["loss"]

    return step, (model, optimizer)


def random_batches(vocab: int, micro_batch: int, seq: int, device, count: int, seed: int, doc_tokens: int = 0):
    """``count`` micro-batches (inputs, labels, tokens, seq_idx). ``doc_tokens`` > 0: packed documents of
    that mean length, as ``data.reset_at_eod`` gives the trainer (``seq_idx``: each position's document
    number in its sample); 0: no ``seq_idx``."""
    generator = torch.Generator(device=device).manual_seed(seed)
    tokens = torch.randint(0, vocab, (count, micro_batch, seq + 1), device=device, generator=generator)
    seq_idx = [None] * count
    if doc_tokens:
        seq_idx = random_seq_idx((count, micro_batch, seq), doc_tokens, generator, device)
    return [(t[:, :-1].contiguous(), t[:, 1:].contiguous(), t, s) for t, s in zip(tokens, seq_idx)]


def kernel_table(kernels: list[tuple[str, float]], steps: int, rows: int) -> str:
    """A markdown table of the device's kernels by name, the most device time first, ``rows`` of them:
    (name, microseconds) per launch over ``steps`` steps -> ms, launches and us a launch per step, and each
    name's share of all the kernels' time. Names are cut at 80 characters (cuBLAS's run long)."""
    totals: dict[str, list[float]] = {}
    for name, us in kernels:
        total = totals.setdefault(name, [0.0, 0])
        total[0] += us
        total[1] += 1
    busy = sum(us for us, _ in totals.values()) or 1.0
    lines = ["| kernel | ms a step | launches a step | us a launch | share |", "| --- | --- | --- | --- | --- |"]
    for name, (us, count) in sorted(totals.items(), key=lambda item: -item[1][0])[:rows]:
        lines.append(f"| `{name[:80]}` | {us / steps / 1e3:.2f} | {count / steps:g} | {us / count:.1f} | "
                     f"{us / busy:.1%} |")
    return "\n".join(lines)


def profile_steps(step, name: str, device: torch.device, rows: int = 18) -> None:
    """Print where two steps' time goes: wall time against device-busy time and kernel launches (a step
    whose kernels keep the device busy for less than its wall time waits on the host), then the CUDA
    kernels that take the most device time (by kernel, then by operator with its kernels) and the operators
    that take the most host time.

    Every rank profiles (the steps hold collectives), rank 0 prints."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        began = time.perf_counter()
        for _ in range(2):
            step()
        synchronize(device)
        wall_ms = (time.perf_counter() - began) * 1e3
    if dist.get_rank() != 0:
        return
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    busy_ms = sum(e.time_range.elapsed_us() for e in kernels) / 1e3
    launches = sum(1 for e in prof.events() if e.name in ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx"))
    print(f"--- profile: {name} (2 steps) ---")
    print(f"per step: wall {wall_ms / 2:.1f} ms (profiler on), device busy {busy_ms / 2:.1f} ms "
          f"({busy_ms / wall_ms:.0%}), {len(kernels) / 2:.0f} device ops, {launches / 2:.0f} kernel launches")
    if kernels:
        print(kernel_table([(e.name, e.time_range.elapsed_us()) for e in kernels], 2, rows))
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60))


def prepare(name: str, build, model_config, micro_batch: int, seq: int, warmup: int, batches_needed: int,
            device, doc_tokens: int = 0) -> dict:
    """Build one implementation and run its warm-up steps: its first-steps time and its own peak memory
    (whatever other implementations keep allocated meanwhile is subtracted)."""
    free_memory(device)
    cuda = device.type == "cuda"
    base = torch.cuda.memory_allocated(device) if cuda else 0
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    batches = random_batches(model_config.vocab_size, micro_batch, seq, device, warmup + batches_needed,
                             seed=dist.get_rank(), doc_tokens=doc_tokens)
    step, keep = build(batches)
    started = time.perf_counter()
    for _ in range(warmup):
        step()
    synchronize(device)
    return {"name": name, "step": step, "keep": (keep, batches), "times": [],
            "first_steps_s": time.perf_counter() - started,
            "peak_gib": (torch.cuda.max_memory_allocated(device) - base) / 2**30 if cuda else float("nan")}


def summarize(prepared: dict, model_config, micro_batch: int, seq: int, device) -> dict:
    from kotomamba.train.flops import peak_flops, six_n, training_flops_per_token

    times = prepared["times"]
    tokens_per_s = micro_batch * seq / (statistics.median(times) / 1e3)
    peak = peak_flops(device_name(device), "bf16") or float("nan")
    return {
        "impl": prepared["name"], "tokens_per_s_per_gpu": tokens_per_s, "step_ms": statistics.median(times),
        "step_ms_min": min(times), "step_ms_max": max(times), "first_steps_s": prepared["first_steps_s"],
        "mfu_6n": tokens_per_s * six_n(model_config) / peak,
        "mfu_exact": tokens_per_s * training_flops_per_token(model_config, seq) / peak,
        "peak_gib": prepared["peak_gib"],
    }


def run_preset(builders: dict, model_config, micro_batch: int, seq: int, args, device) -> dict:
    """Time every implementation of one preset.

    With ``--rounds`` R > 1 all implementations stay built and their timed windows alternate R times
    (a, b, a, b, ...): clock and thermal drift over the run then lands on every side alike instead of
    on whichever runs last. With R = 1 each is built, timed and freed in turn (the least memory).
    """
    results, alive = {}, []
    for impl, build in builders.items():
        try:
            prepared = prepare(impl, build, model_config, micro_batch, seq, args.warmup,
                               args.rounds * args.steps + (2 if args.profile else 0), device, args.doc_tokens)
        except torch.OutOfMemoryError as error:
            results[impl] = {"impl": impl, "error": f"out of memory: {str(error)[:120]}"}
            free_memory(device)
            continue
        except RuntimeError as error:
            # One implementation failing to build or warm up (a CUDA-graph capture, a compile) is a result
            # of this run: the table says so, and the other implementations are still measured.
            if dist.get_world_size() > 1:
                raise  # the other ranks would wait in a collective
            print(f"{impl} failed: {error!r}"[:2000], file=sys.stderr, flush=True)
            results[impl] = {"impl": impl, "error": f"failed: {str(error)[:120]}"}
            free_memory(device)
            continue
        alive.append(prepared)
        if args.rounds == 1:
            finish(prepared, args, results, model_config, micro_batch, seq, device)
            alive.pop()
    for _ in range(args.rounds if alive else 0):
        for prepared in list(alive):
            try:
                prepared["times"] += time_steps(prepared["step"], args.steps, device)
            except torch.OutOfMemoryError as error:
                # All implementations stay built for alternating rounds: one that runs out of memory beside
                # the others is recorded as such, and the rest are still timed.
                if dist.get_world_size() > 1:
                    raise
                results[prepared["name"]] = {"impl": prepared["name"],
                                             "error": f"out of memory beside the others: {str(error)[:80]}"}
                alive.remove(prepared)
                prepared.clear()
                free_memory(device)
    if args.profile:
        # All before any is freed: freeing empties the allocator's cache, and a step profiled after that
        # would show cudaMalloc calls that no step of a running trainer makes.
        for prepared in alive:
            profile_steps(prepared["step"], prepared["name"], device, args.profile)
    for prepared in alive:
        finish(prepared, args, results, model_config, micro_batch, seq, device, profiled=args.profile)
    return results


def finish(prepared: dict, args, results: dict, model_config, micro_batch: int, seq: int, device,
           profiled: bool = False) -> None:
    """Time it if nothing did yet, profile it if asked and not done yet, record its summary, free it."""
    if not prepared["times"]:
        prepared["times"] = time_steps(prepared["step"], args.steps, device)
    if args.profile and not profiled:
        profile_steps(prepared["step"], prepared["name"], device, args.profile)
    results[prepared["name"]] = summarize(prepared, model_config, micro_batch, seq, device)
    prepared.clear()
    free_memory(device)


def scaling_against(row: dict, single_gpu_rows: list[dict]) -> dict[str, float]:
    """Per implementation: tokens/s per GPU here over the same implementation's tokens/s on one GPU
    (same preset and micro-batch, from an earlier ``--json``): the scaling efficiency."""
    scaling = {}
    for single in single_gpu_rows:
        if (single["preset"], single["micro_batch"], single["gpus"]) != (row["preset"], row["micro_batch"], 1):
            continue
        for impl, result in row.items():
            here, there = result, single.get(impl)
            if isinstance(here, dict) and isinstance(there, dict) and "tokens_per_s_per_gpu" in here \
                    and "tokens_per_s_per_gpu" in there:
                scaling[impl] = here["tokens_per_s_per_gpu"] / there["tokens_per_s_per_gpu"]
    return scaling


def markdown_table(rows: list[dict], impls: list[str]) -> str:
    lines = ["| preset | gpus | mb | impl | tokens/s/GPU | MFU 6N | MFU exact | peak GiB | first steps s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        for impl in impls:
            r = row.get(impl, {})
            head = f"| {row['preset']} | {row['gpus']} | {row['micro_batch']} | {impl} |"
            if "error" in r:
                lines.append(f"{head} {r['error'][:40]} | | | | |")
                continue
            spread = (f" [{r['tokens_per_s_min']:,.0f}-{r['tokens_per_s_max']:,.0f} over {r['processes']} processes]"
                      if "processes" in r else "")
            ratio = f" ({r['ratio']:.3f}x, mem {r['memory_ratio']:.2f})" if "ratio" in r else ""
            ratio += f" (ratio {r['ratio_min']:.3f}-{r['ratio_max']:.3f})" if "ratio_min" in r else ""
            ratio += f" [{r['scaling']:.1%} of 1 GPU]" if "scaling" in r else ""
            lines.append(f"{head} {r['tokens_per_s_per_gpu']:,.0f}{spread}{ratio} | {r['mfu_6n']:.1%} | "
                         f"{r['mfu_exact']:.1%} | {r['peak_gib']:.1f} | {r['first_steps_s']:.1f} |")
    return "\n".join(lines)


def markdown_entry(table: str, card: str, world: int) -> str:
    """A RESULTS.md entry: date, card, versions, the command as run, the table."""
    from importlib import metadata

    versions = [f"torch {torch.__version__}"]
    for package in ("triton", "mamba_ssm", "causal_conv1d"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} absent")
    launcher = f"torchrun --nproc-per-node {world} " if world > 1 else "python "
    command = launcher + " ".join(["bench/train_throughput.py", *sys.argv[1:]])
    return (f"\n### {datetime.date.today().isoformat()}: {world} x {card}\n\n"
            f"{', '.join(versions)}, Python {sys.version.split()[0]}. Command: `{command}`\n\n{table}\n")


def isolated_run(args, name: str, mb: int, impl: str, scratch: Path) -> dict:
    """One implementation of one preset, timed in a fresh process (this script without ``--isolate``);
    its output goes to stderr. Returns that process's result for ``impl``."""
    out = scratch / "row.json"
    out.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--presets", name, "--micro-batch", str(mb),
               "--impls", impl, "--seq", str(args.seq), "--warmup", str(args.warmup), "--steps", str(args.steps),
               "--device", args.device, "--doc-tokens", str(args.doc_tokens), "--json", str(out)] + (
                   [f"--profile={args.profile}"] if args.profile else [])
    done = subprocess.run(command, stdout=sys.stderr, stderr=sys.stderr)
    if done.returncode != 0 or not out.exists():
        return {"impl": impl, "error": f"process exited {done.returncode}"}
    row = json.loads(out.read_text())[0]
    return dict(row[impl], card=row["card"])


def combine_rounds(impl: str, runs: list[dict], micro_batch: int, seq: int) -> dict:
    """Per-process results of one implementation -> medians over rounds with their ranges."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return {"impl": impl, "error": runs[0]["error"] if runs else "not run"}
    tokens = [r["tokens_per_s_per_gpu"] for r in good]
    median_tokens = statistics.median(tokens)
    scale = median_tokens / good[0]["tokens_per_s_per_gpu"]
    return {
        "impl": impl, "tokens_per_s_per_gpu": median_tokens, "tokens_per_s_min": min(tokens),
        "tokens_per_s_max": max(tokens), "step_ms": micro_batch * seq / median_tokens * 1e3,
        "step_ms_min": min(r["step_ms_min"] for r in good), "step_ms_max": max(r["step_ms_max"] for r in good),
        "first_steps_s": statistics.median(r["first_steps_s"] for r in good),
        "mfu_6n": good[0]["mfu_6n"] * scale, "mfu_exact": good[0]["mfu_exact"] * scale,
        "peak_gib": max(r["peak_gib"] for r in good), "processes": len(good), "failed_processes": len(runs) - len(good),
    }


def isolated_main(args, impls: list[str], presets: list[str], micro: list[int]) -> None:
    """``--isolate``: every (round, implementation) in its own process; medians and ranges over rounds."""
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, mb in zip(presets, micro):
            runs = {impl: [] for impl in impls}
            card = "cpu"
            for round_ in range(args.rounds):
                # Reversed every other round: drift over the run lands on every implementation alike.
                for impl in impls if round_ % 2 == 0 else impls[::-1]:
                    result = isolated_run(args, name, mb, impl, Path(scratch))
                    card = result.pop("card", card)
                    runs[impl].append(result)
            row = {"preset": name, "micro_batch": mb, "seq": args.seq, "gpus": 1, "strategy": args.strategy,
                   "card": card, "isolated_rounds": args.rounds}
            for impl in impls:
                row[impl] = combine_rounds(impl, runs[impl], mb, args.seq)
            reference = row.get("reference", {})
            for impl in impls:
                mine = row[impl]
                if impl == "reference" or "error" in mine or "tokens_per_s_per_gpu" not in reference:
                    continue
                mine["ratio"] = mine["tokens_per_s_per_gpu"] / reference["tokens_per_s_per_gpu"]
                mine["ratio_min"] = mine["tokens_per_s_min"] / reference["tokens_per_s_max"]
                mine["ratio_max"] = mine["tokens_per_s_max"] / reference["tokens_per_s_min"]
                mine["memory_ratio"] = mine["peak_gib"] / reference["peak_gib"]
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:
                with open(args.json, "w") as handle:
                    json.dump(rows, handle, indent=2)
    table = markdown_table(rows, impls)
    print("\n" + table)
    if args.markdown:
        with open(args.markdown, "a", encoding="utf-8") as handle:
            handle.write(markdown_entry(table, rows[0]["card"] if rows else "cpu", 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="mamba2-130m")
    parser.add_argument("--micro-batch", default="16", help="one value, or one per preset")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate the implementations' timed windows this many times (all stay in memory)")
    parser.add_argument("--strategy", default="FULL_SHARD", choices=["FULL_SHARD", "SHARD_GRAD_OP"])
    parser.add_argument("--impls", default="reference,kotomamba",
                        help="reference, kotomamba, kotomamba+compile (torch.compile per block), kotomamba+graph "
                             "(CUDA-graphed forward and backward; one GPU), comma-separated")
    parser.add_argument("--json", default=None)
    parser.add_argument("--single-gpu-json", default=None,
                        help="a one-GPU run's --json: adds each implementation's scaling efficiency")
    parser.add_argument("--markdown", default=None, help="append a RESULTS.md entry (date, card, versions, command)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cpu runs kotomamba's step on the reference ops (a check of this script)")
    parser.add_argument("--isolate", action="store_true",
                        help="one GPU: each implementation in a fresh process of its own, once per round")
    parser.add_argument("--profile", type=int, nargs="?", const=18, default=0, metavar="ROWS",
                        help="print each impl's device-busy share and its ROWS (default 18) top kernels and host "
                             "operators")
    parser.add_argument("--doc-tokens", type=int, default=0,
                        help="kotomamba only: packed documents of this mean length with seq_idx (data.reset_at_eod); 0: none")
    args = parser.parse_args()

    from kotomamba.model.config import preset

    rank, world, local_rank = rank_world()
    impls = args.impls.split(",")
    presets = args.presets.split(",")
    micro = [int(v) for v in args.micro_batch.split(",")]
    micro = micro * len(presets) if len(micro) == 1 else micro
    unknown = set(impls) - {"reference", "kotomamba", "kotomamba+compile", "kotomamba+graph"}
    if unknown:
        parser.error(f"unknown --impls {sorted(unknown)}")
    if args.doc_tokens and "reference" in impls:
        parser.error("--doc-tokens times kotomamba's document resets: leave the reference out of --impls")
    if args.device == "cpu" and "reference" in impls:
        parser.error("the reference needs mamba-ssm's CUDA kernels: on --device cpu give --impls kotomamba")
    if "kotomamba+graph" in impls and (args.device == "cpu" or world > 1):
        parser.error("kotomamba+graph (CUDA graphs) runs on one GPU only")
    if args.isolate:
        if world > 1 or args.single_gpu_json:
            parser.error("--isolate times one GPU's processes one after another (no torchrun, no --single-gpu-json)")
        isolated_main(args, impls, presets, micro)
        return
    device = torch.device(args.device, local_rank) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    init_process_group(device)
    single_gpu_rows = json.loads(Path(args.single_gpu_json).read_text()) if args.single_gpu_json else []
    rows = []
    for name, mb in zip(presets, micro):
        config = preset(name)
        row = {"preset": name, "micro_batch": mb, "seq": args.seq, "gpus": world, "strategy": args.strategy,
               "card": device_name(device)}
        builders = {}
        for impl in impls:
            if impl == "reference":
                builders[impl] = lambda b, config=config, mb=mb: reference_step_fn(  # noqa: E731
                    config, mb, args.seq, device, world, b)
            else:
                builders[impl] = lambda b, config=config, c=impl.endswith("+compile"), g=impl.endswith("+graph"): \
                    kotomamba_step_fn(config, device, args.strategy, c, g, b)
        row.update(run_preset(builders, config, mb, args.seq, args, device))
        reference = row.get("reference", {})
        for impl in impls:
            if impl != "reference" and "tokens_per_s_per_gpu" in reference and "tokens_per_s_per_gpu" in row[impl]:
                row[impl]["ratio"] = row[impl]["tokens_per_s_per_gpu"] / reference["tokens_per_s_per_gpu"]
                row[impl]["memory_ratio"] = row[impl]["peak_gib"] / reference["peak_gib"]
        for impl, scaling in scaling_against(row, single_gpu_rows).items():
            row[impl]["scaling"] = scaling
        rows.append(row)
        if rank == 0:
            print(json.dumps(row), flush=True)
            if args.json:  # after every preset: a later preset that fails leaves the earlier rows
                with open(args.json, "w") as handle:
                    json.dump(rows, handle, indent=2)
    if rank == 0:
        table = markdown_table(rows, impls)
        print("\n" + table)
        if args.markdown:
            with open(args.markdown, "a", encoding="utf-8") as handle:
                handle.write(markdown_entry(table, device_name(device), world))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
