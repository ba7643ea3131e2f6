"""The language-model loss alone: kotomamba's chunked cross-entropy against the reference's, same card, same run.

Reference (a): what mamba-ssm's training loop does after the last norm, under bf16 autocast:
``logits = hidden @ weight.T`` over the whole micro-batch, ``F.cross_entropy(logits.float(), labels)``,
backward. kotomamba (b): ``chunked_cross_entropy`` (``kotomamba.ops.cross_entropy``: the LM head chunk
by chunk, loss and gradients in one pass; on CUDA each chunk's softmax and gradient in one Triton
kernel). Both get bf16 hidden states (as the backbone hands them over) and the fp32 master weight.
Prints forward+backward milliseconds (median, CUDA events), peak memory above the inputs, the ratios.

    python bench/cross_entropy_throughput.py --d-model 768,1024,2048 --tokens 32768 --json out.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from kotomamba.ops.cross_entropy import chunked_cross_entropy


def reference_loss(hidden, weight, labels):
    logits = hidden @ weight.t()
    return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels)


def kotomamba_loss(hidden, weight, labels):
    return chunked_cross_entropy(hidden, weight, labels)


def measure(loss_fn, hidden, weight, labels, warmup: int, steps: int, device) -> dict:
    """Median forward+backward time (ms) and the peak memory it adds (GiB)."""
    cuda = device.type == "cuda"

    def step():
        hidden.grad = weight.grad = None
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = loss_fn(hidden, weight, labels)
        loss.backward()
        return loss

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            loss = step()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        else:
            began = time.perf_counter()
            loss = step()
            times.append((time.perf_counter() - began) * 1e3)
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**30 if cuda else float("nan")
    return {"ms": statistics.median(times), "peak_gib": peak, "loss": loss.item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d-model", default="768,1024,2048", help="hidden sizes (130m, 370m, 1.3b presets)")
    parser.add_argument("--tokens", type=int, default=32768, help="tokens per micro-batch (16 x 2048)")
    parser.add_argument("--vocab", type=int, default=50288, help="padded vocabulary (GPT-NeoX's, as the presets)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    device = torch.device(args.device)
    rows = []
    for d_model in (int(v) for v in args.d_model.split(",")):
        generator = torch.Generator(device=device).manual_seed(d_model)
        hidden = torch.randn(args.tokens, d_model, device=device, generator=generator).bfloat16().requires_grad_()
        weight = (torch.randn(args.vocab, d_model, device=device, generator=generator) * 0.02).requires_grad_()
        labels = torch.randint(0, args.vocab - 11, (args.tokens,), device=device, generator=generator)
        row = {"d_model": d_model, "tokens": args.tokens, "vocab": args.vocab,
               "card": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
        for name, loss_fn in (("reference", reference_loss), ("kotomamba", kotomamba_loss)):
            row[name] = measure(loss_fn, hidden, weight, labels, args.warmup, args.steps, device)
        row["speedup"] = row["reference"]["ms"] / row["kotomamba"]["ms"]
        row["memory_ratio"] = row["kotomamba"]["peak_gib"] / row["reference"]["peak_gib"]
        if abs(row["reference"]["loss"] - row["kotomamba"]["loss"]) > 1e-2 * abs(row["reference"]["loss"]):
            sys.exit(f"losses differ at d_model {d_model}: {row['reference']['loss']} vs {row['kotomamba']['loss']}")
        rows.append(row)
        print(f"d_model {d_model}: reference {row['reference']['ms']:.2f} ms, {row['reference']['peak_gib']:.2f} GiB; "
              f"kotomamba {row['kotomamba']['ms']:.2f} ms, {row['kotomamba']['peak_gib']:.2f} GiB; "
              f"speedup {row['speedup']:.2f}x, memory {row['memory_ratio']:.2f}", flush=True)
        del hidden, weight
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
