"""Reference ops against straightforward sequential formulas (forward, backward, gradcheck)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kotomamba.ops import dispatch
from kotomamba.ops.causal_conv1d import causal_conv1d, causal_conv1d_ref, causal_conv1d_update_ref
from kotomamba.ops.cross_entropy import chunked_cross_entropy, cross_entropy_ref
from kotomamba.ops.norm import add_rms_norm_ref, gated_rms_norm_ref
from kotomamba.ops.selective_scan import selective_scan_ref
from kotomamba.ops.ssd import ssd_chunk_scan_ref
from kotomamba.ops.ssm_step import selective_state_update_ref


def conv_loop(x, weight, bias, seq_idx=None):
    """y[b, d, t] = bias + sum_k w[d, k] x[b, d, t - W + 1 + k], taps limited to t's document."""
    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    y = torch.zeros_like(x)
    for t in range(seqlen):
        acc = bias.clone().expand(batch, dim).clone()
        for k in range(width):
            s = t - width + 1 + k
            if s < 0:
                continue
            same = torch.ones(batch, 1, dtype=x.dtype) if seq_idx is None else \
                (seq_idx[:, s] == seq_idx[:, t]).to(x.dtype)[:, None]
            acc = acc + weight[:, k] * x[:, :, s] * same
        y[:, :, t] = acc
    return F.silu(y)


def s6_loop(u, delta, A, B, C, D, z, delta_bias):
    """Mamba-1 recurrence one step at a time."""
    delta = F.softplus(delta + delta_bias[:, None])
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=u.dtype)
    ys = []
    for t in range(u.shape[2]):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1) + u * D[:, None]
    return y * F.silu(z), h


def ssd_loop(x, dt, A, B, C, D, dt_bias, seq_idx=None, initial=None):
    """Mamba-2 recurrence one step at a time; the state is zeroed where a new document starts."""
    batch, seqlen, nheads, headdim = x.shape
    rep = nheads // B.shape[2]
    B, C = B.repeat_interleave(rep, dim=2), C.repeat_interleave(rep, dim=2)
    dt = F.softplus(dt + dt_bias)
    h = torch.zeros(batch, nheads, headdim, B.shape[-1], dtype=x.dtype) if initial is None else initial.clone()
    ys = []
    for t in range(seqlen):
        if seq_idx is not None and t > 0:
            h = h * (seq_idx[:, t] == seq_idx[:, t - 1]).to(x.dtype)[:, None, None, None]
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]
        h = decay * h + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        ys.append((h * C[:, t, :, None, :]).sum(-1))
    return torch.stack(ys, dim=1) + x * D[:, None], h


def packed_seq_idx(batch, seqlen, cuts):
    seq_idx = torch.zeros(batch, seqlen, dtype=torch.int32)
    for b, row in enumerate(cuts):
        for c in row:
            seq_idx[b, c:] += 1
    return seq_idx


@pytest.mark.parametrize("with_seq_idx", [False, True])
def test_causal_conv1d_ref_matches_loop_and_grads(with_seq_idx):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 11, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    seq_idx = packed_seq_idx(2, 11, [[3, 9], [5]]) if with_seq_idx else None
    y = causal_conv1d_ref(x, w, b, seq_idx=seq_idx, activation="silu")
    y_loop = conv_loop(x, w, b, seq_idx)
    torch.testing.assert_close(y, y_loop)
    g = torch.randn_like(y)
    grads = torch.autograd.grad((y * g).sum(), (x, w, b))
    grads_loop = torch.autograd.grad((y_loop * g).sum(), (x, w, b))
    for a, e in zip(grads, grads_loop):
        torch.testing.assert_close(a, e)
    assert torch.autograd.gradcheck(lambda *t: causal_conv1d_ref(*t, seq_idx=seq_idx, activation="silu"),
                                    (x, w, b))


def test_causal_conv1d_update_continues_the_full_convolution():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 9)
    w, b = torch.randn(5, 4), torch.randn(5)
    full = causal_conv1d_ref(x, w, b, activation="silu")
    state = torch.zeros(2, 5, 4)
    steps = [causal_conv1d_update_ref(x[:, :, t], state, w, b, "silu") for t in range(9)]
    torch.testing.assert_close(torch.stack(steps, dim=-1), full)
    torch.testing.assert_close(state, x[:, :, -4:])


