"""Mamba-2 state-space duality (SSD) scan, chunked (Dao & Gu 2024, "Transformers are SSMs", sec. 6).

Per head h: ``state_t = exp(dt_t * A_h) * state_{t-1} + dt_t * x_t B_t^T`` and
``y_t = state_t C_t + D_h * x_t``. Inside a chunk the output is a masked "attention" product;
between chunks only the [P, N] state is carried.

Kernel: ``mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined`` (Triton). Reference: the
same chunked algorithm in PyTorch, written after the idea of mamba-ssm's ``ssd_minimal.py``, plus
exact document boundaries: with ``seq_idx`` no term crosses from one document into the next, inside
a chunk or across chunks (documents are contiguous runs of equal ``seq_idx``, as in the kernels).

Our own Triton kernels of the same op (:mod:`kotomamba.ops.ssd_triton`: a one-launch forward, a
walking and a split backward) are not dispatched: on an H200 their forward is faster than
mamba-ssm's, but forward+backward spends more device time than mamba-ssm's, with either backward
(bench/RESULTS.md, "Mamba-2 SSD scan alone" and "the split SSD backward timed"), and the trainer's
CUDA-graphed step pays device time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kotomamba.ops.dispatch import kernel_module, use_kernels

_KERNEL = "mamba_ssm.ops.triton.ssd_combined"


def _chunks(t: torch.Tensor, pad: int, chunk_size: int) -> torch.Tensor:
    """[B, L, ...] -> [B, chunks, chunk_size, ...], zero-padded at the end of L."""
    if pad:
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
    return t.view(t.shape[0], -1, chunk_size, *t.shape[2:])


# dt_limit meaning no clamp (mamba-ssm's default).
DEFAULT_DT_LIMIT = (0.0, float("inf"))


def step_size(dt: torch.Tensor, dt_bias: torch.Tensor | None = None, dt_softplus: bool = False,
              dt_limit: tuple[float, float] = DEFAULT_DT_LIMIT) -> torch.Tensor:
    """Each head's step as the scan takes it (mamba-ssm's ``dt_bias``, ``dt_softplus``, ``dt_limit``):
    ``clamp(softplus(dt + dt_bias), *dt_limit)``, in dt's dtype. dt: [..., h]; dt_bias: [h]."""
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    if tuple(dt_limit) != DEFAULT_DT_LIMIT:
        dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    return dt


def ssd_chunk_scan_ref(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    initial_states: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    return_final_states: bool = False,
):
    """Chunked SSD scan in float32 (float64 for float64 inputs).

    x: [b, L, h, p]; dt: [b, L, h]; A: [h] (negative); B, C: [b, L, g, n] (h divisible by g);
    D, dt_bias: [h]; initial_states: [b, h, p, n] (belongs to the first document);
    seq_idx: [b, L] int. L need not be a multiple of ``chunk_size`` (padded inside with dt = 0).
    Returns y [b, L, h, p] in x's dtype, and with ``return_final_states`` the state after position
    L - 1, [b, h, p, n] float32.
    """
    dtype_in = x.dtype
    ct = torch.promote_types(x.dtype, torch.float32)  # float32, or float64 for gradcheck
    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    dt = step_size(dt.to(ct), dt_bias, dt_softplus, dt_limit)
    xf = x.to(ct)
    Bh = B.to(ct).repeat_interleave(nheads // ngroups, dim=2)  # [b, L, h, n]
    Ch = C.to(ct).repeat_interleave(nheads // ngroups, dim=2)
    pad = (-seqlen) % chunk_size
    xc = _chunks(xf * dt[..., None], pad, chunk_size)  # [b, c, l, h, p]
    Bc, Cc = _chunks(Bh, pad, chunk_size), _chunks(Ch, pad, chunk_size)  # [b, c, l, h, n]
    dA = _chunks(dt * A.to(ct), pad, chunk_size)  # [b, c, l, h]
    nchunks = dA.shape[1]
    cum = torch.cumsum(dA, dim=2)  # [b, c, l, h]
    if seq_idx is None:
        doc = torch.zeros(batch, nchunks, chunk_size, dtype=torch.long, device=x.device)
    else:
        # Padding continues the last document, so the final state is that document's.
        doc = F.pad(seq_idx.long(), (0, pad), mode="replicate") if pad else seq_idx.long()
        doc = doc.view(batch, nchunks, chunk_size)

    # 1. Inside each chunk: y_t += sum_{s <= t, same doc} (C_t . B_s) exp(cum_t - cum_s) dt_s x_s.
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=x.device).tril()
    keep = causal & (doc[:, :, :, None] == doc[:, :, None, :])  # [b, c, t, s]
    seg = cum[:, :, :, None, :] - cum[:, :, None, :, :]  # [b, c, t, s, h]
    decay = torch.exp(seg.masked_fill(~keep[..., None], float("-inf")))
    scores = torch.einsum("bcthn,bcshn->bctsh", Cc, Bc) * decay
    y = torch.einsum("bctsh,bcshp->bcthp", scores, xc)

    # 2. Each chunk's own contribution to the state at its last position (same doc as that position).
    last_doc = doc[:, :, -1]  # [b, c]
    to_end = torch.exp(cum[:, :, -1:, :] - cum) * (doc == last_doc[:, :, None])[..., None]  # [b, c, l, h]
    chunk_states = torch.einsum("bclhn,bclh,bclhp->bchpn", Bc, to_end, xc)

    # 3. Carry states across chunks; a state survives a boundary only inside one document.
    if initial_states is None:
        state = xf.new_zeros(batch, nheads, headdim, dstate)
    else:
        state = initial_states.to(ct)
    entering_doc = doc[:, 0, 0]
    entering = []
    for c in range(nchunks):
        entering.append(state)
        survives = (last_doc[:, c] == entering_doc).to(ct)[:, None, None, None]
        chunk_decay = torch.exp(cum[:, c, -1])[:, :, None, None]  # [b, h, 1, 1]
        state = chunk_states[:, c] + chunk_decay * survives * state
        entering_doc = last_doc[:, c]
    states_in = torch.stack(entering, dim=1)  # [b, c, h, p, n]
    prev_doc = torch.cat([doc[:, :1, 0], last_doc[:, :-1]], dim=1)  # doc of each entering state

    # 4. The entering state's contribution to each position of its document in the chunk.
    from_start = torch.exp(cum) * (doc == prev_doc[:, :, None])[..., None]  # [b, c, l, h]
    y = y + torch.einsum("bclhn,bchpn,bclh->bclhp", Cc, states_in, from_start)

    y = y.reshape(batch, nchunks * chunk_size, nheads, headdim)[:, :seqlen]
    if D is not None:
        y = y + xf * D.to(ct)[:, None]
    y = y.to(dtype_in)
    if return_final_states:
        return y, state
    return y


def ssd_chunk_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    initial_states: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    return_final_states: bool = False,
):
    """Dispatching twin of :func:`ssd_chunk_scan_ref` (same arguments and results)."""
    if not use_kernels(x, _KERNEL):
        return ssd_chunk_scan_ref(
            x, dt, A, B, C, chunk_size, D, dt_bias, dt_softplus, dt_limit, initial_states, seq_idx,
            return_final_states,
        )
    return kernel_module(_KERNEL).mamba_chunk_scan_combined(
        x, dt, A, B, C, chunk_size, D=D, dt_bias=dt_bias, initial_states=initial_states,
        seq_idx=None if seq_idx is None else seq_idx.to(torch.int32), dt_softplus=dt_softplus,
        dt_limit=dt_limit, return_final_states=return_final_states,
    )
