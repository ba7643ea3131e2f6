"""Triton kernels of Mamba-1's selective scan (:func:`kotomamba.ops.selective_scan.selective_scan_ref` is the
twin), forward and backward, with ``delta_bias``, softplus, ``D`` and the ``silu(z)`` gate.

Per batch row, channel ``d`` and state ``n``: ``dt_t = softplus(delta_t + bias)``, ``a_t = exp(dt_t A)``,
``h_t = a_t h_{t-1} + dt_t B_t u_t``, ``y_t = sum_n C_t h_t + D u_t``, ``out_t = y_t silu(z_t)``.

One program per batch row and block of channels walks the sequence in blocks of positions: inside a block
the recurrence is a ``tl.associative_scan`` of the affine maps ``h -> a h + b`` over a [channels, states,
positions] tile, started from the state the block before left. The forward keeps each block's entering state
(float32, [batch, blocks, D, N]) for the backward, which walks the blocks from the last: it reruns the
block's forward from its entering state, then scans the state gradient backwards,
``dh_t = C_t dy_t + a_{t+1} dh_{t+1}`` (``a_{t+1}`` from the next position's step), and with
``a_t h_{t-1} = h_t - dt_t B_t u_t`` needs no state shifted by a position:

- ``du_t = dt_t sum_n dh_t B_t + D dy_t``;
- ``d dt_t = u_t sum_n dh_t B_t + sum_n A dh_t (h_t - dt_t B_t u_t)``, times softplus' slope for ``d delta``;
- ``dA = sum_t dt_t dh_t (h_t - dt_t B_t u_t)``, ``dB_t = sum_d dh_t dt_t u_t``, ``dC_t = sum_d dy_t h_t``.

Sums over channels (dB, dC) and over the batch (dA, dD, d bias) are written per program into float32
buffers that PyTorch sums, so the result does not depend on the order programs finish (mamba-ssm's CUDA
kernel adds them with atomics). Source of the method: Gu & Dao 2023, "Mamba", section 3.3 and appendix D
(the recurrence, its backward and the recomputation of states in the backward); Blelloch 1990, "Prefix
sums and their applications" (the scan of affine maps).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kotomamba.ops.step_triton import step, step_grad
from kotomamba.ops.strides import unit_stride_last

# (channels per program, positions per block, warps) of the forward and of the backward; bench/scan_throughput.py
# times others.
SCAN_FWD_CONFIG = (4, 64, 4)
SCAN_BWD_CONFIG = (4, 64, 4)


@triton.jit
def _affine(a1, b1, a2, b2):
    """Compose ``h -> a1 h + b1`` then ``h -> a2 h + b2`` (with ``reverse=True`` the scan applies it from the
    end: ``V_t = b_t + a_t V_{t+1}``)."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _scan_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, states_ptr, last_ptr,
    dim, L, blocks,
    s_ub, s_ud, s_dtb, s_dtd, s_Bb, s_Bn, s_Cb, s_Cn, s_zb, s_zd, s_ob, s_od,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    KEEP_STATES: tl.constexpr, STORE_LAST: tl.constexpr,
    N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
):
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    ok_d = offs_d < dim
    offs_n = tl.arange(0, N)
    offs_t = tl.arange(0, BLOCK_T)
    A = tl.load(A_ptr + offs_d[:, None] * N + offs_n[None, :], mask=ok_d[:, None], other=0.0)
    A2 = (A * 1.4426950408889634)[:, :, None]  # exp(dt A) as exp2
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=ok_d, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=ok_d, other=0.0)
    h = tl.zeros((BLOCK_D, N), tl.float32)
    state_rows = (b * blocks * dim + offs_d[:, None]) * N + offs_n[None, :]
    for c in range(blocks):
        t = c * BLOCK_T + offs_t
        ok_t = t < L
        ok = ok_d[:, None] & ok_t[None, :]
        raw = tl.load(dt_ptr + b * s_dtb + offs_d[:, None] * s_dtd + t[None, :], mask=ok, other=0.0).to(tl.float32)
        if HAS_BIAS:
            raw += bias[:, None]
        dt = tl.where(ok, step(raw, 0.0, 0.0, SOFTPLUS, False), 0.0)  # 0 past the end: decay 1, no input
        u = tl.load(u_ptr + b * s_ub + offs_d[:, None] * s_ud + t[None, :], mask=ok, other=0.0).to(tl.float32)
        Bt = tl.load(B_ptr + b * s_Bb + offs_n[:, None] * s_Bn + t[None, :], mask=ok_t[None, :], other=0.0)
        Ct = tl.load(C_ptr + b * s_Cb + offs_n[:, None] * s_Cn + t[None, :], mask=ok_t[None, :], other=0.0)
        if KEEP_STATES:
            tl.store(states_ptr + state_rows + c * dim * N, h, mask=ok_d[:, None])
        decay = tl.exp2(dt[:, None, :] * A2)
        inp = (dt * u)[:, None, :] * Bt.to(tl.float32)[None, :, :]
        decay, inp = tl.associative_scan((decay, inp), 2, _affine)
        hs = inp + decay * h[:, :, None]
        y = tl.sum(hs * Ct.to(tl.float32)[None, :, :], axis=1)
        if HAS_D:
            y += u * Dv[:, None]
        if HAS_Z:
            z = tl.load(z_ptr + b * s_zb + offs_d[:, None] * s_zd + t[None, :], mask=ok, other=0.0).to(tl.float32)
            y *= z * tl.sigmoid(z)
        tl.store(out_ptr + b * s_ob + offs_d[:, None] * s_od + t[None, :], y.to(out_ptr.dtype.element_ty), mask=ok)
        h = tl.sum(tl.where(offs_t[None, None, :] == BLOCK_T - 1, hs, 0.0), axis=2)
    if STORE_LAST:
        tl.store(last_ptr + (b * dim + offs_d[:, None]) * N + offs_n[None, :], h, mask=ok_d[:, None])


