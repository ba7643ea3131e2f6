"""Decode throughput: ``kotomamba.model.generation.generate`` against mamba-ssm's ``generate(cg=True)``, each
implementation in a fresh process of its own (bench/isolated.py), over rounds.

Same weights in both (our ``MambaLM`` built from a preset with seed 0; the mamba-ssm child loads its state dict
into ``MambaLMHeadModel``: the keys are the same), same card, same dtype, greedy decoding of the same prompt.
Per child and batch size, after a warm-up call (which captures the CUDA graphs):

- ``total``: one whole ``generate`` call (prompt + ``--new-tokens`` tokens), best of ``--repeats``;
- ``prefill``: the prompt alone (ours: ``model.prefill``; theirs: ``generate`` of one token);
- ``ms/token`` = (total - prefill) / (new tokens - 1): the per-token decode cost, sampling included;
- tokens/s = batch x new tokens / total.

The parent prints the median over rounds with its range, the ratio against mamba-ssm (above 1: ours faster),
how long reading every weight once takes at ``--bandwidth`` (the floor of batch-1 decoding), and how many
leading greedy tokens the two children agree on (bf16 results may part after many steps). ``--profile``
prints each child's kernels for one whole call at the first batch size.

With ``--registers`` it times nothing: per ``generate:ours`` setting and batch size it compiles our decode step's
launches for the preset's layer (Mamba-2: mix, out; Mamba-1: conv, scan; at the preset's shapes, ``--dtype``) for
sm_90a on the host (no GPU needed) and prints what ptxas gives each (bench/ptxas_report.py).

    python bench/generate_throughput.py --preset mamba2-1.3b --batch 1 64 --json out.json
    python bench/generate_throughput.py --registers --batch 1 16 64 --impls generate:ours,generate:ours=OUT_ROWS:4
    python bench/generate_throughput.py --registers --preset mamba-1.4b --batch 1 16 64
"""
from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import time

from isolated import BANDWIDTH_HELP, TIME_LIMIT_HELP, floor_ms, median_range, profile_table, run_children

IMPLS = ("generate:mamba_ssm", "generate:ours")
# Settings of our decode kernels a generate:ours child may carry, per module that owns them.
SETTINGS = {
    "kotomamba.ops.mamba2_decode_triton":
        "(MIX_TILE|OUT_TILE|OUT_ROWS|DOT_ROWS|OUT_WARPS|OUT_STAGES|DOT_STAGES):[0-9]+",
    "kotomamba.ops.mamba1_decode_triton": "(CONV_CHANNELS|CONV_TILE|SCAN_TILE|SCAN_PROGRAMS|MAX_BATCH):[0-9]+",
}
SETTING = "|".join(SETTINGS.values())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="mamba2-1.3b")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per child and batch size (best kept)")
    parser.add_argument("--rounds", type=int, default=3, help="processes per implementation")
    parser.add_argument("--impls", default=",".join(IMPLS),
                        help="comma-separated, from " + ", ".join(IMPLS) + "; generate:ours may carry settings of the "
                        "decode kernels (kotomamba/ops/mamba2_decode_triton.py and mamba1_decode_triton.py: tiles, "
                        "powers of two), e.g. generate:ours=OUT_ROWS:4+DOT_ROWS:16 or generate:ours=CONV_CHANNELS:64")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--device", default="cuda", help="cpu runs generate:ours only (a check of the plumbing)")
    parser.add_argument("--bandwidth", type=float, default=None, help=BANDWIDTH_HELP)
    parser.add_argument("--profile", action="store_true", help="also print each child's kernels for one call")
    parser.add_argument("--registers", action="store_true",
                        help="time nothing: ptxas's registers per launch of our decode kernels (sm_90a, on the host)")
    parser.add_argument("--time-limit", type=float, default=None, help=TIME_LIMIT_HELP)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, help="also write the rows and the summary here")
    return parser


