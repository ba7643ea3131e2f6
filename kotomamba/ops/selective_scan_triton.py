"""Triton kernels of Mamba-1's selective scan (:func:`kotomamba.ops.selective_scan.selective_scan_ref` is the
twin), forward and backward, with ``delta_bias``, softplus, ``D`` and the ``silu(z)`` gate.

Per batch row, channel ``d`` and state ``n``: ``dt_t = softplus(delta_t + bias)``, ``a_t = exp(dt_t A)``,
``h_t = a_t h_{t-1} + dt_t B_t u_t``, ``y_t = sum_n C_t h_t + D u_t``, ``out_t = y_t silu(z_t)``.

One program per batch row and block of channels holds their [channels, N] states in registers and walks the
positions one at a time (a block-wise ``tl.associative_scan`` over [channels, N, positions] tiles ran three
times slower than mamba-ssm's kernel: bench/RESULTS.md). Inputs are loaded and outputs stored ``GROUP``
positions at a time, each position's column picked out of the group's tile in registers: position by
position, each load came after the previous position's store, which the compiler cannot move it ahead of,
so every position waited on memory.

The forward keeps the state entering every block of ``BLOCK_T`` positions (float32, [batch, blocks, D, N]) for
the backward, which walks the blocks from the last: it reruns a block's forward from its entering state into a
float32 scratch of the block's states, then walks the block back with ``dh_t = C_t dy_t + a_{t+1} dh_{t+1}``
and, as ``a_t h_{t-1} = h_t - dt_t B_t u_t``, needs no state of the position before:

- ``du_t = dt_t sum_n dh_t B_t + D dy_t``;
- ``d dt_t = u_t sum_n dh_t B_t + sum_n A dh_t (h_t - dt_t B_t u_t)``, times softplus' slope for ``d delta``;
- ``dA = sum_t dt_t dh_t (h_t - dt_t B_t u_t)``, ``dB_t = sum_d dh_t dt_t u_t``, ``dC_t = sum_d dy_t h_t``.

Sums over channels (dB, dC) and over the batch (dA, dD, d bias) are written per program into float32
buffers that PyTorch sums, so the result does not depend on the order programs finish (mamba-ssm's CUDA
kernel adds them with atomics). Source of the method: Gu & Dao 2023, "Mamba", section 3.3 and appendix D
(the recurrence, its backward, and states recomputed in the backward instead of kept).

Dispatched for training through :mod:`kotomamba.ops.mamba_inner` (Mamba-1's mixer around it), which is faster
on an H200 than mamba-ssm's ``mamba_inner_fn`` (bench/RESULTS.md, session 20). The kept states cost float32
``[batch, L / BLOCK_T, D, N]``: at the default block, twice the bytes of a bfloat16 activation.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from kotomamba.ops.step_triton import step, step_grad

# (channels per program, positions per block of kept states, warps, positions loaded and stored together[, most
# registers a thread may take]) of the forward and of the backward; bench/scan_throughput.py times others. The
# forward walks the backward's blocks (:func:`forward_config`).
SCAN_FWD_CONFIG = (16, 16, 1, 16)
SCAN_BWD_CONFIG = (8, 16, 1, 16)
# The blocking of :mod:`kotomamba.ops.selective_scan_gluon`'s backward where it runs (:func:`backward_kernel`): it
# walks blocks twice as long faster than blocks of 16, and the states kept for it take half the memory.
SCAN_BWD_GLUON_CONFIG = (8, 32, 1, 8)


@functools.cache
def backward_kernel(device: torch.device, dstate: int) -> tuple[str, tuple[int, ...]]:
    """The backward walk to run on ``device`` for states of ``dstate`` and its blocking: the Gluon kernel where it
    has been parity-tested and timed faster than the Triton kernel (a Hopper or newer card, Triton 3.6 or later,
    d_state 16: bench/RESULTS.md, session 22), else the Triton kernel."""
    if dstate == 16 and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9:
        if tuple(int(v) for v in triton.__version__.split(".")[:2]) >= (3, 6):
            return "gluon", SCAN_BWD_GLUON_CONFIG
    return "triton", SCAN_BWD_CONFIG


def forward_config(bwd_config: tuple[int, ...]) -> tuple[int, ...]:
    """The forward's blocking for the backward blocking ``bwd_config``: :data:`SCAN_FWD_CONFIG` on its blocks."""
    return (SCAN_FWD_CONFIG[0], bwd_config[1], *SCAN_FWD_CONFIG[2:])