@triton.jit
def _scan_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, dlast_ptr, states_ptr,
    du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    dim, L, blocks,
    s_ub, s_ud, s_dtb, s_dtd, s_Bb, s_Bn, s_Cb, s_Cn, s_zb, s_zd, s_gb, s_gd,
    s_dub, s_dud, s_ddtb, s_ddtd, s_dzb, s_dzd,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_DLAST: tl.constexpr, N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
):
    pid_d = tl.program_id(0)
    d_programs = tl.num_programs(0)
    b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    ok_d = offs_d < dim
    offs_n = tl.arange(0, N)
    offs_t = tl.arange(0, BLOCK_T)
    A = tl.load(A_ptr + offs_d[:, None] * N + offs_n[None, :], mask=ok_d[:, None], other=0.0)[:, :, None]
    A2 = A * 1.4426950408889634
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=ok_d, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=ok_d, other=0.0)
    # dh at the first position of the block after; past the end, the final state's gradient, which the
    # positions past L (decay 1, no input) carry back to L - 1 unchanged.
    if HAS_DLAST:
        dh_next = tl.load(dlast_ptr + (b * dim + offs_d[:, None]) * N + offs_n[None, :], mask=ok_d[:, None],
                          other=0.0).to(tl.float32)
    else:
        dh_next = tl.zeros((BLOCK_D, N), tl.float32)
    dA_sum = tl.zeros((BLOCK_D, N), tl.float32)
    dD_sum = tl.zeros((BLOCK_D,), tl.float32)
    dbias_sum = tl.zeros((BLOCK_D,), tl.float32)
    state_rows = (b * blocks * dim + offs_d[:, None]) * N + offs_n[None, :]
    part_rows = ((b * d_programs + pid_d) * N + offs_n[:, None]) * L  # [N, 1] rows of dB / dC's shares
    for back in range(blocks):
        c = blocks - 1 - back
        t = c * BLOCK_T + offs_t
        ok_t = t < L
        ok = ok_d[:, None] & ok_t[None, :]
        ok_next = ok_d[:, None] & (t + 1 < L)[None, :]
        dt_rows = dt_ptr + b * s_dtb + offs_d[:, None] * s_dtd
        raw = tl.load(dt_rows + t[None, :], mask=ok, other=0.0).to(tl.float32)
        raw_next = tl.load(dt_rows + t[None, :] + 1, mask=ok_next, other=0.0).to(tl.float32)
        if HAS_BIAS:
            raw += bias[:, None]
            raw_next += bias[:, None]
        dt = tl.where(ok, step(raw, 0.0, 0.0, SOFTPLUS, False), 0.0)
        dt_next = tl.where(ok_next, step(raw_next, 0.0, 0.0, SOFTPLUS, False), 0.0)
        u = tl.load(u_ptr + b * s_ub + offs_d[:, None] * s_ud + t[None, :], mask=ok, other=0.0).to(tl.float32)
        Bt = tl.load(B_ptr + b * s_Bb + offs_n[:, None] * s_Bn + t[None, :], mask=ok_t[None, :],
                     other=0.0).to(tl.float32)[None, :, :]
        Ct = tl.load(C_ptr + b * s_Cb + offs_n[:, None] * s_Cn + t[None, :], mask=ok_t[None, :],
                     other=0.0).to(tl.float32)[None, :, :]
        dy = tl.load(dout_ptr + b * s_gb + offs_d[:, None] * s_gd + t[None, :], mask=ok, other=0.0).to(tl.float32)
        h0 = tl.load(states_ptr + state_rows + c * dim * N, mask=ok_d[:, None], other=0.0)
        # The block's forward again, from its entering state.
        inp = (dt * u)[:, None, :] * Bt
        decay, hs = tl.associative_scan((tl.exp2(dt[:, None, :] * A2), inp), 2, _affine)
        hs += decay * h0[:, :, None]
        if HAS_Z:
            y = tl.sum(hs * Ct, axis=1)
            if HAS_D:
                y += u * Dv[:, None]
            z = tl.load(z_ptr + b * s_zb + offs_d[:, None] * s_zd + t[None, :], mask=ok, other=0.0).to(tl.float32)
            gate = tl.sigmoid(z)
            tl.store(dz_ptr + b * s_dzb + offs_d[:, None] * s_dzd + t[None, :],
                     (dy * y * gate * (1.0 + z * (1.0 - gate))).to(dz_ptr.dtype.element_ty), mask=ok)
            dy *= z * gate
        # The state gradient, from the end of the block: dh_t = C_t dy_t + a_{t+1} dh_{t+1}.
        after, dh = tl.associative_scan((tl.exp2(dt_next[:, None, :] * A2), Ct * dy[:, None, :]), 2, _affine,
                                        reverse=True)
        dh += after * dh_next[:, :, None]
        dh_next = tl.sum(tl.where(offs_t[None, None, :] == 0, dh, 0.0), axis=2)
        carried = dh * (hs - inp)  # dh_t a_t h_{t-1}
        dhB = tl.sum(dh * Bt, axis=1)
        du = dt * dhB
        if HAS_D:
            du += Dv[:, None] * dy
            dD_sum += tl.sum(dy * u, axis=1)
        ddt = u * dhB + tl.sum(carried * A, axis=1)
        if SOFTPLUS:
            ddt *= step_grad(raw, 0.0, 0.0, SOFTPLUS, False)
        ddt = tl.where(ok, ddt, 0.0)
        dbias_sum += tl.sum(ddt, axis=1)
        dA_sum += tl.sum(carried * dt[:, None, :], axis=2)
        tl.store(du_ptr + b * s_dub + offs_d[:, None] * s_dud + t[None, :], du.to(du_ptr.dtype.element_ty), mask=ok)
        tl.store(ddt_ptr + b * s_ddtb + offs_d[:, None] * s_ddtd + t[None, :], ddt.to(ddt_ptr.dtype.element_ty),
                 mask=ok)
        tl.store(dB_ptr + part_rows + t[None, :], tl.sum(dh * (dt * u)[:, None, :], axis=0), mask=ok_t[None, :])
        tl.store(dC_ptr + part_rows + t[None, :], tl.sum(hs * dy[:, None, :], axis=0), mask=ok_t[None, :])
    tl.store(dA_ptr + (b * dim + offs_d[:, None]) * N + offs_n[None, :], dA_sum, mask=ok_d[:, None])
    if HAS_D:
        tl.store(dD_ptr + b * dim + offs_d, dD_sum, mask=ok_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + b * dim + offs_d, dbias_sum, mask=ok_d)


