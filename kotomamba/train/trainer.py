"""The training loop: FSDP2 or replicated model, AdamW, schedule, eval, checkpoints, signals around the
training step.

One optimizer step (``kotomamba.train.step``: accumulation, the gradients' averaging over ranks through
``grad_sync``, clipping, skip rules) consumes ``global_batch_size`` consecutive samples of the (fixed,
global) sample order, split over ranks and micro-batches by ``MicroBatchSampler``; the run's counters
live in ``kotomamba.train.train_state``, which a checkpoint saves whole. Exit codes: 0 done (or segment
done), 1 aborted after too many non-finite steps (a checkpoint is written first), 75 checkpointed on
SIGTERM / SIGUSR1 or the wall-time budget: requeue.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.distributed as dist

from kotomamba.errors import ReportedByRankZero, UserError
from kotomamba.io import atomic_write, write_json
from kotomamba.train.checkpoint import CheckpointManager, checkpoint_keys
from kotomamba.train.config import TrainConfig, accumulation_steps, dump_config
from kotomamba.train.distributed import apply_node_env, build_mesh, detect_launch_env, init_distributed
from kotomamba.train.banner import StartFacts, start_lines, time_left
from kotomamba.train.flops import peak_flops, training_flops_per_token
from kotomamba.train.integrity import integrity_digest
from kotomamba.train.job_log import record_job_start
from kotomamba.train.loss_scale import LossScale
from kotomamba.train.metrics import MetricsSink, memory_stats
from kotomamba.train.optim import build_optimizer
from kotomamba.train.parallelize import (check_sharding, choose_data_parallel, gradient_sync, parallelize,
                                         resolve_precision)
from kotomamba.train.run_dir import RunDir, read_model_config
from kotomamba.train.run_lock import RunLock
from kotomamba.train.schedules import LRSchedule
from kotomamba.train.start_plan import StartPlan, carry_out, plan_start
from kotomamba.train.step import TrainStep, on_device, perplexity
from kotomamba.train.step_choice import choose_step
from kotomamba.train.stop_signals import EXIT_REQUEUE, StopSignals
from kotomamba.train.train_state import TrainState

EXIT_ABORTED = 1


# The clock of the wall-time budget (a module attribute, so a test can drive the budget by a clock of its own).
budget_clock = time.monotonic


class Trainer:
    def __init__(self, config: TrainConfig, resume: str, stop: StopSignals):
        # The wall-time budget counts from here: start-up (process group, data indices, model) is
        # part of the job's time too.
        self.started = budget_clock()
        self.config = config
        self.stop = stop
        self.launch = detect_launch_env()
        apply_node_env(config.env)
        if torch.cuda.is_available():
            self.device = torch.device("cuda", self.launch.local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        init_distributed(self.launch, self.device.type)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        # Every rank's generators start from the seed (rank 0's are seeded again for the initial weights).
        torch.manual_seed(config.seed + self.rank)
        self.precision = resolve_precision(config.precision, self.device.type)
        self.accum = accumulation_steps(config.train, self.world)
        # What the world size makes impossible is refused before the run directory changes.
        check_sharding(self.device.type, self.world)
        # Graphed or eager (and ``parallel.cuda_graph: true`` refused where it cannot run): what the config
        # settles is checked now; under ``parallel.data_parallel: auto`` the model's size settles the rest.
        self.step_choice = choose_step(config, self.device.type, self.world,
                                       replicated=config.parallel.data_parallel != "fsdp")
        parallel = config.parallel
        self.mesh = build_mesh(self.device.type, self.world, parallel.strategy, parallel.hybrid_shard_size)
        self.shard_group = self.mesh["shard"].get_group() if parallel.strategy == "HYBRID_SHARD" else dist.group.WORLD
        self.run_dir = Path(config.run_dir)
        self.paths = RunDir(self.run_dir)
        self.plan = self._on_rank_zero(lambda: self._plan_start(resume))
        self.resume_from = self.plan.resume_from
        # The step of the newest checkpoint this job wrote or resumed from (None: none yet), and how long
        # the last save took (the wall-time budget keeps room for one more).
        self.last_saved: int | None = None
        self.save_seconds = 0.0
        if not self.plan.finished:
            # Everything that can fail on the user's input (the data split, the datasets, the model and its
            # initial weights, the resumed checkpoint and its position in the new run) before the run
            # directory changes: an error leaves the earlier run as it was, never superseded.
            self._build_data()
            self._build_model()
            if self.resume_from is not None:
                self._load(self.resume_from)
        self._on_rank_zero(self._carry_out_plan)
        self.checkpoints = CheckpointManager(self.run_dir, config.checkpoint.keep_last, config.checkpoint.async_)
        if resume not in ("auto", "never") and self.resume_from is not None:
            self.checkpoints.protected = self.resume_from.name  # what the user rolled back to stays

    # ----------------------------------------------------------------------------------- setup
    def _on_rank_zero(self, work):
        """``work()`` on rank 0 (inside the stop signals' critical section); every rank gets its result (or rank
        0's error), so no rank decides from its own view of the run directory."""
        outcome: list = [None]
        failure = None
        if self.rank == 0:
            try:
                with self.stop.critical():
                    outcome[0] = work()
            except UserError as exc:
                outcome[0] = exc
            except Exception as exc:  # the other ranks must not wait for a plan that will not come
                failure, outcome[0] = exc, RuntimeError(f"rank 0 could not prepare {self.run_dir}: {exc!r}")
        dist.broadcast_object_list(outcome, src=0)
        if failure is not None:
            raise failure
        if isinstance(outcome[0], UserError) and self.rank != 0:
            raise ReportedByRankZero(str(outcome[0]))
        if isinstance(outcome[0], Exception):
            raise outcome[0]
        return outcome[0]

    def _plan_start(self, resume: str) -> StartPlan:
        """Rank 0: lock, validate the config's sources, plan the start (the run directory is only read)."""
        from kotomamba.train.build import check_sources
        from kotomamba.train.identity import stage_identity

        try:
            self.paths.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{self.paths.root}: cannot create the run directory ({exc.strerror or exc})") from None
        # Held until this process ends; the kernel releases it however the process ends.
        self.lock = RunLock(self.paths.lock).acquire()
        check_sources(self.config)
        self.identity = stage_identity(self.config, self.precision, self.world)
        plan = plan_start(self.paths, self.identity, resume, self.config)
        if resume not in ("auto", "never") and self.config.init.from_ is None:
            self._check_resumed_model(plan.resume_from)
        return plan

    def _check_resumed_model(self, checkpoint: Path) -> None:
        """Rank 0: ``--resume DIR`` trains the checkpoint's model; refuse one that is not the configured model."""
        from kotomamba.data.tokenizer import build_tokenizer
        from kotomamba.train.build import configured_model

        tokenizer = build_tokenizer(self.config.data.tokenizer_type, self.config.data.tokenizer_model)
        configured = configured_model(self.config, tokenizer.vocab_size).to_dict()
        found = read_model_config(checkpoint).to_dict()
        differ = [f"model.{key}: {found.get(key)!r} there, {configured.get(key)!r} configured"
                  for key in sorted(configured.keys() | found.keys()) if configured.get(key) != found.get(key)]
        if differ:
            raise UserError(f"--resume {checkpoint}: its model is not the configured one ({'; '.join(differ)}); "
                            "resume a checkpoint of this model, or configure the checkpoint's")

    def _carry_out_plan(self) -> None:
        """Rank 0, once the run is known to start (its data, model and resumed state built): change the run
        directory to match the plan."""
        carry_out(self.paths, self.plan, self.identity)
        if not self.plan.finished:
            record_job_start(self.paths, self.plan.resume_from, self.world)

    def _build_data(self) -> None:
        from kotomamba.data.gpt_dataset import build_gpt_datasets, short_of_a_sample
        from kotomamba.data.tokenizer import build_tokenizer

        c = self.config
        self.tokenizer = build_tokenizer(c.data.tokenizer_type, c.data.tokenizer_model)
        g = c.train.global_batch_size
        cache = c.data.cache_dir or str(self.run_dir / "index_cache")
        # Rank 0 builds (and caches) the sample indices first; the others then read the cache.
        for turn in (0, 1):
            if (self.rank == 0) == (turn == 0):
                self.train_set, self.valid_set, _ = build_gpt_datasets(
                    c.data.data_path, c.data.split, c.data.seq_length, c.seed,
                    (c.train.steps * g, c.eval.steps * g if c.eval.reads_valid_split else 0, 0), cache,
                    c.data.reset_at_eod,
                )
            dist.barrier()
        # A split of fewer tokens than one sample makes every sample the same few documents, repeated: trained on,
        # a run that learns that text by heart (refused, before the run directory changes); evaluated on, a
        # val_loss that measures copying from earlier in the sample (said once, in the log).
        change = f"data.split ({c.data.split!r}) or a shorter data.seq_length"
        short = short_of_a_sample(self.train_set)
        if short:
            raise (UserError if self.rank == 0 else ReportedByRankZero)(
                f"{'; '.join(short)}: every sample would repeat the same documents; add documents, or give the "
                f"train split a larger share by {change}")
        if self.rank == 0:
            for line in short_of_a_sample(self.valid_set):
                print(f"kotomamba train: warning: {line}: every sample repeats the same documents, so val_loss says "
                      f"little; give the valid split a larger share by {change}", flush=True)

    def _build_model(self) -> None:
        from kotomamba.model.config import MambaConfig
        from kotomamba.model.lm import MambaLM
        from kotomamba.train.build import source_model_and_state

        c = self.config
        payload = [None, None]
        if self.rank == 0 and self.resume_from is None:
            payload = list(source_model_and_state(c, self.tokenizer.vocab_size, self.device))
        elif self.rank == 0:
            payload[0] = read_model_config(self.resume_from)
        holder = [payload[0].to_dict() if self.rank == 0 else None]
        dist.broadcast_object_list(holder, src=0)
        self.model_config = MambaConfig.from_dict(holder[0])
        master = torch.bfloat16 if c.optim.master_dtype == "bf16" else torch.float32
        model = MambaLM(self.model_config, device="meta", dtype=master)
        memory = torch.cuda.get_device_properties(self.device).total_memory if self.device.type == "cuda" else None
        self.data_parallel = choose_data_parallel(c.parallel.data_parallel, self.world, self.device.type,
                                                  sum(p.numel() for p in model.parameters()), c.optim.master_dtype,
                                                  memory)
        replicated = self.data_parallel.kind == "replicate"
        self.step_choice = choose_step(c, self.device.type, self.world, replicated=replicated)
        if replicated:
            self.shard_group = None  # every rank holds all of the weights: optimizer statistics need no reduction
        precision = "fp32" if master != torch.float32 else self.precision
        parallelize(model, self.mesh, c.parallel.strategy, precision, c.parallel.activation_checkpointing,
                    c.parallel.activation_checkpointing_interval, c.parallel.compile, replicate=replicated)
        model.to_empty(device=self.device)
        if self.resume_from is None:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            full = payload[1] if self.rank == 0 else {}
            if self.rank == 0:
                full = {k: v.to(device=self.device, dtype=master) for k, v in full.items()}
            set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        self.model = model
        self.optimizer = build_optimizer(model, c.optim.lr, c.optim.weight_decay, c.optim.betas, c.optim.eps,
                                         c.optim.no_decay)
        decay = c.schedule.decay_steps if c.schedule.decay_steps is not None else c.train.steps
        self.schedule = LRSchedule(c.optim.lr, c.optim.min_lr, c.schedule.warmup_steps, decay, c.schedule.style,
                                   c.schedule.wsd_decay_fraction)
        loss_scale = None
        if self.precision == "fp16" and master == torch.float32:
            loss_scale = LossScale(scale=c.loss_scale.initial, growth_interval=c.loss_scale.growth_interval)
        self.state = TrainState(self.rank, self.world, self.device, loss_scale)
        grad_sync = gradient_sync(model, [p for p in model.parameters() if p.requires_grad], self.data_parallel,
                                  c.parallel.strategy, graphed=self.step_choice.graphed)
        self.train_step = TrainStep(model, self.optimizer, self.accum, c.train.grad_clip, loss_scale,
                                    graphed=self.step_choice.graphed, grad_sync=grad_sync, stats_group=self.shard_group)
        self.flops_per_token = training_flops_per_token(self.model_config, c.data.seq_length)
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        self.peak = peak_flops(name, self.precision)
        self.device_name = name

    def _state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        return {"model": model_sd, "optim": optim_sd, "scheduler": {"last_step": self.state.step},
                "train_state": self.state.state_dict()}

    def _load(self, path: Path) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        state = self._state()
        state["train_state"] = self.state.load_template(checkpoint_keys(path))
        CheckpointManager.load(path, state)
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        self.state.load_state_dict(state["train_state"])
        self.last_saved = self.state.step
        t = self.config.train
        if self.state.step > t.steps or self.state.consumed_samples > len(self.train_set):
            raise (UserError if self.rank == 0 else ReportedByRankZero)(
                f"{path}: this checkpoint is at step {self.state.step} ({self.state.consumed_samples} samples "
                f"consumed), past the end of this run (train.steps {t.steps}, "
                f"{t.steps * t.global_batch_size} samples); raise train.steps or resume an earlier checkpoint")

    def _start_facts(self) -> StartFacts:
        c, m = self.config, self.model_config
        device = self.device.type if self.device.type == "cpu" else f"{self.device.type} ({self.device_name})"
        return StartFacts(
            layer=m.layer.lower(), parameters=sum(p.numel() for p in self.model.parameters()), n_layer=m.n_layer,
            d_model=m.d_model, vocab_size=m.vocab_size, world=self.world,
            nodes=-(-self.world // self.launch.local_world_size), device=device, precision=self.precision,
            step_kind=self.step_choice.outcome,
            global_batch=c.train.global_batch_size, seq_length=c.data.seq_length,
            micro_batch=c.train.micro_batch_size, accumulation=self.accum, steps=c.train.steps,
            start_step=self.state.step, resumed_from=self.resume_from,
        )

    def _write_run_record(self) -> None:
        from kotomamba.data.gpt_dataset import parse_data_path
        from kotomamba.manifest import build_manifest

        c = self.config
        with atomic_write(self.paths.config) as handle:
            handle.write(dump_config(c))
        write_json(self.paths.model_config, self.model_config.to_dict())
        prefixes = [prefix for _, prefix in parse_data_path(c.data.data_path)]
        inputs = [f"{p}.idx" for p in prefixes] + [c.data.tokenizer_model]
        write_json(self.paths.manifest, build_manifest(
            inputs, data_bin_bytes={f"{p}.bin": Path(f"{p}.bin").stat().st_size for p in prefixes},
            world_size=self.world, launcher=self.launch.launcher, seed=c.seed, precision=self.precision,
            device=self.device_name, resumed_from=str(self.resume_from) if self.resume_from else None,
            train_step="cuda_graph" if self.step_choice.graphed else "eager", data_parallel=self.data_parallel.kind,
        ))

    # ------------------------------------------------------------------------------------ loop
    def _batches(self, dataset, consumed: int):
        from kotomamba.data.sampler import MicroBatchSampler

        sampler = MicroBatchSampler(len(dataset), consumed, self.config.train.micro_batch_size, self.rank, self.world)
        # A generator of its own: every iterator draws a seed from it, and the global generator's state is
        # checkpointed, so drawing from that one would make a resumed job's (one iterator more than an
        # uninterrupted run) differ from the uninterrupted run's.
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=0,
                                             pin_memory=self.device.type == "cuda", generator=torch.Generator())
        return iter(loader)

    def _forward_loss(self, batch) -> torch.Tensor:
        tokens, seq_idx = on_device(batch, self.device)
        return self.model(tokens[:, :-1], labels=tokens[:, 1:], seq_idx=seq_idx)

    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        batches = self._batches(self.valid_set, 0)
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        count = self.config.eval.steps * self.accum
        for _ in range(count):
            total += self._forward_loss(next(batches)).double()
        dist.all_reduce(total)
        self.model.train()
        return float(total) / (count * self.world)

    def _save(self) -> None:
        began = time.perf_counter()
        self.checkpoints.save(self.state.step, self._state())
        self.save_seconds = time.perf_counter() - began
        self.last_saved = self.state.step

    def run(self) -> int:
        c, t = self.config, self.config.train
        if self.plan.finished:
            if self.rank == 0:
                print(f"kotomamba train: {self.paths.final} records this run as complete (same identity); "
                      "nothing to do", flush=True)
            return 0
        state = self.state
        if self.rank == 0:
            self._write_run_record()
            print(f"kotomamba train: {self.data_parallel.log_line()}", flush=True)
            print(f"kotomamba train: {self.step_choice.log_line()}", flush=True)
        sink = self._sink() if self.rank == 0 else None
        if self.rank == 0:
            for line in start_lines(self._start_facts()):
                print(f"kotomamba train: {line}", flush=True)
        holder = [state.tracker_id]
        dist.broadcast_object_list(holder, src=0)
        state.tracker_id = holder[0]
        job_start_step = state.step
        batches = self._batches(self.train_set, state.consumed_samples)
        tokens_per_step = t.global_batch_size * c.data.seq_length
        window_start, window_steps, max_step_seconds = time.perf_counter(), 0, 0.0
        exit_code, val_loss = 0, None
        self.model.train()
        self.stop.training()
        try:
            while state.step < t.steps:
                step_began = time.perf_counter()
                log_now = (state.step + 1) % c.logging.interval == 0 or state.step + 1 == t.steps
                record = self._train_step(batches, log_now)
                window_steps += 1
                max_step_seconds = max(max_step_seconds, time.perf_counter() - step_began)
                self.checkpoints.poll()
                if sink is not None:
                    sink.advance()
                if log_now and sink is not None:
                    elapsed = time.perf_counter() - window_start
                    tokens_per_s = window_steps * tokens_per_step / elapsed
                    tflops = self.flops_per_token * tokens_per_s / self.world / 1e12
                    record.update({
                        "step": state.step, "lr": self.schedule.lr_at(state.step - 1),
                        "consumed_samples": state.consumed_samples,
                        "tokens": state.consumed_samples * c.data.seq_length, "tokens_per_s": tokens_per_s,
                        "tokens_per_s_per_gpu": tokens_per_s / self.world, "tflops": tflops,
                        "mfu": tflops * 1e12 / self.peak if self.peak else None,
                        "skipped_nonfinite": state.skipped_nonfinite, "skipped_overflow": state.skipped_overflow,
                        "skipped_range": state.skipped_range, **memory_stats(self.device),
                        "eta_s": time_left(t.steps - state.step, window_steps, elapsed),
                    })
                    if state.loss_scale is not None:
                        record["loss_scale"] = state.loss_scale.scale
                    sink.log(record)
                if log_now:
                    window_start, window_steps = time.perf_counter(), 0
                if c.eval.interval and state.step % c.eval.interval == 0 and state.step < t.steps:
                    val_loss = self.evaluate()
                    if sink is not None:
                        sink.log({"step": state.step, "val_loss": val_loss, "val_ppl": perplexity(val_loss)})
                if state.consecutive_nonfinite >= t.max_consecutive_nonfinite:
                    self._save()
                    if self.rank == 0:
                        print(f"kotomamba train: {state.consecutive_nonfinite} consecutive steps with a non-finite "
                              f"loss or gradient at step {state.step}; checkpoint written, aborting", flush=True)
                    exit_code = EXIT_ABORTED
                    break
                if c.checkpoint.interval and state.step % c.checkpoint.interval == 0:
                    self._save()
                # After the last step the stage finishes rather than leave that to another job.
                stop = self._stop_reason(max_step_seconds, job_start_step) if state.step < t.steps else None
                if stop is not None:
                    why, exit_code = stop
                    if self.last_saved != state.step:
                        self._save()
                    if self.rank == 0 and exit_code == EXIT_REQUEUE:
                        print(f"kotomamba train: stopping at step {state.step} ({why}); checkpoint written, "
                              f"exit {EXIT_REQUEUE} (requeue)", flush=True)
                    break
            else:
                exit_code = self._finish(sink, val_loss)
            self.checkpoints.wait()
        finally:
            if sink is not None:
                sink.close()
        return exit_code

    def _finish(self, sink, val_loss) -> int:
        c, state = self.config, self.state
        if self.last_saved != state.step:
            self._save()
        self.checkpoints.wait()
        if c.eval.final and c.eval.steps > 0:
            val_loss = self.evaluate()
            if sink is not None:
                sink.log({"step": state.step, "val_loss": val_loss, "val_ppl": perplexity(val_loss)})
        if self.rank == 0:
            latest = self.checkpoints.latest()
            write_json(self.paths.final, {
                "step": state.step, "checkpoint": str(latest.relative_to(self.run_dir)) if latest else None,
                "tokens": state.consumed_samples * c.data.seq_length, "consumed_samples": state.consumed_samples,
                "val_loss": val_loss, "skipped_nonfinite": state.skipped_nonfinite,
                "skipped_range": state.skipped_range, "world_size": self.world,
                "identity": self.identity["digest"],
                # The weights' own identity: what depends on this run reruns exactly when they changed.
                "weights": integrity_digest(latest) if latest else None,
            })
        dist.barrier()
        return 0

    def _stop_reason(self, max_step_seconds: float, job_start_step: int) -> tuple[str, int] | None:
        """Why this job stops before the stage's last step, with its exit code, or None to go on: a signal
        or the wall-time budget (requeue), else ``train.max_steps_this_job`` steps done (0)."""
        stop = self._should_stop(max_step_seconds)
        if stop:
            return stop, EXIT_REQUEUE
        limit = self.config.train.max_steps_this_job
        if limit is not None and self.state.step - job_start_step >= limit:
            return "train.max_steps_this_job", 0
        return None

    def _should_stop(self, max_step_seconds: float) -> str | None:
        """Agree over all ranks whether to stop now (a signal reached any rank, or the budget is spent)."""
        budget = self.config.train.wall_time_budget_s
        out_of_time = budget is not None and (
            budget_clock() - self.started + 2 * max_step_seconds + 2 * self.save_seconds > budget)
        flags = torch.tensor([float(self.stop.signum is not None), float(out_of_time)], device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if flags[0] > 0:
            return "signal"
        if flags[1] > 0:
            return "wall-time budget"
        return None

    def _train_step(self, batches, log_now: bool) -> dict:
        """One optimizer step (or a skipped one), counted in ``self.state``; returns the step's metrics."""
        step = self.state.step
        self.train_step.set_lr(self.schedule.lr_at(step))
        # Step numbers are 1-based as logged: ``train.skip_ranges`` names the steps the log shows.
        if any(start <= step + 1 <= end for start, end in self.config.train.skip_ranges):
            outcome = self.train_step.skip(batches)
        else:
            outcome = self.train_step(batches, log_stats=log_now)
        self.state.advance(outcome.kind, self.config.train.global_batch_size)
        return outcome.record

    def _sink(self) -> MetricsSink:
        from kotomamba.train.trackers import TensorBoardTracker, WandbTracker

        c = self.config
        trackers = []
        if c.logging.wandb.mode != "disabled":
            w = c.logging.wandb
            tracker = WandbTracker(self.run_dir, w.mode, w.project, w.entity, w.name, self.state.tracker_id, c.to_dict())
            self.state.tracker_id = tracker.run_id
            trackers.append(tracker)
        if c.logging.tensorboard:
            trackers.append(TensorBoardTracker(self.run_dir))
        return MetricsSink(self.run_dir, c.train.steps, self.state.step, trackers)