@triton.jit
def _channels(A_ptr, D_ptr, bias_ptr, offs_d, ok_d, offs_n, N: tl.constexpr, HAS_D: tl.constexpr,
              HAS_BIAS: tl.constexpr):
    """The channels' A [BLOCK_D, N], D and delta bias [BLOCK_D] (0 where absent), float32."""
    A = tl.load(A_ptr + offs_d[:, None] * N + offs_n[None, :], mask=ok_d[:, None], other=0.0)
    Dv, bias = tl.zeros(offs_d.shape, tl.float32), tl.zeros(offs_d.shape, tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=ok_d, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=ok_d, other=0.0)
    return A, Dv, bias


@triton.jit
def _tile(row, pos, stride, ok_rows, ok_pos):
    """[rows, GROUP] float32 from ``row`` [rows] pointers at positions ``pos`` [GROUP]; 0 where masked."""
    return tl.load(row[:, None] + pos[None, :] * stride, mask=ok_rows[:, None] & ok_pos[None, :],
                   other=0.0).to(tl.float32)


@triton.jit
def _column(tile, sel):
    """The column of ``tile`` [rows, GROUP] that ``sel`` [1, GROUP] picks, [rows] (a sum of one term)."""
    return tl.sum(tl.where(sel, tile, -0.0), axis=1)  # x + -0.0 is x: the compiler drops the terms it can see


@triton.jit
def _steps(dt_row, pos, s_dtl, bias, ok_d, ok_pos, SOFTPLUS: tl.constexpr):
    """delta + bias and the step, [BLOCK_D, GROUP] float32; the step is 0 past the end (decay 1, no input)."""
    raw = _tile(dt_row, pos, s_dtl, ok_d, ok_pos) + bias[:, None]
    return raw, tl.where(ok_pos[None, :], step(raw, 0.0, 0.0, SOFTPLUS, False), 0.0)


@triton.jit
def _scan_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, states_ptr, last_ptr,
    dim, L, blocks,
    s_ub, s_ud, s_ul, s_dtb, s_dtd, s_dtl, s_Bb, s_Bn, s_Bl, s_Cb, s_Cn, s_Cl, s_zb, s_zd, s_zl, s_ob, s_od, s_ol,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    KEEP_STATES: tl.constexpr, STORE_LAST: tl.constexpr,
    N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, GROUP: tl.constexpr,
):
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    ok_d = offs_d < dim
    offs_n = tl.arange(0, N)
    ok_n = offs_n < N
    offs_p = tl.arange(0, GROUP)
    A, Dv, bias = _channels(A_ptr, D_ptr, bias_ptr, offs_d, ok_d, offs_n, N, HAS_D, HAS_BIAS)
    A2 = A * 1.4426950408889634  # exp(dt A) as exp2
    u_row, dt_row = u_ptr + b * s_ub + offs_d * s_ud, dt_ptr + b * s_dtb + offs_d * s_dtd
    out_row = out_ptr + b * s_ob + offs_d * s_od
    if HAS_Z:
        z_row = z_ptr + b * s_zb + offs_d * s_zd
    B_row, C_row = B_ptr + b * s_Bb + offs_n * s_Bn, C_ptr + b * s_Cb + offs_n * s_Cn
    state_rows = (b * blocks * dim + offs_d[:, None]) * N + offs_n[None, :]
    h = tl.zeros((BLOCK_D, N), tl.float32)
    for c in range(blocks):
        if KEEP_STATES:
            tl.store(states_ptr + state_rows + c * dim * N, h, mask=ok_d[:, None])
        for g in range(tl.cdiv(tl.minimum(BLOCK_T, L - c * BLOCK_T), GROUP)):
            # A group's inputs in one load each and its outputs in one store: a load after a store to global
            # memory cannot be moved ahead of it, so loads and stores step by step wait on memory every step.
            pos = c * BLOCK_T + g * GROUP + offs_p
            ok_pos = pos < L
            _, dts = _steps(dt_row, pos, s_dtl, bias, ok_d, ok_pos, SOFTPLUS)
            us = _tile(u_row, pos, s_ul, ok_d, ok_pos)
            Bs = _tile(B_row, pos, s_Bl, ok_n, ok_pos)
            Cs = _tile(C_row, pos, s_Cl, ok_n, ok_pos)
            ys = tl.zeros((BLOCK_D, GROUP), tl.float32)
            for i in tl.static_range(GROUP):
                sel = (offs_p == i)[None, :]
                dt, u = _column(dts, sel), _column(us, sel)
                h = tl.exp2(dt[:, None] * A2) * h + (dt * u)[:, None] * _column(Bs, sel)[None, :]
                ys = tl.where(sel, tl.sum(h * _column(Cs, sel)[None, :], axis=1)[:, None], ys)
            if HAS_D:
                ys += us * Dv[:, None]
            if HAS_Z:
                zs = _tile(z_row, pos, s_zl, ok_d, ok_pos)
                ys *= zs * tl.sigmoid(zs)
            tl.store(out_row[:, None] + pos[None, :] * s_ol, ys.to(out_ptr.dtype.element_ty),
                     mask=ok_d[:, None] & ok_pos[None, :])
    if STORE_LAST:
        tl.store(last_ptr + (b * dim + offs_d[:, None]) * N + offs_n[None, :], h, mask=ok_d[:, None])