def apply_settings(settings: str) -> None:
    """Set the decode kernels' constants from ``NAME:VALUE+...`` (``generate:ours=``'s part; "" sets none), each in
    the module of :data:`SETTINGS` whose pattern it matches."""
    if not settings:
        return
    for setting in settings.split("+"):
        module = importlib.import_module(next(name for name, pattern in SETTINGS.items()
                                              if re.fullmatch(pattern, setting)))
        key, value = setting.split(":")
        setattr(module, key, int(value))


def setting_defaults() -> dict:
    """(module, name) -> the value it has now, for every setting of :data:`SETTINGS`."""
    return {(module, name): getattr(module, name) for module in map(importlib.import_module, SETTINGS)
            for name in re.findall(r"[A-Z_]+", SETTINGS[module.__name__])}


def mamba2_step(config, dtype):
    """One Mamba-2 layer's decode step after in_proj at ``config``'s shapes as our launches run it (mix, out): a
    function of the batch size, on zero tensors."""
    import torch

    from kotomamba.ops import mamba2_decode_triton as kernels

    opts, d_model = config.mixer_options(), config.d_model
    d_inner, headdim, ngroups, dstate, width = (opts["expand"] * d_model, opts["headdim"], opts["ngroups"],
                                                opts["d_state"], opts["d_conv"])
    nheads, conv_dim = d_inner // headdim, d_inner + 2 * ngroups * dstate
    conv_weight, out_proj = torch.zeros(conv_dim, width, dtype=dtype), torch.zeros(d_model, d_inner, dtype=dtype)
    heads = torch.zeros(nheads)

    def step(batch):
        zxbcdt = torch.zeros(batch, d_inner + conv_dim + nheads, dtype=dtype)
        state = (torch.zeros(batch, width, conv_dim, dtype=dtype).transpose(1, 2),
                 torch.zeros(batch, nheads, headdim, dstate, dtype=dtype))
        kernels.mamba2_decode_step_triton(
            zxbcdt, *state, torch.zeros((), dtype=torch.long), conv_weight, torch.zeros(conv_dim, dtype=dtype), heads,
            heads, heads, torch.ones(d_inner, dtype=dtype), 1e-5, out_proj, None, headdim, ngroups)

    return step


def mamba1_step(config, dtype):
    """One Mamba-1 layer's decode step after in_proj at ``config``'s shapes as our launches run it (conv, scan): a
    function of the batch size, on zero tensors (A_log and D float32, as the model keeps them)."""
    import torch

    from kotomamba.model.mamba1 import Mamba1Mixer
    from kotomamba.ops import mamba1_decode_triton as kernels

    shapes = Mamba1Mixer(config.d_model, **config.mixer_options(), device="meta")  # the mixer owns dt_rank "auto"
    weights = [torch.zeros(p.shape, dtype=torch.float32 if name in ("A_log", "D") else dtype) for name, p in (
        ("conv", shapes.conv1d.weight.squeeze(1)), ("conv_bias", shapes.conv1d.bias), ("x_proj", shapes.x_proj.weight),
        ("dt_proj", shapes.dt_proj.weight), ("dt_bias", shapes.dt_proj.bias), ("A_log", shapes.A_log), ("D", shapes.D))]

    def step(batch):
        state = [torch.zeros(s.shape, dtype=dtype) for s in shapes.allocate_state(batch)]
        kernels.mamba1_decode_step_triton(torch.zeros(batch, 2 * shapes.d_inner, dtype=dtype), *state, *weights)

    return step