def _blocks(L: int, block_t: int) -> int:
    return triton.cdiv(L, block_t)


def _scan_forward(u, delta, A, B, C, D, z, delta_bias, softplus, keep_states, last, config):
    """out [b, D, L] in u's dtype; the blocks' entering states [b, blocks, D, N] (float32) with ``keep_states``;
    the final state [b, D, N] (float32) with ``last``."""
    batch, dim, L = u.shape
    N = A.shape[1]
    block_d, block_t, warps = config
    blocks = _blocks(L, block_t)
    out = torch.empty_like(u, memory_format=torch.contiguous_format)
    states = torch.empty(batch, blocks, dim, N, device=u.device, dtype=torch.float32) if keep_states else None
    final = torch.empty(batch, dim, N, device=u.device, dtype=torch.float32) if last else None
    zs = z if z is not None else u
    _scan_fwd_kernel[(triton.cdiv(dim, block_d), batch)](
        u, delta, A, B, C, D, z, delta_bias, out, states, final, dim, L, blocks,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), B.stride(0), B.stride(1), C.stride(0),
        C.stride(1), zs.stride(0), zs.stride(1), out.stride(0), out.stride(1),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
        KEEP_STATES=keep_states, STORE_LAST=last, N=N, BLOCK_D=block_d, BLOCK_T=block_t, num_warps=warps,
    )
    return out, states, final


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, return_last_state, fwd_config, bwd_config):
        ctx.dtypes = (A.dtype, D.dtype if D is not None else None, delta_bias.dtype if delta_bias is not None else None)
        u, delta, B, C = (unit_stride_last(t) for t in (u, delta, B, C))
        z = unit_stride_last(z) if z is not None else None
        A = A.float().contiguous()
        D = D.float().contiguous() if D is not None else None
        bias = delta_bias.float().contiguous() if delta_bias is not None else None
        keep = any(ctx.needs_input_grad)
        if keep and fwd_config[1] != bwd_config[1]:
            raise ValueError(f"the forward and backward must walk blocks of the same length, got "
                             f"{fwd_config[1]} and {bwd_config[1]} positions")
        out, states, final = _scan_forward(u, delta, A, B, C, D, z, bias, softplus, keep, return_last_state,
                                           fwd_config)
        ctx.save_for_backward(u, delta, A, B, C, D, z, bias, states)
        ctx.softplus, ctx.bwd_config = softplus, bwd_config
        return (out, final) if return_last_state else out

    @staticmethod
    def backward(ctx, dout, dlast=None):
        u, delta, A, B, C, D, z, bias, states = ctx.saved_tensors
        batch, dim, L = u.shape
        N = A.shape[1]
        block_d, block_t, warps = ctx.bwd_config
        d_programs = triton.cdiv(dim, block_d)
        dout = unit_stride_last(dout)
        dlast = dlast.contiguous() if dlast is not None else None
        du = torch.empty_like(u, memory_format=torch.contiguous_format)
        ddelta = torch.empty_like(delta, memory_format=torch.contiguous_format)
        dz = torch.empty_like(z, memory_format=torch.contiguous_format) if z is not None else None
        f32 = dict(device=u.device, dtype=torch.float32)
        dA = torch.empty(batch, dim, N, **f32)
        dB = torch.empty(batch, d_programs, N, L, **f32)
        dC = torch.empty(batch, d_programs, N, L, **f32)
        dD = torch.empty(batch, dim, **f32) if D is not None else None
        dbias = torch.empty(batch, dim, **f32) if bias is not None else None
        zs, dzs = (z, dz) if z is not None else (u, du)
        _scan_bwd_kernel[(d_programs, batch)](
            u, delta, A, B, C, D, z, bias, dout, dlast, states, du, ddelta, dz, dA, dB, dC, dD, dbias,
            dim, L, _blocks(L, block_t),
            u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), B.stride(0), B.stride(1), C.stride(0),
            C.stride(1), zs.stride(0), zs.stride(1), dout.stride(0), dout.stride(1),
            du.stride(0), du.stride(1), ddelta.stride(0), ddelta.stride(1), dzs.stride(0), dzs.stride(1),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None, SOFTPLUS=ctx.softplus,
            HAS_DLAST=dlast is not None, N=N, BLOCK_D=block_d, BLOCK_T=block_t, num_warps=warps,
        )
        A_dtype, D_dtype, bias_dtype = ctx.dtypes
        return (du, ddelta, dA.sum(0).to(A_dtype), dB.sum(1).to(B.dtype), dC.sum(1).to(C.dtype),
                dD.sum(0).to(D_dtype) if dD is not None else None, dz,
                dbias.sum(0).to(bias_dtype) if dbias is not None else None, None, None, None, None)


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
    fwd_config: tuple[int, int, int] = SCAN_FWD_CONFIG,
    bwd_config: tuple[int, int, int] = SCAN_BWD_CONFIG,
):
    """:func:`kotomamba.ops.selective_scan.selective_scan_ref`'s arguments and results: u, delta, z [batch, D, L];
    A [D, N] (N a power of two); B, C [batch, N, L]; D, delta_bias [D]. ``fwd_config`` / ``bwd_config``: channels
    per program, positions per block (the same in both), warps."""
    if B.dim() != 3 or C.dim() != 3:
        raise ValueError(f"B and C must be [batch, N, L] (one group), got {tuple(B.shape)} and {tuple(C.shape)}")
    if A.shape[1] & (A.shape[1] - 1):
        raise ValueError(f"d_state must be a power of two, got {A.shape[1]}")
    return _SelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                                tuple(fwd_config), tuple(bwd_config))