@triton.jit
def _scan_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, dlast_ptr, states_ptr, scratch_ptr,
    du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    dim, L, blocks,
    s_ub, s_ud, s_ul, s_dtb, s_dtd, s_dtl, s_Bb, s_Bn, s_Bl, s_Cb, s_Cn, s_Cl, s_zb, s_zd, s_zl, s_gb, s_gd, s_gl,
    s_dub, s_dud, s_dul, s_ddtb, s_ddtd, s_ddtl, s_dzb, s_dzd, s_dzl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_DLAST: tl.constexpr, N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, GROUP: tl.constexpr,
):
    pid_d = tl.program_id(0)
    d_programs = tl.num_programs(0)
    b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    ok_d = offs_d < dim
    offs_n = tl.arange(0, N)
    ok_n = offs_n < N
    offs_p = tl.arange(0, GROUP)
    A, Dv, bias = _channels(A_ptr, D_ptr, bias_ptr, offs_d, ok_d, offs_n, N, HAS_D, HAS_BIAS)
    A2 = A * 1.4426950408889634
    u_row, dt_row = u_ptr + b * s_ub + offs_d * s_ud, dt_ptr + b * s_dtb + offs_d * s_dtd
    dout_row = dout_ptr + b * s_gb + offs_d * s_gd
    du_row, ddt_row = du_ptr + b * s_dub + offs_d * s_dud, ddt_ptr + b * s_ddtb + offs_d * s_ddtd
    if HAS_Z:
        z_row, dz_row = z_ptr + b * s_zb + offs_d * s_zd, dz_ptr + b * s_dzb + offs_d * s_dzd
    B_row, C_row = B_ptr + b * s_Bb + offs_n * s_Bn, C_ptr + b * s_Cb + offs_n * s_Cn
    state_rows = (b * blocks * dim + offs_d[:, None]) * N + offs_n[None, :]
    program = b * d_programs + pid_d
    # This program's states at each position of the block being walked back (float32 [BLOCK_T, BLOCK_D, N]).
    scratch = scratch_ptr + program * BLOCK_T * BLOCK_D * N + tl.arange(0, BLOCK_D)[:, None] * N + offs_n[None, :]
    part_rows = program * L * N + offs_n  # dB / dC's shares of this program: [L, N] rows
    # a_{t+1} dh_{t+1} for the position after the one walked; past the end, the final state's gradient, which
    # reaches L - 1 unchanged.
    if HAS_DLAST:
        carried = tl.load(dlast_ptr + (b * dim + offs_d[:, None]) * N + offs_n[None, :], mask=ok_d[:, None],
                          other=0.0).to(tl.float32)
    else:
        carried = tl.zeros((BLOCK_D, N), tl.float32)
    dA_sum = tl.zeros((BLOCK_D, N), tl.float32)
    dD_sum = tl.zeros((BLOCK_D,), tl.float32)
    dbias_sum = tl.zeros((BLOCK_D,), tl.float32)
    for back in range(blocks):
        c = blocks - 1 - back
        groups = tl.cdiv(tl.minimum(BLOCK_T, L - c * BLOCK_T), GROUP)
        # The block's forward again, from its entering state, keeping every position's state.
        h = tl.load(states_ptr + state_rows + c * dim * N, mask=ok_d[:, None], other=0.0)
        for g in range(groups):
            pos = c * BLOCK_T + g * GROUP + offs_p
            ok_pos = pos < L
            _, dts = _steps(dt_row, pos, s_dtl, bias, ok_d, ok_pos, SOFTPLUS)
            dtus = dts * _tile(u_row, pos, s_ul, ok_d, ok_pos)
            Bs = _tile(B_row, pos, s_Bl, ok_n, ok_pos)
            for i in tl.static_range(GROUP):
                sel = (offs_p == i)[None, :]
                inp = _column(dtus, sel)[:, None] * _column(Bs, sel)[None, :]
                h = tl.exp2(_column(dts, sel)[:, None] * A2) * h + inp
                tl.store(scratch + (g * GROUP + i) * BLOCK_D * N, h)
        # Then back, a group at a time from the last: dh_t = C_t dy_t + a_{t+1} dh_{t+1}.
        for back_g in range(groups):
            g = groups - 1 - back_g
            pos = c * BLOCK_T + g * GROUP + offs_p
            ok_pos = pos < L
            ok = ok_d[:, None] & ok_pos[None, :]
            raws, dts = _steps(dt_row, pos, s_dtl, bias, ok_d, ok_pos, SOFTPLUS)
            us = _tile(u_row, pos, s_ul, ok_d, ok_pos)
            Bs = _tile(B_row, pos, s_Bl, ok_n, ok_pos)
            Cs = _tile(C_row, pos, s_Cl, ok_n, ok_pos)
            dys = _tile(dout_row, pos, s_gl, ok_d, ok_pos)
            if HAS_Z:
                zs = _tile(z_row, pos, s_zl, ok_d, ok_pos)
                gates = tl.sigmoid(zs)
                ys = tl.zeros((BLOCK_D, GROUP), tl.float32)
                dys_in = dys
                dys *= zs * gates
            dhBs = tl.zeros((BLOCK_D, GROUP), tl.float32)
            keptAs = tl.zeros((BLOCK_D, GROUP), tl.float32)
            dBs = tl.zeros((N, GROUP), tl.float32)
            dCs = tl.zeros((N, GROUP), tl.float32)
            for j in tl.static_range(GROUP):
                i = GROUP - 1 - j
                sel = (offs_p == i)[None, :]
                dt, u, dy = _column(dts, sel), _column(us, sel), _column(dys, sel)
                Bt, Ct = _column(Bs, sel)[None, :], _column(Cs, sel)[None, :]
                h = tl.load(scratch + (g * GROUP + i) * BLOCK_D * N)
                if HAS_Z:
                    ys = tl.where(sel, tl.sum(h * Ct, axis=1)[:, None], ys)
                dh = Ct * dy[:, None] + carried
                carried = tl.exp2(dt[:, None] * A2) * dh
                kept = dh * (h - (dt * u)[:, None] * Bt)  # dh_t a_t h_{t-1}
                dhBs = tl.where(sel, tl.sum(dh * Bt, axis=1)[:, None], dhBs)
                keptAs = tl.where(sel, tl.sum(kept * A, axis=1)[:, None], keptAs)
                dA_sum += kept * dt[:, None]
                dBs = tl.where(sel, tl.sum(dh * (dt * u)[:, None], axis=0)[:, None], dBs)
                dCs = tl.where(sel, tl.sum(h * dy[:, None], axis=0)[:, None], dCs)
            dus = dts * dhBs
            if HAS_D:
                dus += Dv[:, None] * dys
                dD_sum += tl.sum(dys * us, axis=1)
            if HAS_Z:
                if HAS_D:
                    ys += us * Dv[:, None]
                tl.store(dz_row[:, None] + pos[None, :] * s_dzl,
                         (dys_in * ys * gates * (1.0 + zs * (1.0 - gates))).to(dz_ptr.dtype.element_ty), mask=ok)
            ddts = us * dhBs + keptAs
            if SOFTPLUS:
                ddts *= step_grad(raws, 0.0, 0.0, SOFTPLUS, False)
            ddts = tl.where(ok, ddts, 0.0)
            dbias_sum += tl.sum(ddts, axis=1)
            tl.store(du_row[:, None] + pos[None, :] * s_dul, dus.to(du_ptr.dtype.element_ty), mask=ok)
            tl.store(ddt_row[:, None] + pos[None, :] * s_ddtl, ddts.to(ddt_ptr.dtype.element_ty), mask=ok)
            ok_part = ok_n[:, None] & ok_pos[None, :]
            tl.store(dB_ptr + part_rows[:, None] + pos[None, :] * N, dBs, mask=ok_part)
            tl.store(dC_ptr + part_rows[:, None] + pos[None, :] * N, dCs, mask=ok_part)
    tl.store(dA_ptr + (b * dim + offs_d[:, None]) * N + offs_n[None, :], dA_sum, mask=ok_d[:, None])
    if HAS_D:
        tl.store(dD_ptr + b * dim + offs_d, dD_sum, mask=ok_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + b * dim + offs_d, dbias_sum, mask=ok_d)