def registers(args, impls: list[str]) -> None:
    """One table row per launch of one layer's decode step (Mamba-2: in, mix, out; Mamba-1: conv, scan), per
    ``generate:ours`` setting and batch size, at ``--preset``'s shapes: ptxas's registers and spills for sm_90a
    (bench/ptxas_report.py)."""
    import torch

    from ptxas_report import header, print_rows

    from kotomamba.model import preset

    config = preset(args.preset)
    step = (mamba1_step if config.layer == "Mamba1" else mamba2_step)(config, getattr(torch, args.dtype))
    defaults = setting_defaults()
    print(f"{args.preset}, {args.dtype}, one layer's decode step\n{header()}")
    for impl in impls:
        apply_settings(impl.partition("=")[2])
        for batch in args.batch:
            print_rows(f"{impl.split(':', 1)[1]}, batch {batch}", lambda: step(batch))
        for (module, name), value in defaults.items():
            setattr(module, name, value)


def build_models(impl: str, preset_name: str, dtype, device: str):
    """Our model for ``generate:ours`` (``=NAME:VALUE+...``: our decode kernels' settings first), mamba-ssm's for
    ``generate:mamba_ssm``, both with our seed-0 weights."""
    import torch

    from kotomamba.model import MambaLM, preset

    name, _, settings = impl.partition("=")
    apply_settings(settings)
    config = preset(preset_name)
    torch.manual_seed(0)
    ours = MambaLM(config, device=device, dtype=dtype).eval()
    if name == "generate:ours":
        return ours
    from mamba_ssm.models.config_mamba import MambaConfig as UpstreamConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    theirs = MambaLMHeadModel(UpstreamConfig(**config.to_dict()), device=device, dtype=dtype).eval()
    theirs.load_state_dict(ours.state_dict())
    del ours
    torch.cuda.empty_cache()
    return theirs


def child(args) -> None:
    """Time one implementation at every batch size; print one JSON row per batch size."""
    import torch

    from kotomamba.model import preset
    from kotomamba.model.generation import generate

    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    model = build_models(args.child, args.preset, dtype, args.device)
    vocab = preset(args.preset).vocab_size
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for index, batch in enumerate(args.batch):
        prompt = torch.randint(0, vocab, (batch, args.prompt_len), device=device,
                               generator=torch.Generator(device).manual_seed(1))
        total_len = args.prompt_len + args.new_tokens
        if args.child.startswith("generate:ours"):
            def whole():
                return generate(model, prompt, args.new_tokens, temperature=0.0, cuda_graph=device.type == "cuda")

            def prefill():
                return model.prefill(prompt, model.allocate_inference_cache(batch, total_len))
        else:
            def whole(length=total_len):
                return model.generate(prompt, max_length=length, top_k=1, cg=True, vocab_size=vocab)

            def prefill():
                return whole(args.prompt_len + 1)

        with torch.inference_mode():
            whole()  # warm-up: CUDA graphs, Triton compiles
            times = {}
            for name, fn in (("total_s", whole), ("prefill_s", prefill)):
                best = float("inf")
                for _ in range(args.repeats):
                    sync()
                    start = time.perf_counter()
                    result = fn()
                    sync()
                    best = min(best, time.perf_counter() - start)
                times[name] = best
                if name == "total_s":
                    out = result if torch.is_tensor(result) else result.sequences
            if args.profile and index == 0:
                print(f"--- profile: {args.child}, batch {batch}, one whole call ---\n{profile_table(whole)}",
                      flush=True)
        print(json.dumps({
            "impl": args.child, "batch": batch, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, **times,
            "ms_per_token": 1e3 * (times["total_s"] - times["prefill_s"]) / (args.new_tokens - 1),
            "tokens_per_s": batch * args.new_tokens / times["total_s"], "weight_bytes": weight_bytes,
            "card": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "tokens": out[:, args.prompt_len:].tolist()}), flush=True)


def leading_agreement(a: list[list[int]], b: list[list[int]]) -> int:
    """How many leading tokens every row of ``a`` shares with the same row of ``b``."""
    def common(x, y):
        return next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))

    return min(common(x, y) for x, y in zip(a, b))


