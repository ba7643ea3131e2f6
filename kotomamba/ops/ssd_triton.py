"""Triton kernels of the Mamba-2 SSD scan (:func:`kotomamba.ops.ssd.ssd_chunk_scan_ref` is the twin).

One program per (batch, head, block of head-dim columns) walks the sequence in blocks of
``BLOCK_T`` positions and carries its rows of the [P, N] state in registers from one block to the
next (the columns of x, y and the state never mix), so the whole chain (cumulative decay, the
block-local masked product, the entering state's contribution, ``D``, the state update) is one
launch that writes only ``y`` and reads every input once: no chunk states, decay sums or C.B
products go through memory. This is the single-kernel structure of the PyTorch blog "Accelerating
Mamba2 with kernel fusion" (2025); the per-block algebra is the chunked SSD of Dao & Gu 2024,
sec. 6. The result does not depend on the block length (the chunking is exact), so ``BLOCK_T`` is a
tuning choice, not the model's ``chunk_size``.

Two backwards, selected by :func:`ssd_chunk_scan_triton`'s arguments. Both first rerun that forward
to leave each block's entering state in a scratch buffer (x's dtype, held for the length of the
backward; the rerun computes no y), or for the split backward, if asked, the forward itself keeps
them (held from forward to backward). With ``a`` the within-block cumulative sum of ``dt * A`` and
``W[t, s] = (dy_t . dt_s x_s)(C_t . B_s) exp(a_t - a_s)`` (s <= t, same document), each block's share
of the decay gradient is ``da_t = sum_s W[t, s] - sum_s W[s, t]`` plus the entering and leaving
state's terms; PyTorch sums the shares and takes ``d(dt_t A)`` as the reverse cumulative sum of ``da``
over the rest of t's block.

- The walking backward (``bwd_config``): one program per (batch, head, column block) walks the blocks
  in reverse, carrying the state's gradient, and computes every block's gradients on its way: dx (its
  columns), its share of dB and dC (summed over heads and column blocks with atomic adds) and of the
  decay gradient. Its parallelism is only batch x heads x column blocks.
- The split backward (``split_bwd_config``), after mamba-ssm's split of the backward into state
  passing and per-chunk products (``ssd_combined.py``), here after the rerun: a sequential launch
  per (batch, head, column block) carries only the [P, N] state gradient backwards through the
  blocks, one small product per block (``dS_in = survive * dS_out + (from_start * dy)^T C``), and
  keeps the gradient of every block's leaving state; then one launch over all (block, column block,
  head, batch) computes, from a block's entering state and leaving-state gradient, everything the
  walking program computes for that block: in one pass over the state dimension, or in two parts (dx;
  then dB, dC and the decay gradient, whose share is ``C_t . dC_t - B_t . dB_t``) that hold fewer tiles
  at once, one after the other in one program, in neighbouring programs or as two launches; the second
  launch can also take several heads of a group per program, which read B and C once and add their
  summed dB and dC once. Or, head-looping, the per-block work split by what is summed over heads: a
  launch whose programs walk several heads of a block, each head's dx and its whole decay gradient from
  products of the head dim's width (``da_t = dy_t . y'_t - u_t . du_t``, :func:`_ssd_bwd_dx_heads_kernel`),
  then one whose programs walk a group's heads and gather dB and dC as one matrix product over heads x
  head dim (:func:`_ssd_bwd_dbc_heads_kernel`): nothing is added atomically per head (the Mamba-2 mixer's
  setting, :mod:`kotomamba.ops.split_conv_scan`). The register counts and spills of each setting,
  compiled for sm_90a on any host: ``bench/ssd_throughput.py --registers``.

Document boundaries (``seq_idx``) are exact as in the twin: no term crosses from one document into
the next, inside a block or across blocks, and the initial state belongs to the first document.

``dt`` arrives as the model hands it over (:class:`Steps`): one launch makes the step (bias, softplus,
clamp) as float32 for the scan's launches, and one launch after the backward's turns its shares of the
decay gradient into the gradients of the raw dt (written where the caller asks, e.g. into the slice of
in_proj's output gradient), of A and of dt_bias. dx too can be written into such a slice.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kotomamba.ops.ssd import DEFAULT_DT_LIMIT
from kotomamba.ops.step_triton import step, step_grad


@triton.jit
def _block_dt(c, L, dt_base, stride_dt_l, BLOCK_T: tl.constexpr):
    """Block ``c``'s dt [BLOCK_T] (0 past L, and for a block past the sequence's end)."""
    t = c * BLOCK_T + tl.arange(0, BLOCK_T)
    return tl.load(dt_base + t * stride_dt_l, mask=t < L, other=0.0).to(tl.float32)


@triton.jit
def _block_sums(c, L, A, dt, BLOCK_T: tl.constexpr):
    """Positions t of block ``c`` [BLOCK_T], which are valid (< L), and the within-block cumulative sum ``a``
    of dt*A (``dt``: the block's, as :func:`_block_dt` reads it)."""
    t = c * BLOCK_T + tl.arange(0, BLOCK_T)
    return t, t < L, tl.cumsum(dt * A, axis=0)


@triton.jit
def _block_steps(c, L, A, dt_base, stride_dt_l, BLOCK_T: tl.constexpr):
    """Positions t of block ``c`` [BLOCK_T], which are valid (< L), their dt (0 past L) and the within-block
    cumulative sum ``a`` of dt*A."""
    dt = _block_dt(c, L, dt_base, stride_dt_l, BLOCK_T)
    t, valid, a = _block_sums(c, L, A, dt, BLOCK_T)
    return t, valid, dt, a


@triton.jit
def _block_docs(c, L, seq_base, stride_seq_l, HAS_SEQ: tl.constexpr, BLOCK_T: tl.constexpr):
    """Block ``c``'s documents [BLOCK_T] (positions past L continue the last one), the entering state's
    document (that of the position before the block; the first document for block 0) and the last
    position's. The same for every head: the head-looping launches read them once."""
    if HAS_SEQ:
        t = c * BLOCK_T + tl.arange(0, BLOCK_T)
        doc = tl.load(seq_base + tl.minimum(t, L - 1) * stride_seq_l)
        doc_in = tl.load(seq_base + tl.maximum(c * BLOCK_T - 1, 0) * stride_seq_l)
        doc_last = tl.load(seq_base + tl.minimum(c * BLOCK_T + BLOCK_T - 1, L - 1) * stride_seq_l)
    else:
        doc = tl.zeros((BLOCK_T,), tl.int32)
        doc_in = 0
        doc_last = 0
    return doc, doc_in, doc_last


@triton.jit
def _block_inputs(c, L, A, dt_base, stride_dt_l, seq_base, stride_seq_l,
                  HAS_SEQ: tl.constexpr, BLOCK_T: tl.constexpr):
    """:func:`_block_steps` and :func:`_block_docs` of block ``c``."""
    t, valid, dt, a = _block_steps(c, L, A, dt_base, stride_dt_l, BLOCK_T)
    doc, doc_in, doc_last = _block_docs(c, L, seq_base, stride_seq_l, HAS_SEQ, BLOCK_T)
    return t, valid, dt, a, doc, doc_in, doc_last


@triton.jit
def _block_decays(c, L, a, doc, doc_in, doc_last, BLOCK_T: tl.constexpr):
    """Block ``c``'s decays from :func:`_block_inputs`' ``a``, ``doc`` [BLOCK_T] and documents: ``is_last``
    [BLOCK_T], true at the block's last real position (``a`` there is the whole block's decay, as dt is 0
    past L, and the gradient of that decay must land on a position whose share is kept); ``from_start``
    [BLOCK_T], the decay from the block's start to t (0 outside the entering state's document);
    ``to_end`` [BLOCK_T], from s to the block's end (0 outside the leaving state's document); ``survive``,
    the whole block's decay of the entering state (0 if its document ends inside the block)."""
    is_last = tl.arange(0, BLOCK_T) == tl.minimum(BLOCK_T - 1, L - 1 - c * BLOCK_T)
    a_last = tl.sum(tl.where(is_last, a, 0.0), axis=0)
    from_start = tl.where(doc == doc_in, tl.exp(a), 0.0)
    to_end = tl.where(doc == doc_last, tl.exp(a_last - a), 0.0)
    survive = tl.where(doc_in == doc_last, tl.exp(a_last), 0.0)
    return is_last, from_start, to_end, survive


@triton.jit
def _kept(doc, BLOCK_T: tl.constexpr, TRANSPOSED: tl.constexpr = False):
    """[t, s] whether s <= t in the same document, [BLOCK_T, BLOCK_T]; with ``TRANSPOSED``, [s, t]."""
    rows = tl.arange(0, BLOCK_T)
    if TRANSPOSED:
        return (rows[None, :] >= rows[:, None]) & (doc[None, :] == doc[:, None])
    else:
        return (rows[:, None] >= rows[None, :]) & (doc[:, None] == doc[None, :])


@triton.jit
def _decay_matrix(a, doc, BLOCK_T: tl.constexpr, TRANSPOSED: tl.constexpr = False):
    """[t, s] ``exp(a_t - a_s)`` for s <= t in the same document, else 0, [BLOCK_T, BLOCK_T]; with
    ``TRANSPOSED``, its transpose [s, t]."""
    if TRANSPOSED:
        return tl.exp(tl.where(_kept(doc, BLOCK_T, True), a[None, :] - a[:, None], float("-inf")))
    else:
        return tl.exp(tl.where(_kept(doc, BLOCK_T), a[:, None] - a[None, :], float("-inf")))


@triton.jit
def _decay_unmasked(a):
    """[t, s] ``exp(a_t - a_s)`` for s <= t in the same document, finite (at most 1) elsewhere,
    [BLOCK_T, BLOCK_T]: for a factor that :func:`_kept` masks once for all heads (a falls with t, so
    the cap changes the exponent only where s > t)."""
    return tl.exp(tl.minimum(a[:, None] - a[None, :], 0.0))


@triton.jit
def _dot_exact_rhs(a, b, acc):
    """``acc + a @ b`` [M, N] where a float32 ``b`` [K, N] counts at its full precision, not as the TF32
    (10 mantissa bits) that tl.dot takes float32 operands as: as a head that TF32 holds exactly plus the
    rest, two products (what TF32 drops of the rest is about 1e-6 of b). ``a`` is taken as tl.dot takes it.
    Other dtypes: one product."""
    if b.dtype == tl.float32:
        # The low 13 mantissa bits cleared: exact in TF32 whether a GPU rounds or truncates its operands.
        head = (b.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)
        acc = tl.dot(a, b - head, acc=acc)
        b = head
    return tl.dot(a, b, acc=acc)


@triton.jit
def _ssd_fwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, seq_ptr, init_ptr, y_ptr, final_ptr, scratch_ptr,
    L, heads_per_group,
    stride_x_b, stride_x_l, stride_x_h, stride_x_p,
    stride_dt_b, stride_dt_l, stride_dt_h,
    stride_B_b, stride_B_l, stride_B_g, stride_B_n,
    stride_C_b, stride_C_l, stride_C_g, stride_C_n,
    stride_seq_b, stride_seq_l,
    stride_y_b, stride_y_l, stride_y_h, stride_y_p,
    HAS_D: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_INIT: tl.constexpr, WRITE_Y: tl.constexpr,
    STATE_EVERY: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, P: tl.constexpr, N: tl.constexpr,
):
    """Program (b, h, j): columns j * BLOCK_P ... of head h's x, y and state (they do not mix). Writes y
    if ``WRITE_Y``; with ``STATE_EVERY`` k > 0, also the state entering every k-th block to scratch
    [b, h, ceil(blocks / k), P, N] (the backward's states)."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_h = tl.program_id(1).to(tl.int64)
    nheads = tl.num_programs(1)
    g = pid_h // heads_per_group
    x_base = x_ptr + pid_b * stride_x_b + pid_h * stride_x_h
    dt_base = dt_ptr + pid_b * stride_dt_b + pid_h * stride_dt_h
    B_base = B_ptr + pid_b * stride_B_b + g * stride_B_g
    C_base = C_ptr + pid_b * stride_C_b + g * stride_C_g
    y_base = y_ptr + pid_b * stride_y_b + pid_h * stride_y_h
    seq_base = seq_ptr + pid_b * stride_seq_b
    A = tl.load(A_ptr + pid_h).to(tl.float32)
    p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, N)
    state_offsets = p[:, None] * N + n[None, :]  # [BLOCK_P, N] of a contiguous [P, N] state
    bh = pid_b * nheads + pid_h
    if HAS_INIT:
        state = tl.load(init_ptr + bh * P * N + state_offsets).to(tl.float32)
    else:
        state = tl.zeros((BLOCK_P, N), tl.float32)
    if HAS_D:
        Dh = tl.load(D_ptr + pid_h).to(tl.float32)
    n_blocks = tl.cdiv(L, BLOCK_T)
    # A block's dt and documents are read while the block before it is computed: the walk is one chain,
    # and nothing else hides the wait for these small reads.
    dt_next = _block_dt(0, L, dt_base, stride_dt_l, BLOCK_T)
    doc_next, doc_in_next, doc_last_next = _block_docs(0, L, seq_base, stride_seq_l, HAS_SEQ, BLOCK_T)
    for c in range(0, n_blocks):
        dt, doc, doc_in, doc_last = dt_next, doc_next, doc_in_next, doc_last_next
        dt_next = _block_dt(c + 1, L, dt_base, stride_dt_l, BLOCK_T)
        doc_next, doc_in_next, doc_last_next = _block_docs(tl.minimum(c + 1, n_blocks - 1), L, seq_base,
                                                           stride_seq_l, HAS_SEQ, BLOCK_T)
        t, valid, a = _block_sums(c, L, A, dt, BLOCK_T)
        _, from_start, to_end, survive = _block_decays(c, L, a, doc, doc_in, doc_last, BLOCK_T)
        if STATE_EVERY > 0:
            if c % STATE_EVERY == 0:
                tl.store(scratch_ptr + (bh * tl.cdiv(n_blocks, STATE_EVERY) + c // STATE_EVERY) * P * N
                         + state_offsets, state.to(scratch_ptr.dtype.element_ty))
        x = tl.load(x_base + t[:, None] * stride_x_l + p[None, :] * stride_x_p, mask=valid[:, None], other=0.0)
        Bm = tl.load(B_base + t[:, None] * stride_B_l + n[None, :] * stride_B_n, mask=valid[:, None], other=0.0)
        Cm = tl.load(C_base + t[:, None] * stride_C_l + n[None, :] * stride_C_n, mask=valid[:, None], other=0.0)
        if WRITE_Y:
            # Inside the block: y_t = sum_{s <= t, same doc} (C_t . B_s) exp(a_t - a_s) dt_s x_s.
            scores = tl.dot(Cm, tl.trans(Bm)) * _decay_matrix(a, doc, BLOCK_T) * dt[None, :]
            y = tl.dot(scores.to(x.dtype), x)
            # The entering state, to the positions of its own document.
            y += tl.dot(Cm, tl.trans(state).to(Cm.dtype)) * from_start[:, None]
            if HAS_D:
                y += Dh * x.to(tl.float32)
            tl.store(y_base + t[:, None] * stride_y_l + p[None, :] * stride_y_p, y.to(y_ptr.dtype.element_ty),
                     mask=valid[:, None])
        # The state after the block: the entering one survives only if the block ends in its document.
        xw = (x.to(tl.float32) * (to_end * dt)[:, None]).to(Bm.dtype)
        state = state * survive + tl.dot(tl.trans(xw), Bm)
    tl.store(final_ptr + bh * P * N + state_offsets, state)


@triton.jit
def _ssd_bwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, seq_ptr, dy_ptr, dfinal_ptr, scratch_ptr,
    dx_ptr, da_ptr, ddt_x_ptr, dB_ptr, dC_ptr, dD_ptr, dinit_ptr,
    L, heads_per_group,
    stride_x_b, stride_x_l, stride_x_h, stride_x_p,
    stride_dt_b, stride_dt_l, stride_dt_h,
    stride_B_b, stride_B_l, stride_B_g, stride_B_n,
    stride_C_b, stride_C_l, stride_C_g, stride_C_n,
    stride_seq_b, stride_seq_l,
    stride_dy_b, stride_dy_l, stride_dy_h, stride_dy_p,
    stride_dx_b, stride_dx_l,
    HAS_D: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_DFINAL: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, P: tl.constexpr, N: tl.constexpr,
):
    """The walking backward. Program (b, h, j) takes columns j * BLOCK_P ... of head h and walks the
    blocks in reverse, carrying the state's gradient. Writes dx [b, L, h, P] (its dtype; its columns;
    strides ``stride_dx_b``, ``stride_dx_l``, P, 1); adds its share to dB, dC [b, L, g, N] float32 (zeroed by the caller); writes its
    columns' share of the decay gradient ``da`` and of ``sum_p d(dt x)_p x_p`` to da, ddt_x
    [b, L, h, P // BLOCK_P] float32, its sum of dy * x to dD [b, h, P // BLOCK_P], and its rows of
    dinit [b, h, P, N] float32."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_h = tl.program_id(1).to(tl.int64)
    pid_p = tl.program_id(2)
    nheads = tl.num_programs(1)
    n_pblocks = tl.num_programs(2)
    g = pid_h // heads_per_group
    bh = pid_b * nheads + pid_h
    x_base = x_ptr + pid_b * stride_x_b + pid_h * stride_x_h
    dt_base = dt_ptr + pid_b * stride_dt_b + pid_h * stride_dt_h
    B_base = B_ptr + pid_b * stride_B_b + g * stride_B_g
    C_base = C_ptr + pid_b * stride_C_b + g * stride_C_g
    dy_base = dy_ptr + pid_b * stride_dy_b + pid_h * stride_dy_h
    seq_base = seq_ptr + pid_b * stride_seq_b
    # The other gradient outputs are contiguous: [b, L, h, P // BLOCK_P], [b, L, g, N].
    ngroups = nheads // heads_per_group
    dx_base = dx_ptr + pid_b * stride_dx_b + pid_h * P
    da_base = da_ptr + (pid_b * L * nheads + pid_h) * n_pblocks + pid_p
    ddt_x_base = ddt_x_ptr + (pid_b * L * nheads + pid_h) * n_pblocks + pid_p
    dB_base = dB_ptr + (pid_b * L * ngroups + g) * N
    dC_base = dC_ptr + (pid_b * L * ngroups + g) * N
    A = tl.load(A_ptr + pid_h).to(tl.float32)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, N)
    state_offsets = p[:, None] * N + n[None, :]
    if HAS_D:
        Dh = tl.load(D_ptr + pid_h).to(tl.float32)
    if HAS_DFINAL:
        dstate = tl.load(dfinal_ptr + bh * P * N + state_offsets).to(tl.float32)
    else:
        dstate = tl.zeros((BLOCK_P, N), tl.float32)
    dD_acc = tl.zeros((), tl.float32)
    n_blocks = tl.cdiv(L, BLOCK_T)
    for i in range(0, n_blocks):
        c = n_blocks - 1 - i
        t, valid, dt, a, doc, doc_in, doc_last = _block_inputs(
            c, L, A, dt_base, stride_dt_l, seq_base, stride_seq_l, HAS_SEQ, BLOCK_T)
        state = tl.load(scratch_ptr + (bh * n_blocks + c) * P * N + state_offsets).to(tl.float32)
        x = tl.load(x_base + t[:, None] * stride_x_l + p[None, :] * stride_x_p, mask=valid[:, None], other=0.0)
        dy = tl.load(dy_base + t[:, None] * stride_dy_l + p[None, :] * stride_dy_p, mask=valid[:, None], other=0.0)
        Bm = tl.load(B_base + t[:, None] * stride_B_l + n[None, :] * stride_B_n, mask=valid[:, None], other=0.0)
        Cm = tl.load(C_base + t[:, None] * stride_C_l + n[None, :] * stride_C_n, mask=valid[:, None], other=0.0)
        xf = x.to(tl.float32)
        dyf = dy.to(tl.float32)
        u = (xf * dt[:, None]).to(x.dtype)  # dt_s x_s
        is_last, from_start, to_end, survive = _block_decays(c, L, a, doc, doc_in, doc_last, BLOCK_T)
        decay = _decay_matrix(a, doc, BLOCK_T)  # [t, s]

        cb = tl.dot(Cm, tl.trans(Bm))  # [t, s]
        gm = tl.dot(dy, tl.trans(u)) * decay  # (dy_t . u_s) decay[t, s], over this program's columns
        dstate_lp = dstate.to(x.dtype)
        # d(dt_s x_s): inside the block and through the leaving state.
        du = tl.dot(tl.trans((cb * decay).to(x.dtype)), dy)
        du += tl.dot(Bm, tl.trans(dstate_lp)) * to_end[:, None]
        # dB_s and dC_t, inside the block and through the states.
        u_ds = tl.dot(u, dstate_lp)  # [s, N]: u_s^T dstate
        dB = tl.dot(tl.trans(gm.to(Cm.dtype)), Cm) + u_ds * to_end[:, None]
        dy_s = tl.dot(dy, state.to(x.dtype))  # [t, N]: dy_t^T state
        dC = tl.dot(gm.to(Bm.dtype), Bm) + dy_s * from_start[:, None]
        # This program's columns' share of the gradient of the within-block cumulative decay a.
        w = gm * cb
        da = tl.sum(w, axis=1) - tl.sum(w, axis=0)
        da += tl.sum(Cm.to(tl.float32) * dy_s, axis=1) * from_start
        v = tl.sum(Bm.to(tl.float32) * u_ds, axis=1) * to_end
        da -= v
        da += tl.where(is_last, tl.sum(v, axis=0) + survive * tl.sum(tl.sum(dstate * state, axis=1), axis=0), 0.0)
        dx = du * dt[:, None]
        if HAS_D:
            dx += Dh * dyf
            dD_acc += tl.sum(tl.sum(dyf * xf, axis=1), axis=0)
        tl.store(dx_base + t[:, None] * stride_dx_l + p[None, :], dx.to(dx_ptr.dtype.element_ty), mask=valid[:, None])
        tl.store(da_base + t * nheads * n_pblocks, da, mask=valid)
        tl.store(ddt_x_base + t * nheads * n_pblocks, tl.sum(du * xf, axis=1), mask=valid)
        tl.atomic_add(dB_base + t[:, None] * ngroups * N + n[None, :], dB, mask=valid[:, None], sem="relaxed")
        tl.atomic_add(dC_base + t[:, None] * ngroups * N + n[None, :], dC, mask=valid[:, None], sem="relaxed")
        # The state entering this block: through the survival decay and the block's outputs.
        dy_in = (dyf * from_start[:, None]).to(Cm.dtype)
        dstate = dstate * survive + tl.dot(tl.trans(dy_in), Cm)
    tl.store(dinit_ptr + bh * P * N + state_offsets, dstate)
    tl.store(dD_ptr + bh * n_pblocks + pid_p, dD_acc)