def _register_cap(maxnreg: list[int]) -> dict:
    """The launch option capping a thread's registers, where a config names it."""
    return {"maxnreg": maxnreg[0]} if maxnreg else {}


def _strides(*tensors):
    """Each tensor's (batch, channel or state, position) strides, flattened."""
    return [stride for t in tensors for stride in t.stride()]


def _scan_forward(u, delta, A, B, C, D, z, delta_bias, softplus, keep_states, last, config):
    """out [b, D, L] in u's dtype and strides; the blocks' entering states [b, blocks, D, N] (float32) with
    ``keep_states``; the final state [b, D, N] (float32) with ``last``."""
    batch, dim, L = u.shape
    N = A.shape[1]
    block_d, block_t, warps, group, *maxnreg = config
    blocks = triton.cdiv(L, block_t)
    out = torch.empty_like(u)
    states = torch.empty(batch, blocks, dim, N, device=u.device, dtype=torch.float32) if keep_states else None
    final = torch.empty(batch, dim, N, device=u.device, dtype=torch.float32) if last else None
    _scan_fwd_kernel[(triton.cdiv(dim, block_d), batch)](
        u, delta, A, B, C, D, z, delta_bias, out, states, final, dim, L, blocks,
        *_strides(u, delta, B, C, z if z is not None else u, out),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
        KEEP_STATES=keep_states, STORE_LAST=last, N=N, BLOCK_D=block_d, BLOCK_T=block_t, GROUP=group,
        num_warps=warps, **_register_cap(maxnreg),
    )
    return out, states, final


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, return_last_state, fwd_config, bwd_config,
                bwd_kernel):
        ctx.dtypes = (A.dtype, D.dtype if D is not None else None, delta_bias.dtype if delta_bias is not None else None)
        A = A.float().contiguous()
        D = D.float().contiguous() if D is not None else None
        bias = delta_bias.float().contiguous() if delta_bias is not None else None
        keep = any(ctx.needs_input_grad)
        if keep and fwd_config[1] != bwd_config[1]:
            raise ValueError(f"the forward and backward must walk blocks of the same length, got "
                             f"{fwd_config[1]} and {bwd_config[1]} positions")
        for config in (fwd_config, bwd_config):
            if config[1] % config[3]:
                raise ValueError(f"positions loaded together ({config[3]}) must divide the block ({config[1]})")
        out, states, final = _scan_forward(u, delta, A, B, C, D, z, bias, softplus, keep, return_last_state,
                                           fwd_config)
        ctx.save_for_backward(u, delta, A, B, C, D, z, bias, states)
        ctx.softplus, ctx.bwd_config, ctx.bwd_kernel = softplus, bwd_config, bwd_kernel
        return (out, final) if return_last_state else out

    @staticmethod
    def backward(ctx, dout, dlast=None):
        u, delta, A, B, C, D, z, bias, states = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, dz, dbias = _scan_backward(
            u, delta, A, B, C, D, z, bias, dout, dlast, states, ctx.softplus, ctx.bwd_config, kernel=ctx.bwd_kernel)
        A_dtype, D_dtype, bias_dtype = ctx.dtypes
        return (du, ddelta, dA.to(A_dtype), dB.transpose(1, 2).to(B.dtype), dC.transpose(1, 2).to(C.dtype),
                dD.to(D_dtype) if dD is not None else None, dz,
                dbias.to(bias_dtype) if bias is not None else None, None, None, None, None, None)


