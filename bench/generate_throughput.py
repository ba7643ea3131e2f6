"""Decode throughput: ``kotomamba.model.generation.generate`` vs mamba-ssm's ``generate(cg=True)``.

Same model (mamba-ssm's ``MambaLMHeadModel`` built from a preset, its weights copied into our
``MambaLM``: the state-dict keys are the same), same card, same dtype, greedy decoding of the same
prompt. For each batch size it times, after a warm-up call (which captures the CUDA graphs of both):

- ``total``: one whole ``generate`` call (prompt + ``--new-tokens`` tokens), best of ``--repeats``;
- ``prefill``: the prompt alone (ours: ``model.prefill``; theirs: ``generate`` of one token);
- ``ms/token`` = (total - prefill) / (new tokens - 1): the per-token decode cost;
- tokens/s = batch x new tokens / total.

It also reports how long reading every weight once takes at the card's nominal HBM bandwidth
(the floor for batch-1 decoding) and how many greedy tokens agree between the two (bf16 results
may part after many steps).

    python bench/generate_throughput.py --preset mamba-1.4b --batch 1 64 --json out.json
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from kotomamba.model import MambaLM, preset
from kotomamba.model.generation import generate

# Nominal HBM bandwidth (bytes/s) by card name substring.
HBM_BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12}


def mamba_ssm_model(name: str, dtype: torch.dtype):
    from mamba_ssm.models.config_mamba import MambaConfig as UpstreamConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    config = preset(name)
    torch.manual_seed(0)
    theirs = MambaLMHeadModel(UpstreamConfig(**config.to_dict()), device="cuda", dtype=dtype).eval()
    ours = MambaLM(config, device="meta", dtype=dtype)
    ours.to_empty(device="cuda")
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours.eval()


def timed(fn, repeats: int) -> tuple[float, object]:
    """Best wall time of ``fn()`` over ``repeats`` calls (CUDA synchronised), and its last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, result


def bench_batch(theirs, ours, batch: int, prompt_len: int, new_tokens: int, repeats: int) -> dict:
    vocab = ours.config.vocab_size
    prompt = torch.randint(0, vocab, (batch, prompt_len), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    total_len = prompt_len + new_tokens

    def run_theirs(length=total_len):
        return theirs.generate(prompt, max_length=length, top_k=1, cg=True, vocab_size=vocab)

    def run_ours():
        return generate(ours, prompt, new_tokens, temperature=0.0, cuda_graph=True)

    def prefill_ours():
        cache = ours.allocate_inference_cache(batch, total_len)
        return ours.prefill(prompt, cache)

    with torch.inference_mode():
        run_theirs(), run_ours()  # warm-up: CUDA graphs, Triton autotuning
        theirs_total, theirs_out = timed(run_theirs, repeats)
        ours_total, ours_out = timed(run_ours, repeats)
        theirs_prefill, _ = timed(lambda: run_theirs(prompt_len + 1), repeats)
        ours_prefill, _ = timed(prefill_ours, repeats)
    agree = (theirs_out[:, prompt_len:] == ours_out[:, prompt_len:]).int().cumprod(dim=1).sum(dim=1)
    row = {"batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens}
    for name, total, prefill in (("mamba_ssm", theirs_total, theirs_prefill), ("kotomamba", ours_total, ours_prefill)):
        row[name] = {"total_s": total, "prefill_s": prefill,
                     "ms_per_token": 1e3 * (total - prefill) / (new_tokens - 1),
                     "tokens_per_s": batch * new_tokens / total}
    row["speedup_decode"] = row["mamba_ssm"]["ms_per_token"] / row["kotomamba"]["ms_per_token"]
    row["greedy_tokens_agreeing_min"] = int(agree.min())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="mamba-1.4b")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    theirs, ours = mamba_ssm_model(args.preset, dtype)
    card = torch.cuda.get_device_name()
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    bandwidth = next((bw for key, bw in HBM_BANDWIDTH.items() if key in card), None)
    import mamba_ssm

    result = {"card": card, "preset": args.preset, "dtype": args.dtype, "torch": torch.__version__,
              "mamba_ssm": mamba_ssm.__version__, "python": platform.python_version(),
              "weight_bytes": weight_bytes,
              "weights_read_ms": 1e3 * weight_bytes / bandwidth if bandwidth else None, "rows": []}
    for batch in args.batch:
        row = bench_batch(theirs, ours, batch, args.prompt_len, args.new_tokens, args.repeats)
        result["rows"].append(row)
        print(f"batch {batch:3d}: mamba-ssm {row['mamba_ssm']['ms_per_token']:.3f} ms/token "
              f"({row['mamba_ssm']['tokens_per_s']:.0f} tok/s), kotomamba {row['kotomamba']['ms_per_token']:.3f} "
              f"ms/token ({row['kotomamba']['tokens_per_s']:.0f} tok/s), decode speedup "
              f"{row['speedup_decode']:.2f}x, greedy agreement >= {row['greedy_tokens_agreeing_min']} tokens",
              flush=True)
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