def summarize(rows: list[dict], impls: list[str], bandwidth: float | None) -> list[dict]:
    """Per batch size and implementation: median ms/token and tokens/s over rounds with their ranges, the ratio
    against the first implementation (mamba-ssm's ms/token over ours), the greedy tokens it shares with it
    (leading tokens, fewest over rows and rounds) and the weights-read floor (at ``bandwidth``, else at the
    rows' card's peak)."""
    summary = []
    for batch in sorted({row["batch"] for row in rows}):
        of = {impl: [r for r in rows if r["impl"] == impl and r["batch"] == batch] for impl in impls}
        reference = of[impls[0]]
        for impl in impls:
            mine = of[impl]
            if not mine:
                continue
            ms, tps = median_range(mine, "ms_per_token"), median_range(mine, "tokens_per_s")
            ref_ms = median_range(reference, "ms_per_token")
            agree = (min(leading_agreement(r["tokens"], s["tokens"]) for r in mine for s in reference)
                     if reference else None)
            summary.append({"batch": batch, "impl": impl, "ms_per_token": ms, "tokens_per_s": tps,
                            "ratio": ref_ms[0] / ms[0] if ref_ms else None, "greedy_agreeing": agree,
                            "new_tokens": mine[0]["new_tokens"],
                            "floor_ms": floor_ms(mine[0]["weight_bytes"], bandwidth, mine[0]["card"])})
    return summary


def main() -> int:
    args = build_parser().parse_args()
    impls = args.impls.split(",")
    unknown = sorted(i for i in impls if i.partition("=")[0] not in IMPLS
                     or (i.partition("=")[2] and not re.fullmatch(rf"generate:ours=({SETTING})(\+({SETTING}))*", i)))
    if unknown:
        raise SystemExit(f"--impls: unknown {', '.join(unknown)} (known: {', '.join(IMPLS)})")
    if args.registers:  # mamba-ssm's kernels are not ours to compile: only the generate:ours settings count
        ours = [i for i in impls if i.partition("=")[0] == "generate:ours"]
        if not ours:
            raise SystemExit("--registers needs at least one generate:ours in --impls")
        registers(args, ours)
        return 0
    if args.new_tokens < 2:
        raise SystemExit("--new-tokens must be >= 2 (ms/token is the time after the first token)")
    if args.device != "cuda" and (args.profile or {i.partition("=")[0] for i in impls} != {"generate:ours"}):
        raise SystemExit(f"--device {args.device}: only generate:ours, without --profile (both need CUDA)")
    if args.child:
        child(args)
        return 0
    rows = run_children(sys.argv[0], sys.argv[1:], impls, args.rounds, args.time_limit)
    summary = summarize(rows, impls, args.bandwidth)
    print(f"\n{args.preset}, {args.dtype}, prompt {args.prompt_len}, {args.new_tokens} new tokens, "
          f"{args.rounds} rounds, one process each ({rows[0]['card'] if rows else 'no rows'})")
    print("| batch | impl | ms/token [range] | tokens/s [range] | ratio (theirs/ours) | greedy tokens agreeing "
          "| weights-read floor ms |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for s in summary:
        ms, tps = s["ms_per_token"], s["tokens_per_s"]
        agree = "-" if s["greedy_agreeing"] is None else f"{s['greedy_agreeing']} of {s['new_tokens']}"
        ratio = "-" if s["ratio"] is None else f"{s['ratio']:.3f}x"
        floor = "-" if s["floor_ms"] is None else f"{s['floor_ms']:.3f}"
        print(f"| {s['batch']} | {s['impl'].split(':', 1)[1]} | {ms[0]:.3f} [{ms[1]:.3f}-{ms[2]:.3f}] | "
              f"{tps[0]:.0f} [{tps[1]:.0f}-{tps[2]:.0f}] | {ratio} | {agree} | {floor} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"rows": [{k: v for k, v in r.items() if k != "tokens"} for r in rows], "summary": summary},
                      handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