def _scan_backward(u, delta, A, B, C, D, z, bias, dout, dlast, states, softplus, config, du=None, ddelta=None,
                   dz=None, kernel="triton"):
    """The gradients (du, d delta, dA [D, N], dB and dC [batch, L, N], dD, dz, d bias) of :func:`_scan_forward`'s
    output, given its ``states``; the reduced ones in float32. du, d delta and dz are written where given
    (any strides), else into new tensors like u, delta and z. ``kernel="gluon"`` walks with
    :mod:`kotomamba.ops.selective_scan_gluon`'s kernel (``config`` checked by its ``check``)."""
    batch, dim, L = u.shape
    N = A.shape[1]
    block_d, block_t, warps, group, *maxnreg = config
    d_programs = triton.cdiv(dim, block_d)
    dlast = dlast.contiguous() if dlast is not None else None
    du = torch.empty_like(u) if du is None else du
    ddelta = torch.empty_like(delta) if ddelta is None else ddelta
    if z is not None and dz is None:
        dz = torch.empty_like(z)
    f32 = dict(device=u.device, dtype=torch.float32)
    # The Triton kernel keeps the walked block's states in global scratch, the Gluon kernel in shared memory.
    scratch = torch.empty(batch * d_programs * block_t * block_d * N, **f32) if kernel == "triton" else None
    dA = torch.empty(batch, dim, N, **f32)
    dB = torch.empty(batch, d_programs, L, N, **f32)
    dC = torch.empty(batch, d_programs, L, N, **f32)
    dD = torch.empty(batch, dim, **f32) if D is not None else None
    dbias = torch.empty(batch, dim, **f32) if bias is not None else None
    zs, dzs = (z, dz) if z is not None else (u, du)
    walk = _scan_bwd_kernel
    if kernel == "gluon":
        from kotomamba.ops import selective_scan_gluon

        walk = selective_scan_gluon._scan_bwd_kernel
    walk[(d_programs, batch)](
        u, delta, A, B, C, D, z, bias, dout, dlast, states, scratch, du, ddelta, dz, dA, dB, dC, dD, dbias,
        dim, L, triton.cdiv(L, block_t), *_strides(u, delta, B, C, zs, dout, du, ddelta, dzs),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None, SOFTPLUS=softplus,
        HAS_DLAST=dlast is not None, N=N, BLOCK_D=block_d, BLOCK_T=block_t, GROUP=group, num_warps=warps,
        **_register_cap(maxnreg),
    )
    return (du, ddelta, dA.sum(0), dB.sum(1), dC.sum(1), dD.sum(0) if dD is not None else None, dz,
            dbias.sum(0) if dbias is not None else None)