@pytest.mark.parametrize("seqlen,chunk", [(1, 4), (13, 4), (16, 16), (33, 8), (20, 64)])
def test_selective_scan_ref_matches_recurrence(seqlen, chunk):
    torch.manual_seed(seqlen)
    batch, dim, n = 2, 5, 3
    u = torch.randn(batch, dim, seqlen, dtype=torch.float64, requires_grad=True)
    delta = torch.randn(batch, dim, seqlen, dtype=torch.float64, requires_grad=True)
    A = (-torch.rand(dim, n, dtype=torch.float64) * 3).requires_grad_()
    B = torch.randn(batch, n, seqlen, dtype=torch.float64, requires_grad=True)
    C = torch.randn(batch, n, seqlen, dtype=torch.float64, requires_grad=True)
    D = torch.randn(dim, dtype=torch.float64, requires_grad=True)
    z = torch.randn(batch, dim, seqlen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(dim, dtype=torch.float64, requires_grad=True)
    inputs = (u, delta, A, B, C, D, z, bias)
    y, last = selective_scan_ref(*inputs, delta_softplus=True, return_last_state=True, chunk_size=chunk)
    y_loop, last_loop = s6_loop(*inputs)
    torch.testing.assert_close(y, y_loop)
    torch.testing.assert_close(last, last_loop)
    g = torch.randn_like(y)
    grads = torch.autograd.grad((y * g).sum(), inputs)
    grads_loop = torch.autograd.grad((y_loop * g).sum(), inputs)
    for a, e in zip(grads, grads_loop):
        torch.testing.assert_close(a, e)


def test_selective_scan_ref_gradcheck():
    torch.manual_seed(1)
    shapes = [(1, 2, 5), (1, 2, 5), (2, 3), (1, 3, 5), (1, 3, 5), (2,), (1, 2, 5), (2,)]
    inputs = [torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in shapes]
    with torch.no_grad():
        inputs[2].copy_(-inputs[2].abs())
    assert torch.autograd.gradcheck(
        lambda *t: selective_scan_ref(*t, delta_softplus=True, chunk_size=2), tuple(inputs))


def _ssd_inputs(batch, seqlen, nheads, headdim, ngroups, n, seed):
    torch.manual_seed(seed)
    kw = dict(dtype=torch.float64, requires_grad=True)
    x = torch.randn(batch, seqlen, nheads, headdim, **kw)
    dt = torch.randn(batch, seqlen, nheads, **kw)
    A = (-torch.rand(nheads, dtype=torch.float64) * 2 - 0.1).requires_grad_()
    B = torch.randn(batch, seqlen, ngroups, n, **kw)
    C = torch.randn(batch, seqlen, ngroups, n, **kw)
    D = torch.randn(nheads, **kw)
    dt_bias = torch.randn(nheads, **kw)
    return x, dt, A, B, C, D, dt_bias


@pytest.mark.parametrize("seqlen,chunk,ngroups,packed", [
    (16, 4, 1, False), (13, 4, 2, False), (7, 16, 1, False), (24, 8, 2, True), (19, 4, 1, True),
])
def test_ssd_chunk_scan_ref_matches_recurrence(seqlen, chunk, ngroups, packed):
    x, dt, A, B, C, D, dt_bias = _ssd_inputs(2, seqlen, 4, 3, ngroups, 5, seed=seqlen)
    # Cuts inside chunks, on a chunk boundary and right before one.
    seq_idx = packed_seq_idx(2, seqlen, [[2, chunk, chunk + 3], [chunk - 1]]) if packed else None
    initial = torch.randn(2, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    y, final = ssd_chunk_scan_ref(x, dt, A, B, C, chunk, D=D, dt_bias=dt_bias, dt_softplus=True,
                                  initial_states=initial, seq_idx=seq_idx, return_final_states=True)
    y_loop, final_loop = ssd_loop(x, dt, A, B, C, D, dt_bias, seq_idx, initial)
    torch.testing.assert_close(y, y_loop)
    torch.testing.assert_close(final, final_loop)
    inputs = (x, dt, A, B, C, D, dt_bias, initial)
    g = torch.randn_like(y)
    grads = torch.autograd.grad((y * g).sum() + final.sum(), inputs)
    grads_loop = torch.autograd.grad((y_loop * g).sum() + final_loop.sum(), inputs)
    for a, e in zip(grads, grads_loop):
        torch.testing.assert_close(a, e)


def test_ssd_chunk_scan_ref_gradcheck():
    inputs = _ssd_inputs(1, 6, 2, 2, 1, 3, seed=3)
    seq_idx = packed_seq_idx(1, 6, [[4]])
    assert torch.autograd.gradcheck(
        lambda x, dt, A, B, C, D, bias: ssd_chunk_scan_ref(x, dt, A, B, C, 4, D=D, dt_bias=bias,
                                                           dt_softplus=True, seq_idx=seq_idx),
        inputs)


def test_selective_state_update_ref_is_one_recurrence_step():
    torch.manual_seed(0)
    x, dt, A, B, C, D, dt_bias = (t.detach() for t in _ssd_inputs(2, 1, 4, 3, 2, 5, seed=5))
    state0 = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    y_loop, h_loop = ssd_loop(x, dt, A, B, C, D, dt_bias, initial=state0)
    state = state0.clone()
    p, n = 3, 5
    y = selective_state_update_ref(state, x[:, 0], dt[:, 0, :, None].expand(-1, -1, p),
                                   A[:, None, None].expand(-1, p, n), B[:, 0], C[:, 0],
                                   D[:, None].expand(-1, p), dt_bias=dt_bias[:, None].expand(-1, p),
                                   dt_softplus=True)
    torch.testing.assert_close(y, y_loop[:, 0])
    torch.testing.assert_close(state, h_loop)


def test_rms_norms_match_formulas():
    torch.manual_seed(0)
    x, res, z = torch.randn(3, 8), torch.randn(3, 8), torch.randn(3, 8)
    w = torch.randn(8)
    y, r = add_rms_norm_ref(x.bfloat16(), w, res, eps=1e-5, prenorm=True)
    s = x.bfloat16().float() + res
    torch.testing.assert_close(r, s)
    assert y.dtype == torch.bfloat16 and r.dtype == torch.float32
    torch.testing.assert_close(y.float(), s / torch.sqrt(s.pow(2).mean(-1, keepdim=True) + 1e-5) * w,
                               atol=2e-2, rtol=1e-2)
    _, r_first = add_rms_norm_ref(x.bfloat16(), w, None, prenorm=True, residual_in_fp32=True)
    assert r_first.dtype == torch.float32
    g = torch.cat([gated_rms_norm_ref(x[:, :4], z[:, :4], w[:4]), gated_rms_norm_ref(x[:, 4:], z[:, 4:], w[4:])], -1)
    torch.testing.assert_close(gated_rms_norm_ref(x, z, w, group_size=4), g)
    gx = x * F.silu(z)
    torch.testing.assert_close(gated_rms_norm_ref(x, z, w), gx * torch.rsqrt(gx.pow(2).mean(-1, keepdim=True) + 1e-5) * w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_cross_entropy_matches_reference(dtype):
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=dtype, requires_grad=True)
    weight = torch.randn(50, 16, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, 50, (37,))
    labels[::5] = -100
    loss = chunked_cross_entropy(hidden, weight, labels, chunk_size=8)
    ref = cross_entropy_ref(hidden, weight, labels)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(loss, ref, **tol)
    grads = torch.autograd.grad(loss * 3.0, (hidden, weight))
    grads_ref = torch.autograd.grad(ref * 3.0, (hidden, weight))
    for a, e in zip(grads, grads_ref):
        torch.testing.assert_close(a.float(), e.float(), **tol)


def test_chunked_cross_entropy_gradient_cases():
    """One input needing a gradient, no gradient mode, under autocast, and no labelled token."""
    torch.manual_seed(0)
    hidden = torch.randn(21, 8, requires_grad=True)
    weight = torch.randn(30, 8, requires_grad=True)
    labels = torch.randint(0, 30, (21,))
    ref = cross_entropy_ref(hidden, weight, labels)
    (g_hidden_ref,) = torch.autograd.grad(ref, hidden, retain_graph=True)
    (g_weight_ref,) = torch.autograd.grad(ref, weight)
    (g_hidden,) = torch.autograd.grad(chunked_cross_entropy(hidden, weight.detach(), labels, chunk_size=4), hidden)
    (g_weight,) = torch.autograd.grad(chunked_cross_entropy(hidden.detach(), weight, labels, chunk_size=4), weight)
    torch.testing.assert_close(g_hidden, g_hidden_ref)
    torch.testing.assert_close(g_weight, g_weight_ref)
    with torch.no_grad():
        loss = chunked_cross_entropy(hidden, weight, labels, chunk_size=4)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, ref.detach())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = chunked_cross_entropy(hidden, weight, labels, chunk_size=4)
    ref_bf16 = cross_entropy_ref(hidden.bfloat16(), weight.bfloat16(), labels)
    torch.testing.assert_close(loss, ref_bf16, atol=1e-2, rtol=1e-2)
    grads = torch.autograd.grad(loss, (hidden, weight))
    assert [g.dtype for g in grads] == [torch.float32, torch.float32]
    for a, e in zip(grads, (g_hidden_ref, g_weight_ref)):
        torch.testing.assert_close(a, e, atol=2e-2, rtol=5e-2)
    nothing = torch.full((21,), -100)
    loss = chunked_cross_entropy(hidden, weight, nothing, chunk_size=4)
    assert loss.isnan()
    assert all((g == 0).all() for g in torch.autograd.grad(loss, (hidden, weight)))


def test_dispatch_uses_reference_on_cpu_and_when_forced(monkeypatch):
    x = torch.zeros(1)
    assert not dispatch.use_kernels(x, "torch")
    monkeypatch.setenv(dispatch.FORCE_REFERENCE_ENV, "1")
    assert dispatch.force_reference()
    monkeypatch.setenv(dispatch.FORCE_REFERENCE_ENV, "0")
    assert not dispatch.force_reference()
    torch.testing.assert_close(causal_conv1d(torch.ones(1, 2, 3), torch.ones(2, 2)),
                               causal_conv1d_ref(torch.ones(1, 2, 3), torch.ones(2, 2)))
