"""The Mamba-1 mixer (mamba-ssm ``modules/mamba_simple.py``: ``Mamba``), same parameters and keys:
``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kotomamba.model.dt_init import inverse_softplus_dt
from kotomamba.ops.causal_conv1d import causal_conv1d, conv_state_from_inputs
from kotomamba.ops.fused import mamba1_inner
from kotomamba.ops.linear import channels_first_product
from kotomamba.ops.mamba1_decode import mamba1_decode_step
from kotomamba.ops.selective_scan import selective_scan


class Mamba1Mixer(nn.Module):
    """Selective SSM mixer. Input and output [batch, L, d_model]."""

    # Parameters trained without weight decay (upstream marks A_log and D; dt_proj.bias is a bias).
    NO_WEIGHT_DECAY = ("A_log", "D", "dt_proj.bias")

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init: str = "random", dt_scale: float = 1.0, dt_init_floor: float = 1e-4,
                 conv_bias: bool = True, bias: bool = False, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        self.dt_min, self.dt_max, self.dt_init, self.dt_scale = dt_min, dt_max, dt_init, dt_scale
        self.dt_init_floor = dt_init_floor
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **factory)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)
        # A_log and D stay float32 whatever the model dtype, as upstream.
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state, device=device, dtype=torch.float32))
        self.D = nn.Parameter(torch.empty(self.d_inner, device=device, dtype=torch.float32))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Upstream's initialisation (``Mamba.__init__``); out_proj's depth rescale is the model's."""
        for linear in (self.in_proj, self.x_proj, self.out_proj):
            linear.reset_parameters()
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)
        self.conv1d.reset_parameters()
        dt_init_std = self.dt_rank**-0.5 * self.dt_scale
        if self.dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        self.dt_proj.bias.copy_(inverse_softplus_dt(self.d_inner, self.dt_min, self.dt_max,
                                                     self.dt_init_floor, self.dt_proj.bias.device))
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_log.device)
        self.A_log.copy_(torch.log(A).expand(self.d_inner, -1))
        nn.init.ones_(self.D)

    def forward(self, hidden_states: torch.Tensor, seq_idx: torch.Tensor | None = None,
                state: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """hidden_states [b, L, d_model] -> [b, L, d_model]. With ``state`` (conv_state, ssm_state)
        the final states are written into it (prefill)."""
        if seq_idx is not None:
            raise ValueError("Mamba-1 layers cannot reset their state at document boundaries "
                             "(seq_idx): the upstream kernels have no such input; use Mamba-2")
        batch, seqlen, _ = hidden_states.shape
        # [2*d_inner, b*L] -> [b, 2*d_inner, L] with L contiguous, the layout the kernels want.
        rows = hidden_states.reshape(-1, self.d_model)
        xz = channels_first_product(self.in_proj.weight, rows, self.in_proj.bias).view(-1, batch, seqlen)
        xz = xz.permute(1, 0, 2)
        A = -torch.exp(self.A_log.float())
        if state is None:
            return mamba1_inner(xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight,
                                self.dt_proj.weight, self.out_proj.weight, self.out_proj.bias, A,
                                self.D, self.dt_proj.bias)
        conv_state, ssm_state = state
        x, z = xz.chunk(2, dim=1)
        conv_state.copy_(conv_state_from_inputs(x, self.d_conv))
        x = causal_conv1d(x, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu")
        x_dbl = self.x_proj(x.transpose(1, 2))  # [b, L, dt_rank + 2n]
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)
        y, last_state = selective_scan(
            x, dt.contiguous(), A, B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(),
            self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
            return_last_state=True,
        )
        ssm_state.copy_(last_state)
        return self.out_proj(y.transpose(1, 2))

    def step(self, hidden_states: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor],
             position: torch.Tensor) -> torch.Tensor:
        """One token: hidden_states [b, d_model] -> [b, d_model]; ``state`` updated in place. Between in_proj and
        out_proj: :func:`kotomamba.ops.mamba1_decode.mamba1_decode_step` (on CUDA our two launches at small batch
        sizes, the upstream kernels above). ``position`` (the blocks pass it to every mixer) is not read: Mamba-1's
        conv state shifts (Mamba-2's is circular)."""
        conv_state, ssm_state = state
        y = mamba1_decode_step(self.in_proj(hidden_states), conv_state, ssm_state, self.conv1d.weight.squeeze(1),
                               self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight, self.dt_proj.bias,
                               self.A_log, self.D)
        return self.out_proj(y)

    def allocate_state(self, batch_size: int, dtype: torch.dtype | None = None):
        """Zero (conv_state [b, d_inner, d_conv], ssm_state [b, d_inner, d_state])."""
        device = self.out_proj.weight.device
        conv = torch.zeros(batch_size, self.d_inner, self.d_conv, device=device,
                           dtype=dtype or self.conv1d.weight.dtype)
        ssm = torch.zeros(batch_size, self.d_inner, self.d_state, device=device,
                          dtype=dtype or self.dt_proj.weight.dtype)
        return conv, ssm
