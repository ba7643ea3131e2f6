"""The backward of Mamba-1's selective scan with explicit layouts (Triton's Gluon): the walk of
:mod:`kotomamba.ops.selective_scan_triton`'s ``_scan_bwd_kernel`` line for line, its arguments and results the same,
with each tensor placed in the lanes where its sums cost least.

In ``_scan_bwd_kernel`` Triton picks the layouts from the loads and stores: each lane holds 1 channel and 4 of the
16 states, so a sum over the 8 channels (dB, dC) takes 3 rounds of shuffles for each of 4 values, and a position's
column is picked out of a loaded tile with shuffles and, to match the states' layout, through shared memory behind
a barrier. Here each warp walks 8 channels (a program's warps side by side):

- the states [8, N]: 2 channels x 2 states a lane, 4 lanes along channels, 8 along states;
- a group's per-channel tiles [8, GROUP] (delta, u, the output's gradient, z): the group's positions all in the
  lane, the channels as in the states (the 8 state lanes hold copies), so a position's column is a register;
- B and C as [GROUP, N] tiles laid out the same way along the states.

A vector moves between slices of these layouts that map lanes alike, which costs nothing. The tiles are loaded,
computed elementwise (softplus, the gate) and stored in layouts without copies, and change layout once a group.
The walk's five sums (over states: the gate's output, du's and d delta's terms; over channels: dB, dC) are not
finished at each position: each lane adds up what it holds and keeps that for the group's positions, and the
group's sums are finished together by a reduce-scatter (:func:`_states_finished`): for each lane bit summed over,
the lanes trade half their registers by a warp shuffle and add (:func:`_traded_sum`), so each lane ends up holding
whole sums, with neither a butterfly at every position nor a trip through shared memory (the L1/TEX path that ncu
found bounding the walk at full waves, bench/RESULTS.md session 27). The walked block's states are rerun into shared
memory, one store a group, so the kernel takes no global scratch. On an H200 this walks back faster than the Triton
kernel (sessions 24 and 29 of bench/RESULTS.md), so :func:`kotomamba.ops.selective_scan_triton.backward_kernel`
dispatches it there. Needs ``triton.experimental.gluon`` (run with Triton 3.6, compiled with 3.9) and a CUDA GPU
(Triton's interpreter does not run Gluon); the twin and the parity tests are those of the Triton kernels
(tests/gpu/test_gpu_scan.py).
"""
from __future__ import annotations

import triton.experimental.gluon as gluon
import triton.experimental.gluon.language as gl

from kotomamba.ops.step_triton import step, step_grad

# Channels a warp walks: what the layouts below cover.
CHANNELS = 8
LOG2E = gl.constexpr(1.4426950408889634)


def check(config: tuple[int, ...]) -> None:
    """Raises ValueError unless the backward blocking ``config`` (as selective_scan_triton's) is one the layouts
    below cover: :data:`CHANNELS` channels a warp, 4 or more positions loaded together."""
    block_d, _, warps, group, *_ = config
    if block_d != CHANNELS * warps:
        raise ValueError(f"the Gluon backward walks {CHANNELS} channels a warp, got {block_d} channels on {warps} "
                         f"warps")
    if group < 4:
        raise ValueError(f"the Gluon backward loads 4 or more positions together, got {group}")


@gluon.jit
def _tile(row, pos, stride, ok_rows, ok_pos):
    """[rows, GROUP] in the pointers' dtype from ``row`` [rows] pointers at positions ``pos`` [GROUP]; 0 where
    masked."""
    return gl.load(gl.expand_dims(row, 1) + gl.expand_dims(pos, 0) * stride,
                   mask=gl.expand_dims(ok_rows, 1) & gl.expand_dims(ok_pos, 0), other=0.0)