@triton.jit
def _ssd_bwd_dstates_kernel(
    dt_ptr, A_ptr, C_ptr, seq_ptr, dy_ptr, dfinal_ptr, dstates_ptr, dinit_ptr,
    L, heads_per_group,
    stride_dt_b, stride_dt_l, stride_dt_h,
    stride_C_b, stride_C_l, stride_C_g, stride_C_n,
    stride_seq_b, stride_seq_l,
    stride_dy_b, stride_dy_l, stride_dy_h, stride_dy_p,
    HAS_SEQ: tl.constexpr, HAS_DFINAL: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, P: tl.constexpr, N: tl.constexpr,
):
    """The split backward's sequential part. Program (b, h, j) walks the blocks of head h in reverse
    carrying rows j * BLOCK_P ... of the state's gradient, and stores, for every block c, the gradient
    of the state leaving it in dstates [b, h, blocks, P, N] (before adding the block's own terms), and
    the gradient of the initial state in dinit [b, h, P, N] float32. Per block only one product:
    ``dS_in = survive * dS_out + (from_start * dy)^T C``."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_h = tl.program_id(1).to(tl.int64)
    nheads = tl.num_programs(1)
    g = pid_h // heads_per_group
    bh = pid_b * nheads + pid_h
    dt_base = dt_ptr + pid_b * stride_dt_b + pid_h * stride_dt_h
    C_base = C_ptr + pid_b * stride_C_b + g * stride_C_g
    dy_base = dy_ptr + pid_b * stride_dy_b + pid_h * stride_dy_h
    seq_base = seq_ptr + pid_b * stride_seq_b
    A = tl.load(A_ptr + pid_h).to(tl.float32)
    p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, N)
    state_offsets = p[:, None] * N + n[None, :]
    if HAS_DFINAL:
        dstate = tl.load(dfinal_ptr + bh * P * N + state_offsets).to(tl.float32)
    else:
        dstate = tl.zeros((BLOCK_P, N), tl.float32)
    n_blocks = tl.cdiv(L, BLOCK_T)
    # As in the forward, a block's dt and documents are read while the block after it is computed.
    dt_next = _block_dt(n_blocks - 1, L, dt_base, stride_dt_l, BLOCK_T)
    doc_next, doc_in_next, doc_last_next = _block_docs(n_blocks - 1, L, seq_base, stride_seq_l, HAS_SEQ, BLOCK_T)
    for i in range(0, n_blocks):
        c = n_blocks - 1 - i
        tl.store(dstates_ptr + (bh * n_blocks + c) * P * N + state_offsets,
                 dstate.to(dstates_ptr.dtype.element_ty))
        dt, doc, doc_in, doc_last = dt_next, doc_next, doc_in_next, doc_last_next
        dt_next = _block_dt(tl.maximum(c - 1, 0), L, dt_base, stride_dt_l, BLOCK_T)
        doc_next, doc_in_next, doc_last_next = _block_docs(tl.maximum(c - 1, 0), L, seq_base, stride_seq_l,
                                                           HAS_SEQ, BLOCK_T)
        t, valid, a = _block_sums(c, L, A, dt, BLOCK_T)
        dy = tl.load(dy_base + t[:, None] * stride_dy_l + p[None, :] * stride_dy_p, mask=valid[:, None], other=0.0)
        Cm = tl.load(C_base + t[:, None] * stride_C_l + n[None, :] * stride_C_n, mask=valid[:, None], other=0.0)
        _, from_start, _, survive = _block_decays(c, L, a, doc, doc_in, doc_last, BLOCK_T)
        dy_in = (dy.to(tl.float32) * from_start[:, None]).to(Cm.dtype)
        dstate = dstate * survive + tl.dot(tl.trans(dy_in), Cm)
    tl.store(dinit_ptr + bh * P * N + state_offsets, dstate)


@triton.jit
def _store_du(du, x, dy, dt, D_ptr, dx_ptr, ddt_x_ptr, dD_ptr, row_offsets, dx_rows, valid, p, pid_h, dD_index,
              share, n_shares, HAS_D: tl.constexpr):
    """From du = d(dt x) [BLOCK_T, BLOCK_P] (float32) of a block's columns ``p``: writes dx = du dt (+ D dy)
    to the rows ``dx_rows`` of dx (its columns ``p``), the columns' ``sum_p du x`` to share ``share`` of ddt_x [b, L, h, n_shares] and
    their sum of dy * x to dD (flat index ``dD_index``)."""
    xf = x.to(tl.float32)
    tl.store(ddt_x_ptr + row_offsets * n_shares + share, tl.sum(du * xf, axis=1), mask=valid)
    dx = du * dt[:, None]
    dD = tl.zeros((), tl.float32)
    if HAS_D:
        dyf = dy.to(tl.float32)
        dx += tl.load(D_ptr + pid_h).to(tl.float32) * dyf
        dD = tl.sum(tl.sum(dyf * xf, axis=1), axis=0)
    tl.store(dx_ptr + dx_rows[:, None] + p[None, :], dx.to(dx_ptr.dtype.element_ty), mask=valid[:, None])
    tl.store(dD_ptr + dD_index, dD)


@triton.jit
def _ssd_bwd_blocks_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, seq_ptr, dy_ptr, states_ptr, dstates_ptr,
    dx_ptr, da_ptr, ddt_x_ptr, dB_ptr, dC_ptr, dD_ptr,
    L, heads_per_group,
    stride_x_b, stride_x_l, stride_x_h, stride_x_p,
    stride_dt_b, stride_dt_l, stride_dt_h,
    stride_B_b, stride_B_l, stride_B_g, stride_B_n,
    stride_C_b, stride_C_l, stride_C_g, stride_C_n,
    stride_seq_b, stride_seq_l,
    stride_dy_b, stride_dy_l, stride_dy_h, stride_dy_p,
    stride_dx_b, stride_dx_l,
    HAS_D: tl.constexpr, HAS_SEQ: tl.constexpr, ATOMIC_BC: tl.constexpr,
    ONE_PASS: tl.constexpr, DX: tl.constexpr, BC: tl.constexpr, SIDE_BY_SIDE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, P: tl.constexpr, N: tl.constexpr,
):
    """The split backward's parallel part. Program (c * P // BLOCK_P + j, h, b) takes block c of head
    h, columns j * BLOCK_P ..., with the block's entering state S (states [b, h, blocks, P, N]) and the
    gradient G of its leaving state (dstates, same shape), and writes the block's share of the
    gradients. With ``DX``: dx [b, L, h, P] (its dtype; its columns; strides ``stride_dx_b``, ``stride_dx_l``,
    P, 1), its columns' share of
    ``sum_p d(dt x)_p x_p`` to ddt_x [b, L, h, P // BLOCK_P] float32 and its sum of dy * x to dD
    [b, h, blocks * P // BLOCK_P]. With ``BC``: its columns' share of the decay gradient ``da`` to da
    [b, L, h, P // BLOCK_P] float32, and its share of dB, dC added to dB, dC [b, L, g, N] float32
    (zeroed by the caller) with ``ATOMIC_BC``, else written to dB, dC [b, L, h, P // BLOCK_P, N] float32
    (for the caller to sum). The state dimension is taken BLOCK_N at a time, so only [BLOCK_T, BLOCK_N]
    tiles of B, C, dB and dC are live at once. ``ONE_PASS`` (with DX and BC): one loop over the state
    dimension for everything, all of its [BLOCK_T, BLOCK_T] tiles live together; else the dx part
    first, with its own loop, then the dB / dC part with another (fewer live tiles, B, C and G read
    twice), or either part alone (two launches). ``SIDE_BY_SIDE`` (with DX and BC): programs
    2 (c * P // BLOCK_P + j) and the next take the block, the first for the dx part, the second for
    the dB / dC part.

    With ``u_s = dt_s x_s``, ``decay[t, s] = exp(a_t - a_s)`` (s <= t, same document),
    ``from_start_t`` / ``to_end_s`` the decay from the block's start to t / from s to its end (zero
    outside the entering / leaving state's document) and ``gm[t, s] = (dy_t . u_s) decay[t, s]``:
    ``dB_s = sum_t gm[t, s] C_t + to_end_s u_s^T G``, ``dC_t = sum_s gm[t, s] B_s + from_start_t dy_t^T S``,
    ``du_s = sum_t (C_t . B_s) decay[t, s] dy_t + to_end_s G B_s``, ``dx = du dt (+ D dy)``; the decay
    gradient's share ``da_t = C_t . dC_t - B_t . dB_t`` (the sums over s of ``W[t, s]`` and ``W[s, t]``
    with the entering and leaving states' terms), plus at the last position the whole block's decay's
    ``sum_s to_end_s B_s . (u_s^T G) + survive sum(G S)``."""
    if SIDE_BY_SIDE:
        pid_j = tl.program_id(0) // 2
        dx_here = tl.program_id(0) % 2 == 0
        bc_here = tl.program_id(0) % 2 == 1
    else:
        pid_j = tl.program_id(0)
        dx_here = DX
        bc_here = BC
    pid_h = tl.program_id(1).to(tl.int64)
    pid_b = tl.program_id(2).to(tl.int64)
    nheads = tl.num_programs(1)
    n_pblocks = P // BLOCK_P
    c = pid_j // n_pblocks
    pid_p = pid_j % n_pblocks
    g = pid_h // heads_per_group
    bh = pid_b * nheads + pid_h
    ngroups = nheads // heads_per_group
    B_base = B_ptr + pid_b * stride_B_b + g * stride_B_g
    C_base = C_ptr + pid_b * stride_C_b + g * stride_C_g
    A = tl.load(A_ptr + pid_h).to(tl.float32)
    t, valid, dt, a, doc, doc_in, doc_last = _block_inputs(
        c, L, A, dt_ptr + pid_b * stride_dt_b + pid_h * stride_dt_h, stride_dt_l,
        seq_ptr + pid_b * stride_seq_b, stride_seq_l, HAS_SEQ, BLOCK_T)
    is_last, from_start, to_end, survive = _block_decays(c, L, a, doc, doc_in, doc_last, BLOCK_T)
    # The other gradient outputs are contiguous: [b, L, h, P // BLOCK_P], and dB, dC [b, L, g, N]
    # (atomic) or [b, L, h, P // BLOCK_P, N] (shares).
    row_offsets = (pid_b * L + t) * nheads + pid_h  # position t of head h in [b, L, h, ...]
    dx_rows = pid_b * stride_dx_b + t * stride_dx_l + pid_h * P
    if ATOMIC_BC:
        bc_rows = ((pid_b * L + t) * ngroups + g) * N
    else:
        bc_rows = (row_offsets * n_pblocks + pid_p) * N
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    x = tl.load(x_ptr + pid_b * stride_x_b + pid_h * stride_x_h + t[:, None] * stride_x_l + p[None, :] * stride_x_p,
                mask=valid[:, None], other=0.0)
    dy = tl.load(dy_ptr + pid_b * stride_dy_b + pid_h * stride_dy_h + t[:, None] * stride_dy_l
                 + p[None, :] * stride_dy_p, mask=valid[:, None], other=0.0)
    state_base = (bh * tl.cdiv(L, BLOCK_T) + c) * P * N + p[:, None] * N
    dD_index = bh * tl.cdiv(L, BLOCK_T) * n_pblocks + pid_j
    if ONE_PASS:
        u = (x.to(tl.float32) * dt[:, None]).to(x.dtype)
        decay = _decay_matrix(a, doc, BLOCK_T)  # [t, s]
        gm = tl.dot(dy, tl.trans(u)) * decay  # [t, s]
        gm_lp = gm.to(x.dtype)
        gm_t = tl.trans(gm_lp)
        # Sums over the state dimension, gathered chunk by chunk.
        cb = tl.zeros((BLOCK_T, BLOCK_T), tl.float32)  # C_t . B_s
        bg = tl.zeros((BLOCK_T, BLOCK_P), tl.float32)  # [s, p]: G B_s
        through_leaving = tl.zeros((BLOCK_T,), tl.float32)  # B_s . (u_s^T G)
        through_entering = tl.zeros((BLOCK_T,), tl.float32)  # C_t . (dy_t^T S)
        state_pair = tl.zeros((BLOCK_P,), tl.float32)  # sum_n G S, per column
        for k in range(0, N, BLOCK_N):
            n = k + tl.arange(0, BLOCK_N)
            Bm = tl.load(B_base + t[:, None] * stride_B_l + n[None, :] * stride_B_n, mask=valid[:, None], other=0.0)
            Cm = tl.load(C_base + t[:, None] * stride_C_l + n[None, :] * stride_C_n, mask=valid[:, None], other=0.0)
            S = tl.load(states_ptr + state_base + n[None, :])
            G = tl.load(dstates_ptr + state_base + n[None, :])
            state_pair += tl.sum(G.to(tl.float32) * S.to(tl.float32), axis=1)
            G = G.to(x.dtype)
            cb = tl.dot(Cm, tl.trans(Bm), acc=cb)
            bg = tl.dot(Bm, tl.trans(G), acc=bg)
            u_g = tl.dot(u, G)  # [s, BLOCK_N]: u_s^T G
            through_leaving += tl.sum(Bm.to(tl.float32) * u_g, axis=1)
            dB = tl.dot(gm_t, Cm, acc=u_g * to_end[:, None])
            if ATOMIC_BC:
                tl.atomic_add(dB_ptr + bc_rows[:, None] + n[None, :], dB, mask=valid[:, None], sem="relaxed")
            else:
                tl.store(dB_ptr + bc_rows[:, None] + n[None, :], dB, mask=valid[:, None])
            dy_s = tl.dot(dy, S.to(x.dtype))  # [t, BLOCK_N]: dy_t^T S
            through_entering += tl.sum(Cm.to(tl.float32) * dy_s, axis=1)
            dC = tl.dot(gm_lp, Bm, acc=dy_s * from_start[:, None])
            if ATOMIC_BC:
                tl.atomic_add(dC_ptr + bc_rows[:, None] + n[None, :], dC, mask=valid[:, None], sem="relaxed")
            else:
                tl.store(dC_ptr + bc_rows[:, None] + n[None, :], dC, mask=valid[:, None])
        # This program's columns' share of the gradient of the within-block cumulative decay a.
        w = gm * cb
        v = through_leaving * to_end
        da = tl.sum(w, axis=1) - tl.sum(w, axis=0) + through_entering * from_start - v
        da += tl.where(is_last, tl.sum(v, axis=0) + survive * tl.sum(state_pair, axis=0), 0.0)
        tl.store(da_ptr + row_offsets * n_pblocks + pid_p, da, mask=valid)
        # d(dt_s x_s): inside the block and through the leaving state.
        du = tl.dot(tl.trans((cb * decay).to(x.dtype)), dy, acc=bg * to_end[:, None])
        _store_du(du, x, dy, dt, D_ptr, dx_ptr, ddt_x_ptr, dD_ptr, row_offsets, dx_rows, valid, p, pid_h, dD_index,
                  pid_p, n_pblocks, HAS_D)
    else:
        if dx_here:
            # du with [s, t] tiles, so no product needs a transposed operand.
            cb_t = tl.zeros((BLOCK_T, BLOCK_T), tl.float32)  # [s, t]: B_s . C_t
            bg = tl.zeros((BLOCK_T, BLOCK_P), tl.float32)  # [s, p]: G B_s
            for k in range(0, N, BLOCK_N):
                n = k + tl.arange(0, BLOCK_N)
                Bm = tl.load(B_base + t[:, None] * stride_B_l + n[None, :] * stride_B_n, mask=valid[:, None],
                             other=0.0)
                Cm = tl.load(C_base + t[:, None] * stride_C_l + n[None, :] * stride_C_n, mask=valid[:, None],
                             other=0.0)
                G = tl.load(dstates_ptr + state_base + n[None, :]).to(x.dtype)
                cb_t = tl.dot(Bm, tl.trans(Cm), acc=cb_t)
                bg = tl.dot(Bm, tl.trans(G), acc=bg)
            decay_t = _decay_matrix(a, doc, BLOCK_T, TRANSPOSED=True)
            du = tl.dot((cb_t * decay_t).to(x.dtype), dy, acc=bg * to_end[:, None])
            _store_du(du, x, dy, dt, D_ptr, dx_ptr, ddt_x_ptr, dD_ptr, row_offsets, dx_rows, valid, p, pid_h,
                      dD_index, pid_p, n_pblocks, HAS_D)
        if bc_here:
            u = (x.to(tl.float32) * dt[:, None]).to(x.dtype)
            gm_lp = (tl.dot(dy, tl.trans(u)) * _decay_matrix(a, doc, BLOCK_T)).to(x.dtype)  # [t, s]
            gm_t = tl.trans(gm_lp)
            da = tl.zeros((BLOCK_T,), tl.float32)
            v = tl.zeros((BLOCK_T,), tl.float32)  # to_end_s B_s . (u_s^T G)
            state_pair = tl.zeros((BLOCK_P,), tl.float32)  # sum_n G S, per column
            for k in range(0, N, BLOCK_N):
                n = k + tl.arange(0, BLOCK_N)
                Bm = tl.load(B_base + t[:, None] * stride_B_l + n[None, :] * stride_B_n, mask=valid[:, None],
                             other=0.0)
                Cm = tl.load(C_base + t[:, None] * stride_C_l + n[None, :] * stride_C_n, mask=valid[:, None],
                             other=0.0)
                S = tl.load(states_ptr + state_base + n[None, :])
                G = tl.load(dstates_ptr + state_base + n[None, :])
                state_pair += tl.sum(G.to(tl.float32) * S.to(tl.float32), axis=1)
                leaving = tl.dot(u, G.to(x.dtype)) * to_end[:, None]  # [s, BLOCK_N]: to_end_s u_s^T G
                v += tl.sum(Bm.to(tl.float32) * leaving, axis=1)
                # In da's share C_t . dC_t - B_t . dB_t the in-block terms gm[t, s] (C_t . B_s) of the two
                # sides cancel over the block in da's reverse cumulative sum, whose result is small where the
                # decay is fast. In float32, plain TF32 products would round B in dC and C in dB, unlike the
                # C and B they meet here, and leave up to 1e-3 of every term (far more of dA and ddt, which
                # is what tests/gpu/test_gpu_ssd.py saw); so B and C count in full in both products.
                dB = _dot_exact_rhs(gm_t, Cm, leaving)
                dC = _dot_exact_rhs(gm_lp, Bm, tl.dot(dy, S.to(x.dtype)) * from_start[:, None])
                da += tl.sum(Cm.to(tl.float32) * dC - Bm.to(tl.float32) * dB, axis=1)
                if ATOMIC_BC:
                    tl.atomic_add(dB_ptr + bc_rows[:, None] + n[None, :], dB, mask=valid[:, None], sem="relaxed")
                    tl.atomic_add(dC_ptr + bc_rows[:, None] + n[None, :], dC, mask=valid[:, None], sem="relaxed")
                else:
                    tl.store(dB_ptr + bc_rows[:, None] + n[None, :], dB, mask=valid[:, None])
                    tl.store(dC_ptr + bc_rows[:, None] + n[None, :], dC, mask=valid[:, None])
            da += tl.where(is_last, tl.sum(v, axis=0) + survive * tl.sum(state_pair, axis=0), 0.0)
            tl.store(da_ptr + row_offsets * n_pblocks + pid_p, da, mask=valid)


@triton.jit
def _ssd_bwd_bc_heads_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, seq_ptr, dy_ptr, states_ptr, dstates_ptr, da_ptr, dB_ptr, dC_ptr,
    L, heads_per_group,
    stride_x_b, stride_x_l, stride_x_h, stride_x_p,
    stride_dt_b, stride_dt_l, stride_dt_h,
    stride_B_b, stride_B_l, stride_B_g, stride_B_n,
    stride_C_b, stride_C_l, stride_C_g, stride_C_n,
    stride_seq_b, stride_seq_l,
    stride_dy_b, stride_dy_l, stride_dy_h, stride_dy_p,
    HAS_SEQ: tl.constexpr, ATOMIC_BC: tl.constexpr, HEADS: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, P: tl.constexpr, N: tl.constexpr,
):
    """The dB / dC part of :func:`_ssd_bwd_blocks_kernel` (same algebra and inputs) with ``HEADS`` heads of
    one group per program: program ((c * P // BLOCK_P + j) * N // BLOCK_N + k, i, b) takes block c,
    columns j * BLOCK_P ... of heads i * HEADS ... and state columns k * BLOCK_N ..., so B and C are read
    once for its heads, whose in-block terms take one product each (``dB_s = sum_t (sum_h gm_h[t, s]) C_t +
    ...``), and their dB, dC are summed in registers before one atomic add to dB, dC [b, L, g, N] float32
    (zeroed by the caller) with ``ATOMIC_BC``, else one write to dB, dC [b, L, h // HEADS, P // BLOCK_P, N]
    float32 (for the caller to sum). Each head's block product ``gm`` is recomputed by the N // BLOCK_N
    programs of its state columns. Writes each head's share of the decay gradient (``W = gm * C.B`` over
    the program's state columns, as in the one-pass part) to da [b, L, h, P // BLOCK_P * N // BLOCK_N]
    float32 (share j * N // BLOCK_N + k)."""
    pid = tl.program_id(0)
    pid_b = tl.program_id(2).to(tl.int64)
    n_chunks = N // BLOCK_N
    n_pblocks = P // BLOCK_P
    pid_k = pid % n_chunks
    pid_p = (pid // n_chunks) % n_pblocks
    c = pid // (n_chunks * n_pblocks)
    h0 = tl.program_id(1).to(tl.int64) * HEADS
    g = h0 // heads_per_group
    nheads = tl.num_programs(1) * HEADS
    t = c * BLOCK_T + tl.arange(0, BLOCK_T)
    valid = t < L
    n = pid_k * BLOCK_N + tl.arange(0, BLOCK_N)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    Bm = tl.load(B_ptr + pid_b * stride_B_b + g * stride_B_g + t[:, None] * stride_B_l + n[None, :] * stride_B_n,
                 mask=valid[:, None], other=0.0)
    Cm = tl.load(C_ptr + pid_b * stride_C_b + g * stride_C_g + t[:, None] * stride_C_l + n[None, :] * stride_C_n,
                 mask=valid[:, None], other=0.0)
    Bf = Bm.to(tl.float32)
    Cf = Cm.to(tl.float32)
    cb = tl.dot(Cm, tl.trans(Bm))  # [t, s]: this chunk's share of C_t . B_s
    gm_sum = tl.zeros((BLOCK_T, BLOCK_T), tl.float32)  # the heads' gm, summed
    leaving_sum = tl.zeros((BLOCK_T, BLOCK_N), tl.float32)  # [s, BLOCK_N]: dB through the leaving states
    entering_sum = tl.zeros((BLOCK_T, BLOCK_N), tl.float32)  # [t, BLOCK_N]: dC through the entering states
    for i in range(0, HEADS):
        h = h0 + i
        A = tl.load(A_ptr + h).to(tl.float32)
        _, _, dt, a, doc, doc_in, doc_last = _block_inputs(
            c, L, A, dt_ptr + pid_b * stride_dt_b + h * stride_dt_h, stride_dt_l,
            seq_ptr + pid_b * stride_seq_b, stride_seq_l, HAS_SEQ, BLOCK_T)
        is_last, from_start, to_end, survive = _block_decays(c, L, a, doc, doc_in, doc_last, BLOCK_T)
        x = tl.load(x_ptr + pid_b * stride_x_b + h * stride_x_h + t[:, None] * stride_x_l + p[None, :] * stride_x_p,
                    mask=valid[:, None], other=0.0)
        dy = tl.load(dy_ptr + pid_b * stride_dy_b + h * stride_dy_h + t[:, None] * stride_dy_l
                     + p[None, :] * stride_dy_p, mask=valid[:, None], other=0.0)
        u = (x.to(tl.float32) * dt[:, None]).to(x.dtype)
        gm = tl.dot(dy, tl.trans(u)) * _decay_matrix(a, doc, BLOCK_T)  # [t, s]
        gm_sum += gm
        state_offsets = ((pid_b * nheads + h) * tl.cdiv(L, BLOCK_T) + c) * P * N + p[:, None] * N + n[None, :]
        S = tl.load(states_ptr + state_offsets)
        G = tl.load(dstates_ptr + state_offsets)
        leaving = tl.dot(u, G.to(x.dtype)) * to_end[:, None]  # [s, BLOCK_N]: to_end_s u_s^T G
        entering = tl.dot(dy, S.to(x.dtype)) * from_start[:, None]  # [t, BLOCK_N]: from_start_t dy_t^T S
        leaving_sum += leaving
        entering_sum += entering
        # This head's da_t = C_t . dC_t - B_t . dB_t over this chunk of the state, from its own terms.
        w = gm * cb
        v = tl.sum(Bf * leaving, axis=1)
        da = tl.sum(w, axis=1) - tl.sum(w, axis=0) + tl.sum(Cf * entering, axis=1) - v
        last = tl.sum(v, axis=0) + survive * tl.sum(tl.sum(G.to(tl.float32) * S.to(tl.float32), axis=1), axis=0)
        da += tl.where(is_last, last, 0.0)
        tl.store(da_ptr + ((pid_b * L + t) * nheads + h) * n_pblocks * n_chunks + pid_p * n_chunks + pid_k, da,
                 mask=valid)
    # B and C are the same for every head of the group: the heads' in-block terms in one product each.
    gm_lp = gm_sum.to(Bm.dtype)
    dB_sum = tl.dot(tl.trans(gm_lp), Cm, acc=leaving_sum)
    dC_sum = tl.dot(gm_lp, Bm, acc=entering_sum)
    if ATOMIC_BC:
        rows = ((pid_b * L + t) * (nheads // heads_per_group) + g) * N
        tl.atomic_add(dB_ptr + rows[:, None] + n[None, :], dB_sum, mask=valid[:, None], sem="relaxed")
        tl.atomic_add(dC_ptr + rows[:, None] + n[None, :], dC_sum, mask=valid[:, None], sem="relaxed")
    else:
        rows = (((pid_b * L + t) * tl.num_programs(1) + tl.program_id(1)) * n_pblocks + pid_p) * N
        tl.store(dB_ptr + rows[:, None] + n[None, :], dB_sum, mask=valid[:, None])
        tl.store(dC_ptr + rows[:, None] + n[None, :], dC_sum, mask=valid[:, None])


@triton.jit
def _head_block(h, c, pid_b, L, nheads, t, valid, p, n, doc, doc_in, doc_last, A_ptr, dt_ptr, x_ptr, dy_ptr,
                states_ptr, dstates_ptr, stride_dt_b, stride_dt_l, stride_dt_h,
                stride_x_b, stride_x_l, stride_x_h, stride_x_p, stride_dy_b, stride_dy_l, stride_dy_h, stride_dy_p,
                BLOCK_T: tl.constexpr, P: tl.constexpr, N: tl.constexpr):
    """What the head-looping launches read of head h in block c (positions t, head-dim columns p, state
    columns n; the block's documents as :func:`_block_docs` gives them): its step dt and the within-block
    decay sums a [BLOCK_T] (:func:`_block_steps`), is_last, from_start, to_end and survive
    (:func:`_block_decays`), x and dy [BLOCK_T, columns], and the block's entering state S and its leaving
    state's gradient G [columns, state columns] as stored."""
    A = tl.load(A_ptr + h).to(tl.float32)
    _, _, dt, a = _block_steps(c, L, A, dt_ptr + pid_b * stride_dt_b + h * stride_dt_h, stride_dt_l, BLOCK_T)
    is_last, from_start, to_end, survive = _block_decays(c, L, a, doc, doc_in, doc_last, BLOCK_T)
    x = tl.load(x_ptr + pid_b * stride_x_b + h * stride_x_h + t[:, None] * stride_x_l + p[None, :] * stride_x_p,
                mask=valid[:, None], other=0.0)
    dy = tl.load(dy_ptr + pid_b * stride_dy_b + h * stride_dy_h + t[:, None] * stride_dy_l + p[None, :] * stride_dy_p,
                 mask=valid[:, None], other=0.0)
    state_offsets = ((pid_b * nheads + h) * tl.cdiv(L, BLOCK_T) + c) * P * N + p[:, None] * N + n[None, :]
    return (dt, a, is_last, from_start, to_end, survive, x, dy, tl.load(states_ptr + state_offsets),
            tl.load(dstates_ptr + state_offsets))


@triton.jit
def _ssd_bwd_dx_heads_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, seq_ptr, dy_ptr, states_ptr, dstates_ptr,
    dx_ptr, da_ptr, ddt_x_ptr, dD_ptr,
    L, heads_per_group,
    stride_x_b, stride_x_l, stride_x_h, stride_x_p,
    stride_dt_b, stride_dt_l, stride_dt_h,
    stride_B_b, stride_B_l, stride_B_g, stride_B_n,
    stride_C_b, stride_C_l, stride_C_g, stride_C_n,
    stride_seq_b, stride_seq_l,
    stride_dy_b, stride_dy_l, stride_dy_h, stride_dy_p,
    stride_dx_b, stride_dx_l, da_shares,
    HAS_D: tl.constexpr, HAS_SEQ: tl.constexpr, HEADS: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, P: tl.constexpr, N: tl.constexpr,
):
    """The head-looping backward's first launch: program (c * P // BLOCK_P + j, i, b) takes block c and
    columns j * BLOCK_P ... of heads i * HEADS ... (one group), computes ``C.B`` once for them and walks
    them one after another, writing each head's dx, ddt_x, dD share (as :func:`_store_du`) and its columns'
    share j of the decay gradient to da [b, L, h, da_shares] float32 (all of it but the entering state's
    survival term, which the dB / dC launch adds), with no sum over heads.

    With ``M = (C.B) * decay`` [t, s], ``u = dt x``, the block's entering state S and the gradient G of
    its leaving state: ``du = M^T dy + to_end (B G^T)`` (dx's), and the decay gradient's in-block terms
    ``sum_s W[t, s] - sum_s W[s, t]`` (``W[t, s] = gm[t, s] (C_t . B_s)``, module docstring) are row sums
    over the head dim, ``dy_t . (M u)_t - u_t . (M^T dy)_t``; the states' terms too:
    ``from_start_t dy_t . (C S^T)_t - to_end_t u_t . (B G^T)_t``. So ``da_t = dy_t . y'_t - u_t . du_t``
    with ``y' = M u + from_start (C S^T)`` (y without D), plus at the block's last position
    ``sum_s to_end_s u_s . (B G^T)_s`` (and ``survive sum(G S)``, :func:`_ssd_bwd_dbc_heads_kernel`'s)."""
    pid_j = tl.program_id(0)
    pid_b = tl.program_id(2).to(tl.int64)
    h0 = tl.program_id(1).to(tl.int64) * HEADS
    nheads = tl.num_programs(1) * HEADS
    n_pblocks = P // BLOCK_P
    c = pid_j // n_pblocks
    pid_p = pid_j % n_pblocks
    g = h0 // heads_per_group
    t = c * BLOCK_T + tl.arange(0, BLOCK_T)
    valid = t < L
    n = tl.arange(0, N)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    Bm = tl.load(B_ptr + pid_b * stride_B_b + g * stride_B_g + t[:, None] * stride_B_l + n[None, :] * stride_B_n,
                 mask=valid[:, None], other=0.0)
    Cm = tl.load(C_ptr + pid_b * stride_C_b + g * stride_C_g + t[:, None] * stride_C_l + n[None, :] * stride_C_n,
                 mask=valid[:, None], other=0.0)
    doc, doc_in, doc_last = _block_docs(c, L, seq_ptr + pid_b * stride_seq_b, stride_seq_l, HAS_SEQ, BLOCK_T)
    # [t, s]: C_t . B_s where s <= t in the same document, the same for every head of the group.
    cb = tl.where(_kept(doc, BLOCK_T), tl.dot(Cm, tl.trans(Bm)), 0.0)
    n_blocks = tl.cdiv(L, BLOCK_T)
    for i in range(0, HEADS):
        h = h0 + i
        dt, a, is_last, from_start, to_end, _, x, dy, S, G = _head_block(
            h, c, pid_b, L, nheads, t, valid, p, n, doc, doc_in, doc_last, A_ptr, dt_ptr, x_ptr, dy_ptr,
            states_ptr, dstates_ptr, stride_dt_b, stride_dt_l, stride_dt_h,
            stride_x_b, stride_x_l, stride_x_h, stride_x_p, stride_dy_b, stride_dy_l, stride_dy_h, stride_dy_p,
            BLOCK_T, P, N)
        # Both products of M take the other side in full (float32: not rounded to TF32), so the in-block
        # terms of da, which cancel over the block in its reverse cumulative sum, meet one rounded M,
        # and u and dy are the same on both sides.
        m = (cb * _decay_unmasked(a)).to(x.dtype)  # [t, s]
        u = (x.to(tl.float32) * dt[:, None]).to(x.dtype)
        bg = tl.dot(Bm, tl.trans(G.to(x.dtype)))  # [s, p]: G B_s
        du = _dot_exact_rhs(tl.trans(m), dy, bg * to_end[:, None])
        uf = u.to(tl.float32)
        v = tl.sum(uf * bg, axis=1) * to_end  # to_end_s u_s . (B G^T)_s
        y_pre = _dot_exact_rhs(m, u, tl.dot(Cm, tl.trans(S.to(x.dtype))) * from_start[:, None])
        da = tl.sum(dy.to(tl.float32) * y_pre - uf * du, axis=1)
        da += tl.where(is_last, tl.sum(v, axis=0), 0.0)
        row_offsets = (pid_b * L + t) * nheads + h
        tl.store(da_ptr + row_offsets * da_shares + pid_p, da, mask=valid)
        _store_du(du, x, dy, dt, D_ptr, dx_ptr, ddt_x_ptr, dD_ptr, row_offsets,
                  pid_b * stride_dx_b + t * stride_dx_l + h * P, valid, p, h,
                  (pid_b * nheads + h) * n_blocks * n_pblocks + pid_j, pid_p, n_pblocks, HAS_D)


@triton.jit
def _ssd_bwd_dbc_heads_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, seq_ptr, dy_ptr, states_ptr, dstates_ptr, dB_ptr, dC_ptr, da_ptr,
    L, heads_per_group, da_shares, da_share,
    stride_x_b, stride_x_l, stride_x_h, stride_x_p,
    stride_dt_b, stride_dt_l, stride_dt_h,
    stride_B_b, stride_B_l, stride_B_g, stride_B_n,
    stride_C_b, stride_C_l, stride_C_g, stride_C_n,
    stride_seq_b, stride_seq_l,
    stride_dy_b, stride_dy_l, stride_dy_h, stride_dy_p,
    ATOMIC_BC: tl.constexpr, HAS_SEQ: tl.constexpr, HEADS: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, P: tl.constexpr, N: tl.constexpr,
):
    """The head-looping backward's second launch: dB and dC summed over heads, nothing per head. Program
    (c * N // BLOCK_N + k, i, b) takes block c, state columns k * BLOCK_N ... and heads i * HEADS ... of
    one group. ``dB_s = sum_t GM[t, s] C_t + sum_h to_end_s (u_s^T G)_h`` and ``dC_t = sum_s GM[t, s] B_s +
    sum_h from_start_t (dy_t^T S)_h`` with ``GM = sum_h gm_h``: per head one [t, s] product, summed, and two
    products that add into the same accumulators (a matrix product over heads x head dim); B and C meet
    GM once at the end. Adds the program's sums to dB, dC [b, L, g, N] float32 (zeroed by the caller) with
    ``ATOMIC_BC``, else writes them to dB, dC [b, L, g, heads_per_group // HEADS, N] float32 (for the
    caller to sum). Also each head's decay-gradient term of the entering state's survival over the
    program's state columns, ``survive sum(G S)`` (S and G are loaded here anyway), at the block's last
    position, 0 at its others, in share ``da_share + k`` of da [b, L, h, da_shares] float32."""
    pid_b = tl.program_id(2).to(tl.int64)
    n_chunks = N // BLOCK_N
    c = tl.program_id(0) // n_chunks
    pid_k = tl.program_id(0) % n_chunks
    h0 = tl.program_id(1).to(tl.int64) * HEADS
    nheads = tl.num_programs(1) * HEADS
    g = h0 // heads_per_group
    t = c * BLOCK_T + tl.arange(0, BLOCK_T)
    valid = t < L
    n = pid_k * BLOCK_N + tl.arange(0, BLOCK_N)
    p = tl.arange(0, P)
    gm_sum = tl.zeros((BLOCK_T, BLOCK_T), tl.float32)  # [t, s]
    leaving_sum = tl.zeros((BLOCK_T, BLOCK_N), tl.float32)  # [s, BLOCK_N]
    entering_sum = tl.zeros((BLOCK_T, BLOCK_N), tl.float32)  # [t, BLOCK_N]
    doc, doc_in, doc_last = _block_docs(c, L, seq_ptr + pid_b * stride_seq_b, stride_seq_l, HAS_SEQ, BLOCK_T)
    for i in range(0, HEADS):
        h = h0 + i
        dt, a, is_last, from_start, to_end, survive, x, dy, S, G = _head_block(
            h, c, pid_b, L, nheads, t, valid, p, n, doc, doc_in, doc_last, A_ptr, dt_ptr, x_ptr, dy_ptr,
            states_ptr, dstates_ptr, stride_dt_b, stride_dt_l, stride_dt_h,
            stride_x_b, stride_x_l, stride_x_h, stride_x_p, stride_dy_b, stride_dy_l, stride_dy_h, stride_dy_p,
            BLOCK_T, P, N)
        survival = survive * tl.sum(tl.sum(G.to(tl.float32) * S.to(tl.float32), axis=1), axis=0)
        tl.store(da_ptr + ((pid_b * L + t) * nheads + h) * da_shares + da_share + pid_k,
                 tl.where(is_last, survival, 0.0), mask=valid)
        S = S.to(x.dtype)
        G = G.to(x.dtype)
        # gm[t, s] = (dy_t . x_s) dt_s decay[t, s]: x as loaded, dt with the decay, masked after the loop.
        gm_sum += tl.dot(dy, tl.trans(x)) * (_decay_unmasked(a) * dt[None, :])
        xf = x.to(tl.float32)
        leaving_sum = tl.dot((xf * (dt * to_end)[:, None]).to(x.dtype), G, acc=leaving_sum)
        entering_sum = tl.dot((dy.to(tl.float32) * from_start[:, None]).to(x.dtype), S, acc=entering_sum)
    Bm = tl.load(B_ptr + pid_b * stride_B_b + g * stride_B_g + t[:, None] * stride_B_l + n[None, :] * stride_B_n,
                 mask=valid[:, None], other=0.0)
    Cm = tl.load(C_ptr + pid_b * stride_C_b + g * stride_C_g + t[:, None] * stride_C_l + n[None, :] * stride_C_n,
                 mask=valid[:, None], other=0.0)
    gm_lp = tl.where(_kept(doc, BLOCK_T), gm_sum, 0.0).to(Bm.dtype)
    dB = tl.dot(tl.trans(gm_lp), Cm, acc=leaving_sum)
    dC = tl.dot(gm_lp, Bm, acc=entering_sum)
    ngroups = nheads // heads_per_group
    if ATOMIC_BC:
        rows = ((pid_b * L + t) * ngroups + g) * N
        tl.atomic_add(dB_ptr + rows[:, None] + n[None, :], dB, mask=valid[:, None], sem="relaxed")
        tl.atomic_add(dC_ptr + rows[:, None] + n[None, :], dC, mask=valid[:, None], sem="relaxed")
    else:
        splits = heads_per_group // HEADS
        rows = (((pid_b * L + t) * ngroups + g) * splits + (h0 % heads_per_group) // HEADS) * N
        tl.store(dB_ptr + rows[:, None] + n[None, :], dB, mask=valid[:, None])
        tl.store(dC_ptr + rows[:, None] + n[None, :], dC, mask=valid[:, None])


def _blocking(cfg: tuple[int, ...]) -> tuple[int, int, dict]:
    """(block_t, block_p, warps[, register cap per thread]) -> block_t, block_p, launch options."""
    launch = {"num_warps": cfg[2]}
    if len(cfg) > 3 and cfg[3]:
        launch["maxnreg"] = cfg[3]
    return cfg[0], cfg[1], launch


def _fwd(x, dt, A, B, C, D, initial_states, seq_idx, cfg, write_y: bool = True, state_every: int = 0):
    """y [b, L, h, P] in x's dtype (None without ``write_y``), the final state [b, h, P, N] float32, and
    with ``state_every`` k > 0 the state entering every k-th block, [b, h, ceil(blocks / k), P, N] in
    x's dtype (else None)."""
    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    block_t, block_p, launch = _blocking(cfg)
    y = torch.empty_like(x) if write_y else x  # x: a pointer left unwritten
    final = torch.empty(batch, nheads, headdim, dstate, device=x.device, dtype=torch.float32)
    kept = triton.cdiv(triton.cdiv(seqlen, block_t), state_every) if state_every else 0
    # The states feed the backward's matrix products in x's dtype, so they are kept in it.
    states = (torch.empty(batch, nheads, kept, headdim, dstate, device=x.device, dtype=x.dtype)
              if state_every else None)
    seq = seq_idx if seq_idx is not None else dt  # any pointer: unread without seq_idx
    _ssd_fwd_kernel[(batch, nheads, headdim // block_p)](
        x, dt, A, B, C, D if D is not None else A, seq,
        initial_states if initial_states is not None else final, y, final, final if states is None else states,
        seqlen, nheads // ngroups,
        *x.stride(), *dt.stride(), *B.stride(), *C.stride(),
        *(seq_idx.stride() if seq_idx is not None else (0, 0)), *y.stride(),
        HAS_D=D is not None, HAS_SEQ=seq_idx is not None, HAS_INIT=initial_states is not None,
        WRITE_Y=write_y, STATE_EVERY=state_every, BLOCK_T=block_t, BLOCK_P=block_p, P=headdim, N=dstate,
        **launch,
    )
    return (y if write_y else None), final, states


@triton.jit
def _steps_kernel(raw_ptr, bias_ptr, out_ptr, rows, L, H, stride_b, stride_l, stride_h, lo, hi,
                  HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, CLAMP: tl.constexpr,
                  BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr):
    """Rows ``pid * BLOCK_R ...`` (r = b * L + l) of the step [b * L, H] float32 (contiguous) from dt
    [b, L, H] (any strides, any float dtype) and its bias [H]."""
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    h = tl.arange(0, BLOCK_H)
    ok = (r < rows)[:, None] & (h < H)[None, :]
    raw = tl.load(raw_ptr + ((r // L) * stride_b + (r % L) * stride_l)[:, None] + h[None, :] * stride_h, mask=ok,
                  other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw += tl.load(bias_ptr + h, mask=h < H, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + r[:, None] * H + h[None, :], step(raw, lo, hi, SOFTPLUS, CLAMP), mask=ok)


@triton.jit
def _step_grads_kernel(
    da_ptr, ddt_x_ptr, raw_ptr, bias_ptr, A_ptr, ddt_ptr, parts_ptr,
    L, da_shares, x_shares,
    stride_raw_b, stride_raw_l, stride_raw_h, stride_ddt_b, stride_ddt_l, stride_ddt_h, lo, hi,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, CLAMP: tl.constexpr,
    BLOCK_T: tl.constexpr, DA_SHARES: tl.constexpr, X_SHARES: tl.constexpr,
):
    """Program (c, h, b): block c of head h. From the backward's shares of the decay gradient ``da`` and of
    ``sum_p d(dt x)_p x_p`` (da [b, L, h, da_shares], ddt_x [b, L, h, x_shares], float32, contiguous): d(dt_t A)
    is the reverse cumulative sum of da over the rest of t's block; writes the gradient of the raw dt (before
    bias, softplus and clamp) to ddt [b, L, h] (any strides, its dtype), and this block's shares of dA
    (``sum_t d(dt_t A) dt_t``) and of the bias' gradient to parts [2, b, blocks, h]."""
    c = tl.program_id(0)
    pid_h = tl.program_id(1).to(tl.int64)
    pid_b = tl.program_id(2).to(tl.int64)
    nheads = tl.num_programs(1)
    t = c * BLOCK_T + tl.arange(0, BLOCK_T)
    valid = t < L
    rows = (pid_b * L + t) * nheads + pid_h
    k = tl.arange(0, DA_SHARES)
    da = tl.sum(tl.load(da_ptr + rows[:, None] * da_shares + k[None, :], mask=valid[:, None] & (k < da_shares)[None, :],
                        other=0.0), axis=1)
    d_dA = tl.cumsum(da, 0, reverse=True)
    j = tl.arange(0, X_SHARES)
    ddt = d_dA * tl.load(A_ptr + pid_h).to(tl.float32) + tl.sum(
        tl.load(ddt_x_ptr + rows[:, None] * x_shares + j[None, :], mask=valid[:, None] & (j < x_shares)[None, :],
                other=0.0), axis=1)
    raw = tl.load(raw_ptr + pid_b * stride_raw_b + t * stride_raw_l + pid_h * stride_raw_h, mask=valid,
                  other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw += tl.load(bias_ptr + pid_h).to(tl.float32)
    ddt_raw = tl.where(valid, ddt * step_grad(raw, lo, hi, SOFTPLUS, CLAMP), 0.0)
    tl.store(ddt_ptr + pid_b * stride_ddt_b + t * stride_ddt_l + pid_h * stride_ddt_h,
             ddt_raw.to(ddt_ptr.dtype.element_ty), mask=valid)
    part = (pid_b * tl.num_programs(0) + c) * nheads + pid_h
    tl.store(parts_ptr + part, tl.sum(tl.where(valid, d_dA * step(raw, lo, hi, SOFTPLUS, CLAMP), 0.0), axis=0))
    tl.store(parts_ptr + tl.num_programs(2) * tl.num_programs(0) * nheads + part, tl.sum(ddt_raw, axis=0))


@dataclass(frozen=True)
class Steps:
    """dt as the model hands it over and what turns it into the scan's step
    (:func:`kotomamba.ops.ssd.step_size`): ``raw`` [b, L, h] (any strides, any float dtype), ``bias`` [h] or
    None, softplus or not, the clamp's bounds."""

    raw: torch.Tensor
    bias: torch.Tensor | None
    softplus: bool
    limit: tuple[float, float]

    def _flags(self) -> dict:
        return {"HAS_BIAS": self.bias is not None, "SOFTPLUS": self.softplus,
                "CLAMP": tuple(self.limit) != DEFAULT_DT_LIMIT}

    def steps(self) -> torch.Tensor:
        """The step, float32 [b, L, h] contiguous, in one launch."""
        batch, seqlen, nheads = self.raw.shape
        out = torch.empty(batch, seqlen, nheads, device=self.raw.device, dtype=torch.float32)
        block_r = 64
        _steps_kernel[(triton.cdiv(batch * seqlen, block_r),)](
            self.raw, self.bias if self.bias is not None else self.raw, out, batch * seqlen, seqlen, nheads,
            *self.raw.stride(), *map(float, self.limit), **self._flags(), BLOCK_R=block_r,
            BLOCK_H=triton.next_power_of_2(nheads),
        )
        return out

    def grads(self, A, da, ddt_x, block_t: int, ddt: torch.Tensor | None):
        """From a backward launch's shares of ``da`` and ``ddt_x`` (:func:`_step_grads_kernel`) in blocks of
        ``block_t`` positions: the gradient of ``raw`` (written to ``ddt`` [b, L, h] if given, else to a new
        tensor in raw's dtype), of A [h] and of the bias [h] (None without one), both float32."""
        batch, seqlen, nheads = self.raw.shape
        n_blocks = triton.cdiv(seqlen, block_t)
        if ddt is None:
            ddt = torch.empty_like(self.raw, memory_format=torch.contiguous_format)
        parts = torch.empty(2, batch * n_blocks, nheads, device=da.device, dtype=torch.float32)
        _step_grads_kernel[(n_blocks, nheads, batch)](
            da, ddt_x, self.raw, self.bias if self.bias is not None else A, A, ddt, parts,
            seqlen, da.shape[-1], ddt_x.shape[-1], *self.raw.stride(), *ddt.stride(), *map(float, self.limit),
            **self._flags(), BLOCK_T=block_t, DA_SHARES=triton.next_power_of_2(da.shape[-1]),
            X_SHARES=triton.next_power_of_2(ddt_x.shape[-1]),
        )
        dA, dbias = parts.sum(1)
        return ddt, dA, dbias if self.bias is not None else None


def _grads(steps_in: Steps, A, block_t, da, ddt_x, dx, dB, dC, dD, dinit, ddt=None):
    """The op's gradients from a backward launch's outputs (``da``, ``ddt_x`` [b, L, h, shares] and ``dD``
    [b, h, shares] hold one share per column block, or per block and column block): (dx, d raw dt, dA,
    dB, dC (float32), dD, dinit, d dt_bias)."""
    ddt, dA, dbias = steps_in.grads(A, da, ddt_x, block_t, ddt)
    return dx, ddt, dA, dB, dC, dD.sum((0, 2)), dinit, dbias


def _grad_buffers(x, B, shares: int, dD_shares: int, da_shares: int | None = None,
                  dx: torch.Tensor | None = None, atomic_bc: bool = True) -> dict:
    """The backward launches' outputs; ``dx`` [b, L, h, P], if given, must have its [h, P] contiguous. dB and dC
    zeroed for atomic adds, or left to the caller (``atomic_bc`` false: their shares are written, then summed)."""
    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    f32 = dict(device=x.device, dtype=torch.float32)
    if dx is None:  # written once per element, so in x's dtype at once (no float32 copy to convert)
        dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    if dx.shape != x.shape or dx.stride()[2:] != (headdim, 1):
        raise ValueError(f"the SSD backward writes dx [b, L, h, P] with [h, P] contiguous, got shape "
                         f"{tuple(dx.shape)} and strides {dx.stride()}")
    out = {"dx": dx,
           "da": torch.empty(batch, seqlen, nheads, da_shares or shares, **f32),
           "ddt_x": torch.empty(batch, seqlen, nheads, shares, **f32),
           "dD": torch.empty(batch, nheads, dD_shares, **f32),
           "dinit": torch.empty(batch, nheads, headdim, dstate, **f32)}
    if atomic_bc:
        out["dB"], out["dC"] = (torch.zeros(batch, seqlen, ngroups, dstate, **f32) for _ in range(2))
    return out


def _bwd(x, steps_in: Steps, A, B, C, D, initial_states, seq_idx, dy, dfinal, cfg):
    """The walking backward: a states-keeping rerun of the forward, then one reverse launch."""
    dt = steps_in.steps()
    _, _, states = _fwd(x, dt, A, B, C, D, initial_states, seq_idx, cfg, write_y=False, state_every=1)
    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    block_t, block_p, launch = _blocking(cfg)
    n_pblocks = headdim // block_p
    out = _grad_buffers(x, B, n_pblocks, n_pblocks)
    seq = seq_idx if seq_idx is not None else dt
    _ssd_bwd_kernel[(batch, nheads, n_pblocks)](
        x, dt, A, B, C, D if D is not None else A, seq, dy, dfinal if dfinal is not None else out["dinit"], states,
        out["dx"], out["da"], out["ddt_x"], out["dB"], out["dC"], out["dD"], out["dinit"],
        seqlen, nheads // ngroups,
        *x.stride(), *dt.stride(), *B.stride(), *C.stride(),
        *(seq_idx.stride() if seq_idx is not None else (0, 0)), *dy.stride(), *out["dx"].stride()[:2],
        HAS_D=D is not None, HAS_SEQ=seq_idx is not None, HAS_DFINAL=dfinal is not None,
        BLOCK_T=block_t, BLOCK_P=block_p, P=headdim, N=dstate, **launch,
    )
    return _grads(steps_in, A, block_t=block_t, **out)


def _bwd_split(x, steps_in: Steps, A, B, C, D, initial_states, seq_idx, dy, dfinal, cfg, states,
               dx: torch.Tensor | None = None, ddt: torch.Tensor | None = None):
    """The split backward (``cfg`` as ``SPLIT_BWD_DEFAULT``): the states-keeping rerun of the forward
    (unless the forward kept ``states``) and the sequential state-gradient launch, then one or two
    launches over all (block, column block, head, batch), then the step's gradients. Gradients as
    :func:`_grads`'; dx and the raw dt's gradient are written to ``dx`` and ``ddt`` if given (e.g. slices
    of the gradient of in_proj's output)."""
    dt = steps_in.steps()
    (block_t, block_p, block_n, warps, seq_p, seq_warps, rerun_p, rerun_warps, fp32_dstates, _, bc_shares, phases,
     bc_heads, max_registers, dx_heads, bc_warps) = cfg
    launch = {"num_warps": warps, **({"maxnreg": max_registers} if max_registers else {})}
    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    n_blocks, n_pblocks = triton.cdiv(seqlen, block_t), headdim // block_p
    # da's shares: one per column block; with the dB / dC launch's several heads per program one per column
    # block and chunk of state columns; head-looping, one more per chunk of state columns of the dB / dC launch.
    out = _grad_buffers(x, B, n_pblocks, n_blocks * n_pblocks,
                        n_pblocks + dstate // block_n if phases == 4 else n_pblocks * dstate // block_n if bc_heads
                        else None, dx, atomic_bc=not bc_shares)
    if states is None:
        _, _, states = _fwd(x, dt, A, B, C, D, initial_states, seq_idx, (block_t, rerun_p, rerun_warps),
                            write_y=False, state_every=1)
    if bc_shares and phases != 4:
        out["dB"], out["dC"] = (torch.empty(batch, seqlen, nheads // max(bc_heads, 1), n_pblocks, dstate,
                                            device=x.device, dtype=torch.float32) for _ in range(2))
    dstates = torch.empty(batch, nheads, n_blocks, headdim, dstate, device=x.device,
                          dtype=torch.float32 if fp32_dstates else x.dtype)
    seq = seq_idx if seq_idx is not None else dt
    seq_strides = seq_idx.stride() if seq_idx is not None else (0, 0)
    _ssd_bwd_dstates_kernel[(batch, nheads, headdim // seq_p)](
        dt, A, C, seq, dy, dfinal if dfinal is not None else out["dinit"], dstates, out["dinit"],
        seqlen, nheads // ngroups,
        *dt.stride(), *C.stride(), *seq_strides, *dy.stride(),
        HAS_SEQ=seq_idx is not None, HAS_DFINAL=dfinal is not None,
        BLOCK_T=block_t, BLOCK_P=seq_p, P=headdim, N=dstate, num_warps=seq_warps,
    )
    if phases == 4:
        _heads_launches(x, dt, A, B, C, D, seq_idx, dy, states, dstates, out, launch, block_t=block_t,
                        block_p=block_p, block_n=block_n, bc_shares=bc_shares, bc_heads=bc_heads, dx_heads=dx_heads,
                        bc_warps=bc_warps)
        return _grads(steps_in, A, block_t=block_t, ddt=ddt, **out)
    # (dx part, dB / dC part) of each launch over the blocks.
    parts = [(True, True)] if phases in (0, 1, 3) else [(True, False)] if bc_heads else [(True, False), (False, True)]
    for dx_part, bc_part in parts:
        _ssd_bwd_blocks_kernel[(n_blocks * n_pblocks * (2 if phases == 3 else 1), nheads, batch)](
            x, dt, A, B, C, D if D is not None else A, seq, dy, states, dstates,
            out["dx"], out["da"], out["ddt_x"], out["dB"], out["dC"], out["dD"],
            seqlen, nheads // ngroups,
            *x.stride(), *dt.stride(), *B.stride(), *C.stride(), *seq_strides, *dy.stride(), *out["dx"].stride()[:2],
            HAS_D=D is not None, HAS_SEQ=seq_idx is not None, ATOMIC_BC=not bc_shares,
            ONE_PASS=phases == 0, DX=dx_part, BC=bc_part, SIDE_BY_SIDE=phases == 3,
            BLOCK_T=block_t, BLOCK_P=block_p, BLOCK_N=block_n, P=headdim, N=dstate, **launch,
        )
    if bc_heads:
        _ssd_bwd_bc_heads_kernel[(n_blocks * n_pblocks * (dstate // block_n), nheads // bc_heads, batch)](
            x, dt, A, B, C, seq, dy, states, dstates, out["da"], out["dB"], out["dC"],
            seqlen, nheads // ngroups,
            *x.stride(), *dt.stride(), *B.stride(), *C.stride(), *seq_strides, *dy.stride(),
            HAS_SEQ=seq_idx is not None, ATOMIC_BC=not bc_shares, HEADS=bc_heads,
            BLOCK_T=block_t, BLOCK_P=block_p, BLOCK_N=block_n, P=headdim, N=dstate, **launch,
        )
    if bc_shares:  # each group's heads are consecutive
        out["dB"], out["dC"] = (out[k].view(batch, seqlen, ngroups, -1, dstate).sum(3) for k in ("dB", "dC"))
    return _grads(steps_in, A, block_t=block_t, ddt=ddt, **out)


def _heads_launches(x, dt, A, B, C, D, seq_idx, dy, states, dstates, out, launch, *, block_t, block_p, block_n,
                    bc_shares, bc_heads, dx_heads, bc_warps):
    """The split backward's head-looping launches (its config's field 12: 4; the other arguments its fields
    as :func:`_bwd_split` names them): dx, ddt_x, dD and da per head, then dB and dC summed over heads, into
    ``out`` (:func:`_grad_buffers`: ddt_x with one share per column block, da's first shares as many; dB
    and dC zeroed unless ``bc_shares``)."""
    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    bc_launch = {**launch, "num_warps": bc_warps or launch["num_warps"]}
    heads_per_group = nheads // ngroups
    bc_heads, dx_heads = bc_heads or heads_per_group, dx_heads or 1
    n_blocks = triton.cdiv(seqlen, block_t)
    seq = seq_idx if seq_idx is not None else dt
    strides = (*x.stride(), *dt.stride(), *B.stride(), *C.stride(),
               *(seq_idx.stride() if seq_idx is not None else (0, 0)), *dy.stride())
    _ssd_bwd_dx_heads_kernel[(n_blocks * (headdim // block_p), nheads // dx_heads, batch)](
        x, dt, A, B, C, D if D is not None else A, seq, dy, states, dstates,
        out["dx"], out["da"], out["ddt_x"], out["dD"], seqlen, heads_per_group, *strides, *out["dx"].stride()[:2],
        out["da"].shape[-1],
        HAS_D=D is not None, HAS_SEQ=seq_idx is not None, HEADS=dx_heads,
        BLOCK_T=block_t, BLOCK_P=block_p, P=headdim, N=dstate, **launch,
    )
    splits = heads_per_group // bc_heads
    if bc_shares:
        dB, dC = (torch.empty(batch, seqlen, ngroups, splits, dstate, device=x.device, dtype=torch.float32)
                  for _ in range(2))
    else:
        dB, dC = out["dB"], out["dC"]
    _ssd_bwd_dbc_heads_kernel[(n_blocks * (dstate // block_n), nheads // bc_heads, batch)](
        x, dt, A, B, C, seq, dy, states, dstates, dB, dC, out["da"], seqlen, heads_per_group, out["da"].shape[-1],
        headdim // block_p, *strides,
        ATOMIC_BC=not bc_shares, HAS_SEQ=seq_idx is not None, HEADS=bc_heads,
        BLOCK_T=block_t, BLOCK_N=block_n, P=headdim, N=dstate, **bc_launch,
    )
    if bc_shares:  # one share (all heads of a group per program) is the sum already: no copy
        out["dB"], out["dC"] = (shares.squeeze(3) if splits == 1 else shares.sum(3) for shares in (dB, dC))


class _SSDScan(torch.autograd.Function):
    """(x, raw dt, A, B, C, D, dt_bias, initial_states, seq_idx) -> (y, final_state); see the module."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, dt_bias, initial_states, seq_idx, dt_softplus, dt_limit, fwd_cfg, bwd_cfg,
                split_cfg, grad_wanted):
        # The split backward's states, kept by the forward if asked (its blocks are whole forward blocks)
        # and if a backward can follow (inside forward, grad mode is always off).
        keep = split_cfg is not None and split_cfg[9] and grad_wanted
        y, final, states = _fwd(x, Steps(dt, dt_bias, dt_softplus, dt_limit).steps(), A, B, C, D, initial_states,
                                seq_idx, fwd_cfg, state_every=split_cfg[0] // fwd_cfg[0] if keep else 0)
        ctx.save_for_backward(x, dt, A, B, C, D, dt_bias, initial_states, seq_idx, states)
        ctx.step, ctx.bwd_cfg, ctx.split_cfg = (dt_softplus, dt_limit), bwd_cfg, split_cfg
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        x, dt, A, B, C, D, dt_bias, initial_states, seq_idx, states = ctx.saved_tensors
        steps_in = Steps(dt, dt_bias, *ctx.step)
        if ctx.split_cfg is not None:
            grads = _bwd_split(x, steps_in, A, B, C, D, initial_states, seq_idx, dy.contiguous(), dfinal,
                               ctx.split_cfg, states)
        else:
            grads = _bwd(x, steps_in, A, B, C, D, initial_states, seq_idx, dy.contiguous(), dfinal, ctx.bwd_cfg)
        dx, ddt, dA, dB, dC, dD, dinit, dbias = grads
        return (dx, ddt, dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype), None if D is None else dD.to(D.dtype),
                None if dt_bias is None else dbias.to(dt_bias.dtype),
                None if initial_states is None else dinit.to(initial_states.dtype),
                None, None, None, None, None, None, None)


# The split backward's blocking: positions per block; head-dim columns, state columns at a time and
# warps of the parallel launch; head-dim columns per program and warps of the sequential
# state-gradient launch; of the states-keeping rerun of the forward; 1 to keep the per-block state
# gradients in float32 (0: in x's dtype); 1 to have the forward keep the per-block states for the
# backward instead of the rerun (memory held from forward to backward; the positions per block
# must be a multiple of the forward's); 1 to write each head's (and column block's) share of dB and
# dC and sum them in PyTorch instead of adding them atomically; how the parallel launch is split
# (0: one pass over the state dimension for every gradient; 1: the dx part, then the dB / dC part,
# in one program; 2: the same parts in two launches; 3: in neighbouring programs of one launch, whose
# registers are those of the larger part, and whose second program runs beside the first, so x, dy, B,
# C and G can come from the L2 cache; 4: the head-looping launches, one for dx and the whole decay
# gradient per head, then one for dB and dC summed over heads, each program walking several heads of
# a group); with two launches, the heads of one group per program of the dB / dC launch (0: one, and
# each program loops over the state columns; k: k heads, summed before they are added to dB and dC,
# and one chunk of state columns per program; with 4, 0 is all heads of the group); a cap on
# registers per thread of the parallel launch(es) (0: none); with 4, the heads per program of the dx
# launch (0: one) and the warps of the dB / dC launch (0: as the dx launch's).
SPLIT_BWD_DEFAULT = (64, 64, 16, 8, 64, 4, 64, 4, 0, 0, 0, 0, 0, 0, 0, 0)


def blockings(headdim: int, dstate: int, heads_per_group: int, fwd_config: tuple[int, ...],
              bwd_config: tuple[int, ...], split_bwd_config: tuple[int, ...] | None):
    """The blockings :func:`ssd_chunk_scan_triton` takes, checked and fitted to a head dim and d_state (columns
    per program at most the head dim, state columns at most d_state; a short split config completed from
    ``SPLIT_BWD_DEFAULT``). Raises ValueError for a blocking the kernels cannot run."""
    sizes = [("head dim", headdim), ("d_state", dstate)]
    for which, config in (("fwd", fwd_config), ("bwd", bwd_config)):
        sizes += [(f"{which} block_t", config[0]), (f"{which} block_p", min(config[1], headdim))]
    fwd_config = (fwd_config[0], min(fwd_config[1], headdim), *fwd_config[2:])
    bwd_config = (bwd_config[0], min(bwd_config[1], headdim), *bwd_config[2:])
    if split_bwd_config is not None:
        split = list(split_bwd_config) + list(SPLIT_BWD_DEFAULT[len(split_bwd_config):])
        for i in (1, 4, 6):
            split[i] = min(split[i], headdim)
        split[2] = min(split[2], dstate)
        sizes += [("split block_t", split[0]), ("split block_p", split[1]), ("split block_n", split[2]),
                  ("split sequential block_p", split[4]), ("split rerun block_p", split[6])]
        if split[9] and split[0] % fwd_config[0]:
            raise ValueError(f"ssd_chunk_scan_triton keeps the forward's states for the split backward only if its "
                             f"block ({split[0]} positions) is a multiple of the forward's ({fwd_config[0]})")
        if split[11] not in (0, 1, 2, 3, 4):
            raise ValueError(f"ssd_chunk_scan_triton splits the split backward's parallel launch in 0, 1, 2, 3 or 4 "
                             f"ways (its config's field 12), got {split[11]}")
        if split[12] and (split[11] not in (2, 4) or heads_per_group % split[12]):
            raise ValueError(f"ssd_chunk_scan_triton takes {split[12]} heads per program of the split backward's "
                             f"dB / dC launch (its config's field 13) only with two launches (field 12: 2 or 4, got "
                             f"{split[11]}) and a divisor of the heads per group ({heads_per_group})")
        if split[15] and split[11] != 4:
            raise ValueError(f"ssd_chunk_scan_triton takes warps for the split backward's dB / dC launch (its config's "
                             f"field 16) only with the head-looping launches (field 12: 4, got {split[11]})")
        if split[14] and (split[11] != 4 or heads_per_group % split[14]):
            raise ValueError(f"ssd_chunk_scan_triton takes {split[14]} heads per program of the split backward's "
                             f"dx launch (its config's field 15) only with the head-looping launches (field 12: 4, "
                             f"got {split[11]}) and a divisor of the heads per group ({heads_per_group})")
        split_bwd_config = tuple(split)
    for name, size in sizes:
        if size < 16 or size & (size - 1):
            raise ValueError(f"ssd_chunk_scan_triton needs a {name} that is a power of two >= 16, got {size}")
    return fwd_config, bwd_config, split_bwd_config


def ssd_chunk_scan_triton(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    initial_states: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    return_final_states: bool = False,
    fwd_config: tuple[int, ...] = (32, 64, 4),
    bwd_config: tuple[int, ...] = (16, 32, 4),
    split_bwd_config: tuple[int, ...] | None = None,
):
    """The SSD scan through this module's kernels; arguments and results as
    :func:`kotomamba.ops.ssd.ssd_chunk_scan_ref` (without ``chunk_size``: the blocking is internal).

    x: [b, L, h, p]; dt: [b, L, h]; A: [h]; B, C: [b, L, g, n]; D, dt_bias: [h]; initial_states:
    [b, h, p, n]; seq_idx: [b, L] int. p and n must be powers of two of at least 16.
    ``fwd_config`` / ``bwd_config``: (positions per block, head-dim columns per program, warps,
    optionally a cap on registers per thread) of the forward and of the walking backward (whose
    recomputing forward uses the backward's blocking). ``split_bwd_config``: use the split backward
    instead, with this blocking (``SPLIT_BWD_DEFAULT``'s fields; a shorter tuple takes the rest from it).
    Returns y [b, L, h, p] in x's dtype and, with ``return_final_states``, the final state
    [b, h, p, n] float32.
    """
    fwd_config, bwd_config, split_bwd_config = blockings(x.shape[-1], B.shape[-1], x.shape[2] // B.shape[2],
                                                         fwd_config, bwd_config, split_bwd_config)
    if seq_idx is not None:
        seq_idx = seq_idx.to(torch.int32)
    if initial_states is not None:
        initial_states = initial_states.contiguous()
    y, final = _SSDScan.apply(x, dt, A, B, C, D, dt_bias, initial_states, seq_idx, dt_softplus, tuple(dt_limit),
                              fwd_config, bwd_config, split_bwd_config, torch.is_grad_enabled())
    return (y, final) if return_final_states else y
