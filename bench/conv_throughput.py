"""Document resets in Mamba-2's mixer: our channel-last convolution (kotomamba/ops/conv_triton.py) against
causal-conv1d's, and the mixer function around our SSD scan, convolution and gated norm
(kotomamba/ops/split_conv_scan.py) against
mamba-ssm's ``mamba_split_conv1d_scan_combined``, forward+backward, with and without documents, at the
shapes of the 130m-2.7b presets (bf16 activations from in_proj, float32 weights, d_state 128, head dim 64,
one group, chunk 256, width-4 convolution on the xBC slice of the in_proj row, as the model calls them).

Each (implementation, round) runs in a fresh process of its own (bench/isolated.py), so no implementation's
figure depends on what ran beside it. Per process: the median of ``triton.testing.do_bench`` (CUDA events, host launches
included) and the device's time in kernels (profiled; what a CUDA-graphed step pays). The table gives the
median over rounds with the range, and the ratio against the reference (above 1: ours faster).
``floor`` for the convolution is the bytes it must move (forward: x read, y written; backward: x and dy
read, dx written) at ``--bandwidth``.

    python bench/conv_throughput.py --rounds 3 --json conv.json

With ``--registers`` it runs nothing: it compiles our convolution's kernels for each ``conv:ours`` blocking for
sm_90a on the host (no GPU needed) and prints what ptxas gives each launch (bench/ptxas_report.py).
"""
from __future__ import annotations

import sys

from documents import random_seq_idx
from isolated import op_main

# (batch, d_inner) of the presets at micro-batch 16 / 8 / 4 and seq 2048; one group, d_state 128.
SHAPES = {"130m": (16, 1536), "1.3b": (8, 4096), "2.7b": (4, 5120)}
IMPLS = ("conv:causal_conv1d", "conv:ours", "mixer:mamba_ssm", "mixer:ours")
IMPLS_HELP = ("comma-separated; conv:ours may carry its blockings, forward-backward (conv_triton.FWD_CONFIG's and "
              "BWD_CONFIG's fields), e.g. conv:ours=64.256.1-32.512.2")
DSTATE, HEADDIM, WIDTH = 128, 64, 4


def make_inputs(shape: str, seq: int, doc_len: int, seed: int = 0):
    import torch

    batch, d_inner = SHAPES[shape]
    nheads, conv_dim = d_inner // HEADDIM, d_inner + 2 * DSTATE
    d_model = d_inner // 2
    g = torch.Generator(device="cuda").manual_seed(seed)

    def randn(*size, scale=1.0):
        return torch.randn(*size, device="cuda", generator=g) * scale

    zxbcdt = randn(batch, seq, 2 * d_inner + 2 * DSTATE + nheads).to(torch.bfloat16)
    weights = {"conv1d_weight": randn(conv_dim, WIDTH, scale=0.5), "conv1d_bias": randn(conv_dim, scale=0.1),
               "dt_bias": randn(nheads, scale=0.5), "A": -torch.rand(nheads, device="cuda", generator=g) * 15 - 1,
               "D": randn(nheads), "norm_weight": 1 + randn(d_inner, scale=0.1),
               "out_proj_weight": randn(d_model, d_inner, scale=d_inner ** -0.5).to(torch.bfloat16)}
    seq_idx = random_seq_idx((batch, seq), doc_len, g, "cuda") if doc_len else None
    return zxbcdt, weights, seq_idx, d_inner, nheads, d_model