@gluon.jit
def _tile_across(column, pos, stride, ok_columns, ok_pos):
    """[GROUP, columns] in the pointers' dtype from ``column`` [columns] pointers at positions ``pos`` [GROUP]; 0
    where masked."""
    return gl.load(gl.expand_dims(column, 0) + gl.expand_dims(pos, 1) * stride,
                   mask=gl.expand_dims(ok_pos, 1) & gl.expand_dims(ok_columns, 0), other=0.0)


@gluon.jit
def _half(x, upper: gl.constexpr):
    """The upper or lower half of ``x`` [rows, width] along its positions (dim 1), held in the thread: no data
    moves."""
    rows: gl.constexpr = x.shape[0]
    width: gl.constexpr = x.shape[1]
    lower, higher = gl.split(gl.permute(gl.reshape(x, [rows, 2, width // 2]), [0, 2, 1]))
    if upper:
        return higher
    return lower


@gluon.jit
def _column(tile, i: gl.constexpr, layout: gl.constexpr):
    """Position ``i``'s column [rows] of ``tile`` [rows, GROUP], whose positions each thread holds all of, in
    ``layout``: halves split off down to one, a choice of registers. (A sum of the tile with every other position
    masked to -0.0 compiles to the same with Triton 3.9, but with 3.6 each column keeps an add of +0.0.)"""
    x = tile
    width: gl.constexpr = tile.shape[1]
    for k in gl.static_range(width.bit_length() - 1):
        x = _half(x, (i >> (width.bit_length() - 2 - k)) & 1)
    return gl.convert_layout(gl.reshape(x, [tile.shape[0]]), layout)


@gluon.jit
def _over_states(x, layout: gl.constexpr):
    """[rows, N] -> [rows, 1, N // 2] in ``layout``'s slice: each pair of neighbouring states added up (within a
    lane in the states' layout)."""
    rows: gl.constexpr = x.shape[0]
    n: gl.constexpr = x.shape[1]
    pairs = gl.sum(gl.reshape(x, [rows, n // 2, 2]), axis=2)
    return gl.expand_dims(gl.convert_layout(pairs, gl.SliceLayout(1, layout)), 1)


@gluon.jit
def _over_channels(x, layout: gl.constexpr):
    """[rows, N] -> [rows // 2, 1, N] in ``layout``'s slice: each pair of neighbouring channels added up (within a
    lane in the states' layout)."""
    rows: gl.constexpr = x.shape[0]
    n: gl.constexpr = x.shape[1]
    pairs = gl.sum(gl.reshape(x, [rows // 2, 2, n]), axis=1)
    return gl.expand_dims(gl.convert_layout(pairs, gl.SliceLayout(1, layout)), 1)


@gluon.constexpr_function
def _along(layout, rank, dim):
    """The 1-D layout of dimension ``dim`` of a rank-``rank`` tensor in ``layout``: every other dimension sliced
    away, so that expanding them back in increasing order gives ``layout`` again."""
    for axis in reversed(range(rank)):
        if axis != dim:
            layout = gl.SliceLayout(axis, layout)
    return layout


@gluon.jit
def _traded_sum(x, lanes: gl.constexpr):
    """``x`` [..., 2] summed over its dimension ``lanes`` (of size 2, across a pair of lanes), each lane keeping the
    sums of the half of the last dimension (a pair of registers) that its index along ``lanes`` names:
    out[..., k, ...] = sum_i x[..., i, ..., k], with k in dimension ``lanes`` and the last dimension gone. Each lane
    hands its partner the half it does not keep (a flip along a dimension across lanes is a shuffle a register)
    and adds what comes back: a shuffle, two selects and an add for each pair of registers. Its result is what
    Triton's layout change trading the two bits followed by a sum gives, less one select a pair."""
    first, second = gl.split(x)
    rank: gl.constexpr = len(first.shape)
    upper = gl.arange(0, 2, layout=_along(first.type.layout, rank, lanes)) == 1
    for axis in gl.static_range(rank):
        if axis != lanes:
            upper = gl.expand_dims(upper, axis)
    kept = gl.where(upper, second, first)
    return kept + gl.convert_layout(gl.where(upper, first, second).flip(lanes), kept.type.layout)


@gluon.jit
def _states_finished(parts, layout: gl.constexpr):
    """A group's sums over states [BLOCK_D, GROUP] in ``layout`` (the tiles' K) from the lanes' partial sums
    ``parts`` [BLOCK_D, GROUP, 8] (AS: the 8 lanes along state pairs hold a position's partials) by a
    reduce-scatter (:func:`_traded_sum`): the lane bits of state pairs' bit 2, 1 and 0 traded in turn for the
    register bits of channels' bit 0, the group's top position bit and the position bit below, the bits K keeps on
    those lanes, so the sums arrive in K."""
    rows: gl.constexpr = parts.shape[0]
    group: gl.constexpr = parts.shape[1]
    x = gl.permute(gl.reshape(parts, [rows // 2, 2, group, 2, 4]), [0, 2, 3, 4, 1])  # [ch / 2, pos, sp4, sp % 4, ch0]
    x = _traded_sum(x, 2)  # [ch / 2, pos, ch0, sp % 4]
    x = gl.reshape(gl.permute(x, [0, 2, 1, 3]), [rows, group, 4])
    x = gl.permute(gl.reshape(x, [rows, 2, group // 2, 2, 2]), [0, 2, 3, 4, 1])  # [ch, pos % (G/2), sp2, sp1, ptop]
    x = _traded_sum(x, 2)  # [ch, pos % (G/2), ptop, sp1]
    x = gl.reshape(gl.permute(x, [0, 2, 1, 3]), [rows, group, 2])
    x = gl.permute(gl.reshape(x, [rows, 2, 2, group // 4, 2]), [0, 1, 3, 4, 2])  # [ch, ptop, pos % (G/4), sp1, pmid]
    x = _traded_sum(x, 3)  # [ch, ptop, pos % (G/4), pmid]
    return gl.convert_layout(gl.reshape(gl.permute(x, [0, 1, 3, 2]), [rows, group]), layout)


@gluon.jit
def _channels_finished(parts, layout: gl.constexpr):
    """A group's sums over channels [GROUP, N] in ``layout`` from the lanes' partial sums ``parts`` [BLOCK_D // 2,
    GROUP, N] (AC: 4 lanes and the warps along channel pairs hold a position's partials): the channel pairs' two lane
    bits traded as in :func:`_states_finished` for the group's top two position bits, then the warps' partials added
    through shared memory."""
    pairs: gl.constexpr = parts.shape[0]
    group: gl.constexpr = parts.shape[1]
    n: gl.constexpr = parts.shape[2]
    # [warp, cp2, cp1, pos % (G/2), n, ptop]
    x = gl.permute(gl.reshape(parts, [pairs // 4, 2, 2, 2, group // 2, n]), [0, 1, 2, 4, 5, 3])
    x = _traded_sum(x, 1)  # [warp, ptop, cp1, pos % (G/2), n]
    x = gl.reshape(gl.permute(x, [0, 2, 1, 3, 4]), [pairs // 4, 2, group, n])
    # [warp, cp1, ptop, pos % (G/4), n, pmid]
    x = gl.permute(gl.reshape(x, [pairs // 4, 2, 2, 2, group // 4, n]), [0, 1, 2, 4, 5, 3])
    x = _traded_sum(x, 1)  # [warp, pmid, ptop, pos % (G/4), n]
    x = gl.reshape(gl.permute(x, [0, 2, 1, 3, 4]), [pairs // 4, group, n])
    return gl.convert_layout(gl.sum(x, axis=0), layout)


@gluon.jit
def _by_lane(h, layout: gl.constexpr):
    """A state [8 W, N] in the states' layout S -> [32 W, 4] in ``layout``: row = a lane (warp by warp), the lane's
    4 values (2 channels x 2 states) along it; moves no data."""
    rows: gl.constexpr = h.shape[0]
    n: gl.constexpr = h.shape[1]
    x = gl.permute(gl.reshape(h, [rows // 2, 2, n // 2, 2]), [0, 2, 1, 3])
    return gl.convert_layout(gl.reshape(x, [rows // 2 * (n // 2), 4]), layout)


@gluon.jit
def _from_lanes(x, layout: gl.constexpr):
    """:func:`_by_lane`'s inverse: [32 W, 4] -> [8 W, 16] in ``layout`` (S)."""
    lanes: gl.constexpr = x.shape[0]
    y = gl.permute(gl.reshape(x, [lanes // 8, 8, 2, 2]), [0, 2, 1, 3])
    return gl.convert_layout(gl.reshape(y, [lanes // 4, 16]), layout)


@gluon.jit
def _scan_bwd_kernel(
    # The Triton kernel's arguments, so that both take one argument list; scratch_ptr (None here) is unused: the
    # walked block's states are kept in shared memory.
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, dlast_ptr, states_ptr, scratch_ptr,
    du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    dim, L, blocks,
    s_ub, s_ud, s_ul, s_dtb, s_dtd, s_dtl, s_Bb, s_Bn, s_Bl, s_Cb, s_Cn, s_Cl, s_zb, s_zd, s_zl, s_gb, s_gd, s_gl,
    s_dub, s_dud, s_dul, s_ddtb, s_ddtd, s_ddtl, s_dzb, s_dzd, s_dzl,
    HAS_D: gl.constexpr, HAS_Z: gl.constexpr, HAS_BIAS: gl.constexpr, SOFTPLUS: gl.constexpr,
    HAS_DLAST: gl.constexpr, N: gl.constexpr, BLOCK_D: gl.constexpr, BLOCK_T: gl.constexpr, GROUP: gl.constexpr,
):
    # 8 channels a warp, the warps side by side along channels; what every channel reads (B, C) each warp holds.
    W: gl.constexpr = BLOCK_D // 8
    S: gl.constexpr = gl.BlockedLayout([2, 2], [4, 8], [W, 1], [1, 0])      # [BLOCK_D, N]
    T: gl.constexpr = gl.BlockedLayout([2, GROUP], [4, 8], [W, 1], [1, 0])  # [BLOCK_D, GROUP], walked
    P: gl.constexpr = gl.BlockedLayout([GROUP, 2], [4, 8], [1, W], [1, 0])  # [GROUP, N], walked
    # The same tiles without copies, where they are loaded, computed elementwise and stored.
    K: gl.constexpr = gl.BlockedLayout([1, GROUP // 4], [8, 4], [W, 1], [1, 0])  # [BLOCK_D, GROUP]
    Q: gl.constexpr = gl.BlockedLayout([GROUP // 4, 1], [4, 8], [1, W], [0, 1])  # [GROUP, N]
    S_D: gl.constexpr = gl.SliceLayout(1, S)
    S_N: gl.constexpr = gl.SliceLayout(0, S)
    K_D: gl.constexpr = gl.SliceLayout(1, K)
    K_P: gl.constexpr = gl.SliceLayout(0, K)
    Q_P: gl.constexpr = gl.SliceLayout(1, Q)
    Q_N: gl.constexpr = gl.SliceLayout(0, Q)
    # The walk's five sums, each lane's share of a position's sum kept for the group's positions and finished once a
    # group: over states [BLOCK_D, GROUP, N // 2] (a lane's pair of states added up, 8 lanes' partials left), over
    # channels [BLOCK_D // 2, GROUP, N] (a lane's pair of channels, 4 lanes' partials). The same lanes hold a
    # position's partials as hold its states, so a partial moves into the group for free; the group is finished by
    # warp shuffles, the sums over states arriving in K, those over channels in R.
    LANES: gl.constexpr = gl.BlockedLayout([1, 4], [32, 1], [W, 1], [1, 0])  # [32 W, 4]: a state, a lane's 4 a row
    GROUP_LANES: gl.constexpr = gl.BlockedLayout([GROUP, 1, 4], [1, 32, 1], [1, W, 1], [2, 1, 0])  # a group's
    AS: gl.constexpr = gl.BlockedLayout([2, GROUP, 1], [4, 1, 8], [W, 1, 1], [2, 1, 0])
    AC: gl.constexpr = gl.BlockedLayout([1, GROUP, 2], [4, 1, 8], [W, 1, 1], [2, 1, 0])
    R: gl.constexpr = gl.BlockedLayout([GROUP // 4, 2], [4, 8], [W, 1], [1, 0])  # [GROUP, N]
    R_P: gl.constexpr = gl.SliceLayout(1, R)
    R_N: gl.constexpr = gl.SliceLayout(0, R)
    pid_d = gl.program_id(0)
    d_programs = gl.num_programs(0)
    b = gl.program_id(1).to(gl.int64)
    offs_d = pid_d * BLOCK_D + gl.arange(0, BLOCK_D, layout=S_D)
    ok_d = offs_d < dim
    offs_n = gl.arange(0, N, layout=S_N)
    tile_d = pid_d * BLOCK_D + gl.arange(0, BLOCK_D, layout=K_D)
    ok_tile_d = tile_d < dim
    tile_p = gl.arange(0, GROUP, layout=K_P)
    part_p = gl.arange(0, GROUP, layout=Q_P)
    part_n = gl.arange(0, N, layout=Q_N)
    sum_p = gl.arange(0, GROUP, layout=R_P)
    sum_n = gl.arange(0, N, layout=R_N)
    sum_s_p = gl.expand_dims(gl.expand_dims(gl.arange(0, GROUP, layout=gl.SliceLayout(0, gl.SliceLayout(2, AS))), 0), 2)
    sum_c_p = gl.expand_dims(gl.expand_dims(gl.arange(0, GROUP, layout=gl.SliceLayout(0, gl.SliceLayout(2, AC))), 0), 2)
    ok_part_n = part_n < N
    A = gl.load(A_ptr + gl.expand_dims(offs_d, 1) * N + gl.expand_dims(offs_n, 0), mask=gl.expand_dims(ok_d, 1),
                other=0.0)
    A2 = A * LOG2E
    Dv = gl.zeros([BLOCK_D], gl.float32, layout=K_D)
    bias = gl.zeros([BLOCK_D], gl.float32, layout=K_D)
    if HAS_D:
        Dv = gl.load(D_ptr + tile_d, mask=ok_tile_d, other=0.0)
    if HAS_BIAS:
        bias = gl.load(bias_ptr + tile_d, mask=ok_tile_d, other=0.0)
    u_row, dt_row = u_ptr + b * s_ub + tile_d * s_ud, dt_ptr + b * s_dtb + tile_d * s_dtd
    dout_row = dout_ptr + b * s_gb + tile_d * s_gd
    du_row, ddt_row = du_ptr + b * s_dub + tile_d * s_dud, ddt_ptr + b * s_ddtb + tile_d * s_ddtd
    if HAS_Z:
        z_row, dz_row = z_ptr + b * s_zb + tile_d * s_zd, dz_ptr + b * s_dzb + tile_d * s_dzd
    B_row, C_row = B_ptr + b * s_Bb + part_n * s_Bn, C_ptr + b * s_Cb + part_n * s_Cn
    state_rows = (b * blocks * dim + gl.expand_dims(offs_d, 1)) * N + gl.expand_dims(offs_n, 0)
    program = b * d_programs + pid_d
    # Every position's state of the block being walked back, in shared memory: each lane's 4 values of a state
    # side by side ([lanes, 4] a position), so that a lane stores and loads them in one access without bank conflicts.
    states_kept = gl.allocate_shared_memory(gl.float32, [BLOCK_T // GROUP, GROUP * 32 * W, 4],
                                            gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
    group_p = gl.expand_dims(gl.expand_dims(gl.arange(0, GROUP, layout=gl.SliceLayout(1, gl.SliceLayout(2,
                                                                                              GROUP_LANES))), 1), 2)
    sum_rows = program * L * N + sum_n
    if HAS_DLAST:
        carried = gl.load(dlast_ptr + (b * dim + gl.expand_dims(offs_d, 1)) * N + gl.expand_dims(offs_n, 0),
                          mask=gl.expand_dims(ok_d, 1), other=0.0).to(gl.float32)
    else:
        carried = gl.zeros([BLOCK_D, N], gl.float32, layout=S)
    dA_sum = gl.zeros([BLOCK_D, N], gl.float32, layout=S)
    dD_sum = gl.zeros([BLOCK_D], gl.float32, layout=K_D)
    dbias_sum = gl.zeros([BLOCK_D], gl.float32, layout=K_D)
    # Each group's tiles are read a group ahead of the walk, which has nothing else to hide their latency behind: the
    # forward's next group (at its last, the walk back's first, the same group), the walk back's group before it (at
    # the block's first, the forward's first group of the block before). What only the walk back reads (the output's
    # gradient, z and C) is read a walked-back group ahead: at a block's first group, the last group of the block
    # before. Read at the block's start instead, they made the program wait there: ptxas splits the bf16 pairs of a
    # tile that only passes through a loop right where it is loaded, those of a loop's own carried tile at the loop's
    # end.
    last = (blocks - 1) * BLOCK_T
    ahead, ahead_p = last + tile_p, last + part_p
    dt_ahead = _tile(dt_row, ahead, s_dtl, ok_tile_d, ahead < L)
    u_ahead = _tile(u_row, ahead, s_ul, ok_tile_d, ahead < L)
    B_ahead = _tile_across(B_row, ahead_p, s_Bl, ok_part_n, ahead_p < L)
    last_group = last + (gl.cdiv(L - last, GROUP) - 1) * GROUP
    behind, behind_p = last_group + tile_p, last_group + part_p
    dy_ahead = _tile(dout_row, behind, s_gl, ok_tile_d, behind < L)
    if HAS_Z:
        z_ahead = _tile(z_row, behind, s_zl, ok_tile_d, behind < L)
    C_ahead = _tile_across(C_row, behind_p, s_Cl, ok_part_n, behind_p < L)
    for back in range(blocks):
        c = blocks - 1 - back
        start = c * BLOCK_T
        groups = gl.cdiv(gl.minimum(BLOCK_T, L - start), GROUP)
        # The block's forward again, from its entering state, keeping every position's state.
        h = gl.load(states_ptr + state_rows + c * dim * N, mask=gl.expand_dims(ok_d, 1), other=0.0)
        for g in range(groups):
            pos = start + g * GROUP + tile_p
            ok_pos = pos < L
            pos_p = start + g * GROUP + part_p
            raws = dt_ahead.to(gl.float32) + gl.expand_dims(bias, 1)
            us = u_ahead.to(gl.float32)
            Bs = gl.convert_layout(B_ahead.to(gl.float32), P)
            jump = GROUP * (g + 1 < groups).to(gl.int32)
            ahead, ahead_p = pos + jump, pos_p + jump
            dt_ahead = _tile(dt_row, ahead, s_dtl, ok_tile_d, ahead < L)
            u_ahead = _tile(u_row, ahead, s_ul, ok_tile_d, ahead < L)
            B_ahead = _tile_across(B_row, ahead_p, s_Bl, ok_part_n, ahead_p < L)
            dts = gl.where(gl.expand_dims(ok_pos, 0), step(raws, 0.0, 0.0, SOFTPLUS, False), 0.0)
            dtus = gl.convert_layout(dts * us, T)
            dts = gl.convert_layout(dts, T)
            kept = gl.zeros([GROUP, 32 * W, 4], gl.float32, layout=GROUP_LANES)
            for i in gl.static_range(GROUP):
                dt = _column(dts, i, S_D)
                dtu = _column(dtus, i, S_D)
                Bt = _column(gl.permute(Bs, [1, 0]), i, S_N)
                h = gl.exp2(gl.expand_dims(dt, 1) * A2) * h + gl.expand_dims(dtu, 1) * gl.expand_dims(Bt, 0)
                kept = gl.where(group_p == i, gl.expand_dims(_by_lane(h, gl.SliceLayout(0, GROUP_LANES)), 0), kept)
            # One store a group: a barrier guards each store into shared memory (Triton 3.6 puts one before every one).
            states_kept.index(g).store(gl.reshape(kept, [GROUP * 32 * W, 4]))
        # Then back, a group at a time from the last: dh_t = C_t dy_t + a_{t+1} dh_{t+1}.
        for back_g in range(groups):
            g = groups - 1 - back_g
            pos = start + g * GROUP + tile_p
            ok_pos = pos < L
            ok = gl.expand_dims(ok_tile_d, 1) & gl.expand_dims(ok_pos, 0)
            pos_p = start + g * GROUP + part_p
            raws = dt_ahead.to(gl.float32) + gl.expand_dims(bias, 1)
            us = u_ahead.to(gl.float32)
            Bs = gl.convert_layout(B_ahead.to(gl.float32), P)
            Cs = gl.convert_layout(C_ahead.to(gl.float32), P)
            dys = dy_ahead.to(gl.float32)
            if HAS_Z:
                zs = z_ahead.to(gl.float32)
            jump = GROUP + (g == 0).to(gl.int32) * (BLOCK_T - GROUP)
            ahead, ahead_p = pos - jump, pos_p - jump
            ok_ahead = (ahead >= 0) & (ahead < L)
            ok_ahead_p = (ahead_p >= 0) & (ahead_p < L)
            dt_ahead = _tile(dt_row, ahead, s_dtl, ok_tile_d, ok_ahead)
            u_ahead = _tile(u_row, ahead, s_ul, ok_tile_d, ok_ahead)
            B_ahead = _tile_across(B_row, ahead_p, s_Bl, ok_part_n, ok_ahead_p)
            behind, behind_p = pos - GROUP, pos_p - GROUP
            C_ahead = _tile_across(C_row, behind_p, s_Cl, ok_part_n, behind_p >= 0)
            dy_ahead = _tile(dout_row, behind, s_gl, ok_tile_d, behind >= 0)
            if HAS_Z:
                z_ahead = _tile(z_row, behind, s_zl, ok_tile_d, behind >= 0)
            dts = gl.where(gl.expand_dims(ok_pos, 0), step(raws, 0.0, 0.0, SOFTPLUS, False), 0.0)
            if HAS_Z:
                gates = 1.0 / (1.0 + gl.exp(-zs))
                dys_in = dys
                dys *= zs * gates
            walk_dts = gl.convert_layout(dts, T)
            walk_us = gl.convert_layout(us, T)
            walk_dys = gl.convert_layout(dys, T)
            ys_part = gl.zeros([BLOCK_D, GROUP, N // 2], gl.float32, layout=AS)
            dhBs_part = gl.zeros([BLOCK_D, GROUP, N // 2], gl.float32, layout=AS)
            keptAs_part = gl.zeros([BLOCK_D, GROUP, N // 2], gl.float32, layout=AS)
            dBs_part = gl.zeros([BLOCK_D // 2, GROUP, N], gl.float32, layout=AC)
            dCs_part = gl.zeros([BLOCK_D // 2, GROUP, N], gl.float32, layout=AC)
            for j in gl.static_range(GROUP):
                sel_s = sum_s_p == GROUP - 1 - j
                sel_c = sum_c_p == GROUP - 1 - j
                dt = _column(walk_dts, GROUP - 1 - j, S_D)
                u = _column(walk_us, GROUP - 1 - j, S_D)
                dy = _column(walk_dys, GROUP - 1 - j, S_D)
                Bt = gl.expand_dims(_column(gl.permute(Bs, [1, 0]), GROUP - 1 - j, S_N), 0)
                Ct = gl.expand_dims(_column(gl.permute(Cs, [1, 0]), GROUP - 1 - j, S_N), 0)
                h = _from_lanes(states_kept.index(g).slice((GROUP - 1 - j) * 32 * W, 32 * W).load(LANES), S)
                if HAS_Z:
                    ys_part = gl.where(sel_s, _over_states(h * Ct, AS), ys_part)
                dh = Ct * gl.expand_dims(dy, 1) + carried
                carried = gl.exp2(gl.expand_dims(dt, 1) * A2) * dh
                dtu = gl.expand_dims(dt * u, 1)
                kept = dh * (h - dtu * Bt)  # dh_t a_t h_{t-1}
                dhBs_part = gl.where(sel_s, _over_states(dh * Bt, AS), dhBs_part)
                keptAs_part = gl.where(sel_s, _over_states(kept * A, AS), keptAs_part)
                dA_sum += kept * gl.expand_dims(dt, 1)
                dBs_part = gl.where(sel_c, _over_channels(dh * dtu, AC), dBs_part)
                dCs_part = gl.where(sel_c, _over_channels(h * gl.expand_dims(dy, 1), AC), dCs_part)
            if HAS_Z:
                ys = _states_finished(ys_part, K)
            dhBs = _states_finished(dhBs_part, K)
            keptAs = _states_finished(keptAs_part, K)
            dBs = _channels_finished(dBs_part, R)
            dCs = _channels_finished(dCs_part, R)
            dus = dts * dhBs
            if HAS_D:
                dus += gl.expand_dims(Dv, 1) * dys
                dD_sum += gl.sum(dys * us, axis=1)
            if HAS_Z:
                if HAS_D:
                    ys += us * gl.expand_dims(Dv, 1)
                dz_tile = gl.expand_dims(dz_row, 1) + gl.expand_dims(pos, 0) * s_dzl
                gl.store(dz_tile, (dys_in * ys * gates * (1.0 + zs * (1.0 - gates))).to(dz_ptr.dtype.element_ty),
                         mask=ok)
            ddts = us * dhBs + keptAs
            if SOFTPLUS:
                ddts *= step_grad(raws, 0.0, 0.0, SOFTPLUS, False)
            ddts = gl.where(ok, ddts, 0.0)
            dbias_sum += gl.sum(ddts, axis=1)
            gl.store(gl.expand_dims(du_row, 1) + gl.expand_dims(pos, 0) * s_dul, dus.to(du_ptr.dtype.element_ty),
                     mask=ok)
            gl.store(gl.expand_dims(ddt_row, 1) + gl.expand_dims(pos, 0) * s_ddtl,
                     ddts.to(ddt_ptr.dtype.element_ty), mask=ok)
            pos_s = start + g * GROUP + sum_p
            ok_sum = gl.expand_dims(pos_s < L, 1) & gl.expand_dims(sum_n < N, 0)
            sums = gl.expand_dims(sum_rows, 0) + gl.expand_dims(pos_s, 1) * N
            gl.store(dB_ptr + sums, dBs, mask=ok_sum)
            gl.store(dC_ptr + sums, dCs, mask=ok_sum)
    gl.store(dA_ptr + (b * dim + gl.expand_dims(offs_d, 1)) * N + gl.expand_dims(offs_n, 0), dA_sum,
             mask=gl.expand_dims(ok_d, 1))
    if HAS_D:
        gl.store(dD_ptr + b * dim + tile_d, dD_sum, mask=ok_tile_d)
    if HAS_BIAS:
        gl.store(dbias_ptr + b * dim + tile_d, dbias_sum, mask=ok_tile_d)