def takes(dstate: int) -> bool:
    """Whether these kernels run a state of ``dstate`` (a power of two: it is a tile's side)."""
    return dstate > 0 and not dstate & (dstate - 1)


def selective_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    fwd_config: tuple[int, ...] | None = None,
    bwd_config: tuple[int, ...] | None = None,
    bwd_kernel: str | None = None,
):
    """:func:`kotomamba.ops.selective_scan.selective_scan_ref`'s arguments and results: u, delta, z [batch, D, L];
    A [D, N] (N a power of two); B, C [batch, N, L]; D, delta_bias [D]; any strides. ``fwd_config`` / ``bwd_config``:
    channels per program, positions per block of states kept (the same in both), warps, positions loaded and stored
    together (dividing the block), and optionally the most registers a thread may take (ptxas' maxnreg).
    ``bwd_kernel``: "triton", or "gluon" for :mod:`kotomamba.ops.selective_scan_gluon`'s backward (CUDA, Triton's
    Gluon); without either, :func:`backward_kernel`'s pick, with a ``bwd_config`` alone the Triton kernel. Without
    ``fwd_config``, :func:`forward_config`'s."""
    if B.dim() != 3 or C.dim() != 3:
        raise ValueError(f"B and C must be [batch, N, L] (one group), got {tuple(B.shape)} and {tuple(C.shape)}")
    if not takes(A.shape[1]):
        raise ValueError(f"d_state must be a power of two, got {A.shape[1]}")
    if bwd_kernel is None and bwd_config is None:
        bwd_kernel, bwd_config = backward_kernel(u.device, A.shape[1])
    bwd_kernel = bwd_kernel or "triton"
    if bwd_config is None:
        bwd_config = SCAN_BWD_GLUON_CONFIG if bwd_kernel == "gluon" else SCAN_BWD_CONFIG
    fwd_config = fwd_config or forward_config(bwd_config)
    if bwd_kernel == "gluon":
        from kotomamba.ops.selective_scan_gluon import check

        check(bwd_config)
    elif bwd_kernel != "triton":
        raise ValueError(f"bwd_kernel must be 'triton' or 'gluon', got {bwd_kernel!r}")
    return _SelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                                tuple(fwd_config), tuple(bwd_config), bwd_kernel)
