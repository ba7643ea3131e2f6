"""Issue 22 item 1: replicated data parallelism for models that fit on one GPU (``parallel.data_parallel``).

The rule ``auto`` applies, as a pure function; the bucketed all-reduce on two real gloo processes (launched
from the backward's hooks on the last micro-batch, or after it); and the trainer under torchrun: two
replicated processes train as two FSDP2 processes do, and a checkpoint of either resumes under the other.
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kotomamba.errors import UserError
from kotomamba.train.config import load_config
from kotomamba.train.grad_sync import ReplicatedGradients
from kotomamba.train.identity import comparable_config
from kotomamba.train.parallelize import REPLICATE_SHARE, STATE_BYTES, choose_data_parallel
from kotomamba.train.step_choice import choose_step
from train_helpers import final_weights, losses, needs_cpu_sharding, run_train, write_config

GIB = 2**30


# --------------------------------------------------------------------------------- the rule of auto
def test_auto_replicates_what_fits_in_a_quarter_of_one_gpu():
    h200 = 141 * GIB
    fits = int(REPLICATE_SHARE * h200 / STATE_BYTES["fp32"])  # 2.2B parameters with fp32 master weights
    choice = choose_data_parallel("auto", 2, "cuda", fits, "fp32", h200)
    assert choice.kind == "replicate" and "within 25% of one GPU's 141 GiB" in choice.reason
    assert choose_data_parallel("auto", 2, "cuda", fits + 1, "fp32", h200).kind == "fsdp"
    # bf16 master weights and moments take half the bytes: twice the parameters fit.
    assert choose_data_parallel("auto", 2, "cuda", 2 * fits, "bf16", h200).kind == "replicate"
    assert choose_data_parallel("auto", 8, "cuda", 130_000_000, "fp32", 80 * GIB).kind == "replicate"
    assert choose_data_parallel("auto", 8, "cuda", 2_800_000_000, "fp32", 80 * GIB).kind == "fsdp"


def test_auto_shards_on_cpu_and_explicit_settings_are_taken_as_written():
    assert choose_data_parallel("auto", 2, "cpu", 1000, "fp32", None).kind == "fsdp"
    assert choose_data_parallel("replicate", 2, "cuda", 10**10, "fp32", 80 * GIB).kind == "replicate"
    assert choose_data_parallel("fsdp", 2, "cuda", 1000, "fp32", 80 * GIB).kind == "fsdp"
    one = choose_data_parallel("replicate", 1, "cuda", 1000, "fp32", 80 * GIB)
    assert one.kind == "single"
    assert one.log_line() == "data parallel: single (parallel.data_parallel: replicate; one process)"


def test_several_replicas_run_graphed_and_several_shards_eager():
    config = load_config(None, [])
    graphed = choose_step(config, "cuda", 2, replicated=True)
    assert graphed.graphed
    assert graphed.reason == "parallel.cuda_graph: auto; 2 processes, each replicating the model on a CUDA GPU"
    eager = choose_step(config, "cuda", 2, replicated=False)
    assert not eager.graphed and "2 processes sharding with FSDP" in eager.reason
    with pytest.raises(UserError, match="cannot run here: 2 processes sharding with FSDP"):
        choose_step(load_config(None, ["parallel.cuda_graph=true"]), "cuda", 2, replicated=False)


def test_the_setting_is_checked_where_it_was_written(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("seed: 1\nparallel:\n  data_parallel: ddp\n")
    with pytest.raises(UserError, match=r"train.yaml:3: field 'parallel.data_parallel' must be one of "
                                        r"\['auto', 'fsdp', 'replicate'\], got 'ddp'"):
        load_config(path)
    assert load_config(None, []).parallel.data_parallel == "auto"


def test_the_setting_is_not_part_of_the_stage_identity():
    # A stage resumes under the other choice (same checkpoint format, same gradient mean), and runs whose
    # config predates the field keep their identity.
    a = comparable_config(load_config(None, ["parallel.data_parallel=replicate"]))
    assert a == comparable_config(load_config(None, ["parallel.data_parallel=fsdp"]))
    assert "data_parallel" not in a["parallel"]


# ------------------------------------------------------------------- the all-reduce, two gloo processes
def _replicas(rank: int, world: int, init: str, overlap: bool, queue) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)  # the same weights on both ranks
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16),
                                torch.nn.Tanh(), torch.nn.Linear(16, 1))
    params = list(model.parameters())
    # 64 bytes a bucket: the six parameters' gradients fill five buckets.
    sync = ReplicatedGradients(params, overlap=overlap, bucket_bytes=64)
    data = torch.randn(world, 2, 3, 8, generator=torch.Generator().manual_seed(1))  # [rank, micro, batch, in]
    launched = []
    for micro in range(2):
        sync.begin_micro_step(micro == 1)
        (model(data[rank, micro]).square().mean() / 2).backward()
        launched.append(sum(work is not None for work in sync.works))
    sync.finish()
    got = [p.grad.clone() for p in params]
    # The reference: the mean loss over every rank's micro-batches, on one process.
    for p in params:
        p.grad = None
    sum(model(data[r, m]).square().mean() for r in range(world) for m in range(2)).div(2 * world).backward()
    queue.put((rank, len(sync.buckets), launched,
               max((g - p.grad).abs().max().item() for g, p in zip(got, params))))
    dist.destroy_process_group()


@pytest.mark.parametrize("overlap", [True, False])
def test_replicated_gradients_are_the_mean_over_ranks(tmp_path, overlap):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [ctx.Process(target=_replicas, args=(rank, 2, init, overlap, queue)) for rank in range(2)]
    for proc in procs:
        proc.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    for rank, buckets, launched, error in results:
        assert buckets == 5
        # Nothing is reduced after the first micro-batch; with overlap every bucket is launched from the hooks
        # of the last one's backward, before finish(); without, only finish() launches them.
        assert launched == ([0, buckets] if overlap else [0, 0]), (rank, launched)
        assert error < 1e-6, (rank, error)


# --------------------------------------------------------------------------- the trainer under torchrun
def _config(tmp_path, name, data_parallel, **sections):
    # 8 samples a step over 2 ranks of micro-batch 2: two micro-batches, so the hooks wait for the last one.
    return write_config(tmp_path, tmp_path / name, eval={"interval": 0},
                        train={"micro_batch_size": 2, "global_batch_size": 8, "steps": 8, **sections},
                        parallel={"data_parallel": data_parallel})


@pytest.mark.slow
@needs_cpu_sharding
def test_two_replicas_train_as_two_fsdp_shards(tmp_path):
    fsdp = run_train(_config(tmp_path, "fsdp", "fsdp"), nproc=2)
    replicated = run_train(_config(tmp_path, "replicate", "replicate"), nproc=2)
    assert "data parallel: fsdp (parallel.data_parallel: fsdp; 2 processes)" in fsdp.stdout
    assert "data parallel: replicate (parallel.data_parallel: replicate; 2 processes)" in replicated.stdout
    a, b = losses(tmp_path / "fsdp"), losses(tmp_path / "replicate")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    # float32 throughout; only the order of the gradient reductions differs (a reduce-scatter of per-block
    # gradients against an all-reduce of flat buckets), which moves the last bits of a loss.
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), step
    wa, wb = final_weights(tmp_path / "fsdp"), final_weights(tmp_path / "replicate")
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-4, atol=1e-5, msg=key)
    assert '"data_parallel": "replicate"' in (tmp_path / "replicate" / "manifest.json").read_text()


@pytest.mark.slow
@needs_cpu_sharding
def test_a_checkpoint_resumes_under_the_other_choice(tmp_path):
    straight = _config(tmp_path, "straight", "fsdp")
    run_train(straight, nproc=2)
    reference = losses(tmp_path / "straight")
    for first, then in (("fsdp", "replicate"), ("replicate", "fsdp")):
        name = f"{first}_then_{then}"
        config = _config(tmp_path, name, first, max_steps_this_job=4)
        run_train(config, nproc=2)
        resumed = run_train(config, "train.max_steps_this_job=null", f"parallel.data_parallel={then}", nproc=2)
        assert f"data parallel: {then} (parallel.data_parallel: {then}; 2 processes)" in resumed.stdout
        assert "resumed from step 4 (checkpoints/step_00000004): 4 steps to go" in resumed.stdout, resumed.stdout
        got = losses(tmp_path / name)
        assert sorted(got) == list(range(1, 9))
        for step in got:
            assert got[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), (name, step)
        final = final_weights(tmp_path / name)
        for key, value in final_weights(tmp_path / "straight").items():
            torch.testing.assert_close(final[key], value, rtol=1e-4, atol=1e-5, msg=(name, key))
