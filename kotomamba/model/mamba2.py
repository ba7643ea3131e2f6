"""The Mamba-2 mixer (mamba-ssm ``modules/mamba2.py``: ``Mamba2`` with its defaults d_ssm = d_inner,
rmsnorm, norm after gate), same parameters and keys: ``in_proj``, ``conv1d``, ``dt_bias``,
``A_log``, ``D``, ``norm``, ``out_proj``."""
from __future__ import annotations

import torch
from torch import nn

from kotomamba.model.dt_init import inverse_softplus_dt
from kotomamba.model.norm import GatedRMSNorm
from kotomamba.ops.causal_conv1d import causal_conv1d
from kotomamba.ops.fused import Mamba2Row, mamba2_split_conv1d_scan
from kotomamba.ops.linear import linear
from kotomamba.ops.mamba2_decode import circular_conv_state, mamba2_decode_step
from kotomamba.ops.ssd import ssd_chunk_scan


class Mamba2Mixer(nn.Module):
    """SSD mixer with multi-head scalar-decay SSM. Input and output [batch, L, d_model]."""

    NO_WEIGHT_DECAY = ("A_log", "D", "dt_bias")  # as upstream

    def __init__(self, d_model: int, d_state: int = 128, d_conv: int = 4, conv_init: float | None = None,
                 expand: int = 2, headdim: int = 64, ngroups: int = 1,
                 A_init_range: tuple[float, float] = (1, 16), dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, dt_limit: tuple[float, float] = (0.0, float("inf")),
                 bias: bool = False, conv_bias: bool = True, chunk_size: int = 256,
                 device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.headdim, self.ngroups, self.chunk_size = headdim, ngroups, chunk_size
        self.nheads = self.d_inner // headdim
        self.conv_init, self.A_init_range = conv_init, tuple(A_init_range)
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        self.dt_limit = (float(dt_limit[0]), float(dt_limit[1]))
        self.conv_dim = self.d_inner + 2 * ngroups * d_state
        self.row = Mamba2Row(self.nheads, headdim, ngroups, d_state)  # in_proj output order: [z, x, B, C, dt]
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 2 * ngroups * d_state + self.nheads,
                                 bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim,
                                padding=d_conv - 1, bias=conv_bias, **factory)
        self.dt_bias = nn.Parameter(torch.empty(self.nheads, **factory))
        self.A_log = nn.Parameter(torch.empty(self.nheads, **factory))
        self.D = nn.Parameter(torch.empty(self.nheads, device=device, dtype=torch.float32))
        self.norm = GatedRMSNorm(self.d_inner, group_size=self.d_inner // ngroups, eps=1e-5, **factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Upstream's initialisation (``Mamba2.__init__``); out_proj's depth rescale is the model's."""
        for linear in (self.in_proj, self.out_proj):
            linear.reset_parameters()
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)
        self.conv1d.reset_parameters()
        if self.conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -self.conv_init, self.conv_init)
        self.dt_bias.copy_(inverse_softplus_dt(self.nheads, self.dt_min, self.dt_max, self.dt_init_floor,
                                                self.dt_bias.device))
        A = torch.empty(self.nheads, dtype=torch.float32, device=self.A_log.device).uniform_(*self.A_init_range)
        self.A_log.copy_(torch.log(A))
        nn.init.ones_(self.D)
        self.norm.reset_parameters()

    def forward(self, hidden_states: torch.Tensor, seq_idx: torch.Tensor | None = None,
                state: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """hidden_states [b, L, d_model] -> [b, L, d_model]; seq_idx [b, L] resets the state at
        document starts. With ``state`` (conv_state, ssm_state) the final states are written into
        it (prefill of one document per row from position 0; the conv state circular, as
        :meth:`step` reads it)."""
        zxbcdt = linear(hidden_states, self.in_proj.weight, self.in_proj.bias)
        A = -torch.exp(self.A_log.float())
        if state is None:
            return mamba2_split_conv1d_scan(
                zxbcdt, self.conv1d.weight.squeeze(1), self.conv1d.bias, self.dt_bias, A, self.D,
                self.chunk_size, self.headdim, self.ngroups, self.norm.weight, self.norm.eps,
                self.out_proj.weight, self.out_proj.bias, seq_idx=seq_idx, dt_limit=self.dt_limit,
            )
        conv_state, ssm_state = state
        z, xBC, dt = self.row.split(zxbcdt)
        xBC_t = xBC.transpose(1, 2)
        conv_state.copy_(circular_conv_state(xBC_t, self.d_conv))
        xBC = causal_conv1d(xBC_t, self.conv1d.weight.squeeze(1), self.conv1d.bias, seq_idx=seq_idx,
                            activation="silu").transpose(1, 2)
        x, B, C = self.row.heads(xBC)
        y, final_state = ssd_chunk_scan(
            x, dt, A, B, C, self.chunk_size, D=self.D, dt_bias=self.dt_bias, dt_softplus=True,
            dt_limit=self.dt_limit, seq_idx=seq_idx, return_final_states=True,
        )
        ssm_state.copy_(final_state)
        return self.out_proj(self.norm(y.flatten(-2), z))

    def step(self, hidden_states: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor],
             position: torch.Tensor) -> torch.Tensor:
        """One token: hidden_states [b, d_model] -> [b, d_model]; ``state`` updated in place. ``position``
        (0-d int64 tensor): the tokens consumed before this one, which index the circular conv state
        (:mod:`kotomamba.ops.mamba2_decode`); the caller moves it once per step for all layers."""
        conv_state, ssm_state = state
        return mamba2_decode_step(
            self.in_proj(hidden_states), conv_state, ssm_state, position, self.conv1d.weight.squeeze(1),
            self.conv1d.bias, self.dt_bias, self.A_log, self.D, self.norm.weight, self.norm.eps,
            self.out_proj.weight, self.out_proj.bias, self.headdim, self.ngroups, self.dt_limit,
        )

    def allocate_state(self, batch_size: int, dtype: torch.dtype | None = None):
        """Zero (conv_state [b, conv_dim, d_conv] (channel-last in memory, as upstream; circular, see
        :meth:`step`), ssm_state [b, nheads, headdim, d_state])."""
        device = self.out_proj.weight.device
        conv = torch.zeros(batch_size, self.d_conv, self.conv_dim, device=device,
                           dtype=dtype or self.conv1d.weight.dtype).transpose(1, 2)
        ssm = torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device,
                          dtype=dtype or self.in_proj.weight.dtype)
        return conv, ssm