def blockings(blocking: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """conv:ours' forward and backward blockings from ``FWD-BWD`` (dot-separated fields), the defaults if empty."""
    from kotomamba.ops.conv_triton import BWD_CONFIG, FWD_CONFIG

    if not blocking:
        return FWD_CONFIG, BWD_CONFIG
    fwd, bwd = blocking.split("-")
    return tuple(int(v) for v in fwd.split(".")), tuple(int(v) for v in bwd.split("."))


def runner(impl: str, shape: str, seq: int, doc_len: int):
    """One forward+backward of ``impl`` as a closure, and the bytes floor of the convolution."""
    import torch

    zxbcdt, w, seq_idx, d_inner, nheads, d_model = make_inputs(shape, seq, doc_len)
    xBC = zxbcdt[..., d_inner : 2 * d_inner + 2 * DSTATE]
    kind, name = impl.split(":")
    name, _, blocking = name.partition("=")
    if kind == "conv":
        # A detached slice keeps the row's strides: the input as the mixer hands it over.
        leaves = [xBC.detach().requires_grad_(True), w["conv1d_weight"].requires_grad_(True),
                  w["conv1d_bias"].requires_grad_(True)]
        dy = torch.randn(xBC.shape, device="cuda", dtype=torch.bfloat16)
        if name == "ours":
            from kotomamba.ops.conv_triton import causal_conv1d_channel_last

            configs = blockings(blocking)

            def fn():
                return causal_conv1d_channel_last(*leaves, seq_idx, "silu", *configs)
        else:
            from causal_conv1d import causal_conv1d_fn

            def fn():
                return causal_conv1d_fn(leaves[0].transpose(1, 2), *leaves[1:], seq_idx=seq_idx,
                                        activation="silu").transpose(1, 2)
        elements = xBC.numel()
        floor_bytes = elements * 2 * 2 + elements * 2 * 3
    else:
        source = zxbcdt.detach().requires_grad_(True)
        leaves = [source] + [v.requires_grad_(True) for v in w.values()]
        dy = torch.randn(*zxbcdt.shape[:2], d_model, device="cuda", dtype=torch.bfloat16)
        if name == "ours":
            from kotomamba.ops.split_conv_scan import mamba2_split_conv_scan

            def fn():
                return mamba2_split_conv_scan(source, w["conv1d_weight"], w["conv1d_bias"], w["dt_bias"], w["A"],
                                              w["D"], 256, HEADDIM, 1, w["norm_weight"], 1e-5, w["out_proj_weight"],
                                              None, seq_idx=seq_idx)
        else:
            from mamba_ssm.ops.triton.ssd_combined import mamba_split_conv1d_scan_combined

            def fn():
                return mamba_split_conv1d_scan_combined(
                    source, w["conv1d_weight"], w["conv1d_bias"], w["dt_bias"], w["A"], w["D"], 256, seq_idx=seq_idx,
                    activation="silu", rmsnorm_weight=w["norm_weight"], rmsnorm_eps=1e-5,
                    outproj_weight=w["out_proj_weight"], headdim=HEADDIM, ngroups=1, norm_before_gate=False)
        floor_bytes = 0

    def forward_backward():
        torch.autograd.grad(fn(), leaves, dy)

    return forward_backward, floor_bytes


def cases(args) -> list[dict]:
    return [{"shape": shape, "documents": docs} for shape in args.shapes.split(",") for docs in (False, True)]


def add_arguments(parser) -> None:
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--doc-len", type=int, default=1000, help="mean document length of the seq_idx runs")


def registers_main() -> None:
    """Prints what ptxas gives our convolution's forward and backward per ``conv:ours`` blocking, at the first
    shape's channels (batch 1, bf16, a reset every ~--doc-len tokens)."""
    import torch

    from ptxas_report import command_line, header, print_rows

    from kotomamba.ops.conv_triton import conv_backward, conv_forward

    args, variants = command_line(SHAPES, IMPLS, IMPLS_HELP, add_arguments, "conv:ours")
    d_inner = SHAPES[args.shapes.split(",")[0]][1]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, args.seq, d_inner + 2 * DSTATE, generator=g).bfloat16()
    weight, bias = torch.randn(x.shape[-1], WIDTH, generator=g), torch.randn(x.shape[-1], generator=g)
    seq_idx = random_seq_idx((1, args.seq), args.doc_len, g, "cpu")

    def both(configs):
        y = conv_forward(x, weight, bias, seq_idx, True, configs[0])
        conv_backward(x, weight, bias, seq_idx, y, True, config=configs[1])

    print(header())
    for blocking in variants:
        configs = blockings(blocking)
        print_rows("-".join(".".join(map(str, c)) for c in configs), lambda: both(configs))


if __name__ == "__main__":
    if "--registers" in sys.argv:
        registers_main()
    else:
        op_main(__doc__, SHAPES, IMPLS, IMPLS_HELP, cases,
                lambda impl, case, args: runner(impl, case["shape"], args.seq,
                                                args.doc_len if case["documents"] else 0), add_arguments)
