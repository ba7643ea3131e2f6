"""GPU tier of issue 22 item 1: replicated data parallelism with CUDA-graphed micro-steps.

One GPU: the captured backward accumulates into the all-reduce buckets' views (``grad_sync``), and an eager
backward launches NCCL all-reduces from its post-accumulate-grad hooks; both give the eager gradients.
Two GPUs (skipped with fewer): ``kotomamba train`` under torchrun chooses replicate and the graphed step by
itself (``parallel.data_parallel: auto``), trains as FSDP2 does in fp32, and resumes an FSDP2 checkpoint.

Run on a machine with CUDA GPUs: ``pytest -m gpu tests/gpu/test_gpu_replicate.py``.
"""
from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist

from kotomamba.model import MambaLM, preset
from kotomamba.train.cuda_graph import GraphedMicroStep, micro_step
from kotomamba.train.grad_sync import ReplicatedGradients
from train_helpers import final_weights, losses, run_train, write_config

pytestmark = pytest.mark.gpu

MICRO, STEPS, BATCH, SEQ = 2, 4, 4, 256


@pytest.fixture(scope="module")
def nccl():
    if not dist.is_initialized():
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda", 0))
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("graphed", [True, False])
def test_replicated_buckets_hold_the_eager_gradients(nccl, graphed):
    torch.manual_seed(0)
    reference = MambaLM(preset("mamba2-130m", n_layer=4), device="cuda", dtype=torch.float32)
    model = copy.deepcopy(reference)
    params = [p for p in model.parameters() if p.requires_grad]
    sync = ReplicatedGradients(params, overlap=not graphed)
    step = GraphedMicroStep(model, params, 1.0 / MICRO) if graphed else None
    vocab = reference.config.vocab_size
    generator = torch.Generator().manual_seed(1)
    for _ in range(STEPS):  # warm-up, capture and replays when graphed
        batches = [torch.randint(0, vocab, (BATCH, SEQ + 1), generator=generator).cuda() for _ in range(MICRO)]
        for micro, tokens in enumerate(batches):
            sync.begin_micro_step(micro == MICRO - 1)
            if step is not None:
                step(tokens, None)
            else:
                micro_step(model, tokens, None, 1.0 / MICRO)
            micro_step(reference, tokens, None, 1.0 / MICRO)
        sync.finish()
        for (name, p), q in zip(reference.named_parameters(), model.parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)
        for p, q in zip(reference.parameters(), model.parameters()):
            p.grad = None
            q.grad.zero_()  # in place: the views stay the buckets'
    assert len(sync.buckets) > 1


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_two_gpus_replicate_graphed_and_train_as_fsdp(tmp_path):
    def config(name, data_parallel, **train):
        return write_config(tmp_path, tmp_path / name, precision="fp32", eval={"interval": 0},
                            model={"d_model": 64},
                            train={"micro_batch_size": 2, "global_batch_size": 8, "steps": 8, **train},
                            parallel={"data_parallel": data_parallel})

    auto = run_train(config("auto", "auto"), nproc=2)
    assert "data parallel: replicate (parallel.data_parallel: auto; 2 processes; " in auto.stdout, auto.stdout
    assert "training step: CUDA-graphed (parallel.cuda_graph: auto; 2 processes, each replicating" in auto.stdout
    fsdp = run_train(config("fsdp", "fsdp"), nproc=2)
    assert "training step: eager" in fsdp.stdout
    mixed = config("fsdp_then_auto", "fsdp", max_steps_this_job=4)
    run_train(mixed, nproc=2)
    resumed = run_train(mixed, "train.max_steps_this_job=null", "parallel.data_parallel=auto", nproc=2)
    assert "resumed from step 4" in resumed.stdout and "CUDA-graphed" in resumed.stdout
    reference = losses(tmp_path / "fsdp")
    # fp32 everywhere; mamba-ssm's backward kernels accumulate with atomics, so runs differ in late bits.
    for name in ("auto", "fsdp_then_auto"):
        got = losses(tmp_path / name)
        assert sorted(got) == list(range(1, 9))
        for step_number, loss in got.items():
            assert loss == pytest.approx(reference[step_number], rel=1e-3), (name, step_number)
        weights = final_weights(tmp_path / name)
        for key, value in final_weights(tmp_path / "fsdp").items():
            torch.testing.assert_close(weights[key], value, rtol=1e-3, atol=1e-4, msg=(name, key))
