"""The Mamba language model: mamba-ssm's ``MambaLMHeadModel`` (``models/mixer_seq_simple.py``),
same module tree and state-dict keys, single-device code.

Structure: ``backbone.embedding`` -> ``backbone.layers[i]`` (:class:`Block`: pre-norm RMSNorm with
the residual stream carried in float32, then a Mamba-1 or Mamba-2 mixer) -> ``backbone.norm_f`` ->
``lm_head`` (tied to the embedding by default). FSDP, activation checkpointing and ``torch.compile``
are applied from outside, per :class:`Block`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import nn

from kotomamba.model.config import NORM_EPS, MambaConfig
from kotomamba.model.mamba1 import Mamba1Mixer
from kotomamba.model.mamba2 import Mamba2Mixer
from kotomamba.model.norm import RMSNorm
from kotomamba.ops.cross_entropy import IGNORE_INDEX, chunked_cross_entropy



class Block(nn.Module):
    """``norm`` then ``mixer`` with the residual add fused into the norm (mamba-ssm ``Block``).

    ``forward(hidden_states, residual)`` returns ``(mixer_out, residual)`` where
    ``residual = hidden_states + residual`` (float32 when ``residual_in_fp32``): the next block adds
    them. The first block gets ``residual=None``.
    """

    def __init__(self, config: MambaConfig, layer_idx: int, device=None, dtype=None):
        super().__init__()
        self.layer_idx = layer_idx
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = RMSNorm(config.d_model, eps=NORM_EPS, device=device, dtype=dtype)
        mixer_cls = Mamba1Mixer if config.layer == "Mamba1" else Mamba2Mixer
        self.mixer = mixer_cls(config.d_model, **config.mixer_options(), device=device, dtype=dtype)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor | None = None,
                seq_idx: torch.Tensor | None = None, state=None):
        """hidden_states, residual: [b, L, d_model]; seq_idx [b, L]; state: this layer's
        (conv_state, ssm_state) to fill (prefill). Returns (hidden_states, residual)."""
        normed, residual = self.norm(hidden_states, residual, prenorm=True, residual_in_fp32=self.residual_in_fp32)
        if residual.data_ptr() == hidden_states.data_ptr():
            # The first block, in float32, has nothing to add: the norm hands back its input (or a view
            # of it, from the kernel) as the residual. A block must not return its own input (FSDP2
            # hooks its outputs for backward and warns about outputs that alias tensors from outside).
            residual = residual.clone()
        return self.mixer(normed, seq_idx=seq_idx, state=state), residual

    def step(self, hidden_states: torch.Tensor, residual: torch.Tensor | None, state, position: torch.Tensor):
        """One token: hidden_states, residual [b, d_model]; position: the tokens consumed before it (0-d int64
        tensor). Returns (hidden_states, residual)."""
        hidden_states, residual = self.norm(hidden_states, residual, prenorm=True,
                                            residual_in_fp32=self.residual_in_fp32)
        return self.mixer.step(hidden_states, state, position), residual


class Backbone(nn.Module):
    """mamba-ssm's ``MixerModel``: embedding, blocks, final norm."""

    def __init__(self, config: MambaConfig, device=None, dtype=None):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.embedding = nn.Embedding(config.padded_vocab_size, config.d_model, device=device, dtype=dtype)
        self.layers = nn.ModuleList(Block(config, i, device=device, dtype=dtype) for i in range(config.n_layer))
        self.norm_f = RMSNorm(config.d_model, eps=NORM_EPS, device=device, dtype=dtype)

    def forward(self, input_ids: torch.Tensor, seq_idx: torch.Tensor | None = None, states=None) -> torch.Tensor:
        """input_ids [b, L] -> normalised hidden states [b, L, d_model]."""
        hidden_states, residual = self.embedding(input_ids), None
        for i, layer in enumerate(self.layers):
            hidden_states, residual = layer(hidden_states, residual, seq_idx=seq_idx,
                                            state=None if states is None else states[i])
        return self.norm_f(hidden_states, residual, prenorm=False, residual_in_fp32=self.residual_in_fp32)

    def step(self, input_ids: torch.Tensor, states, position: torch.Tensor) -> torch.Tensor:
        """input_ids [b] -> normalised hidden states [b, d_model]; position: the tokens consumed before them."""
        hidden_states, residual = self.embedding(input_ids), None
        for layer, state in zip(self.layers, states):
            hidden_states, residual = layer.step(hidden_states, residual, state, position)
        return self.norm_f(hidden_states, residual, prenorm=False, residual_in_fp32=self.residual_in_fp32)


@dataclass
class InferenceCache:
    """Recurrent decoding state: per layer (conv_state, ssm_state); O(1) in the sequence length.

    ``seqlen_offset`` counts the tokens consumed so far (prefill sets it, each step adds one); ``position``
    is the same count on the states' device (a 0-d int64 tensor, moved in place, so that a CUDA graph of
    the step reads the current one): Mamba-2's conv state is circular, indexed by it.
    """

    states: list
    batch_size: int
    max_seqlen: int
    position: torch.Tensor
    seqlen_offset: int = 0

    def reset(self) -> None:
        for conv_state, ssm_state in self.states:
            conv_state.zero_()
            ssm_state.zero_()
        self.position.zero_()
        self.seqlen_offset = 0


class MambaLM(nn.Module):
    """Mamba language model with mamba-ssm's ``MambaLMHeadModel`` state-dict keys.

    ``MambaLM(config, device=torch.device("meta"))`` allocates nothing; then ``to_empty(device=...)``
    and :meth:`init_weights`. On other devices the weights are initialised at construction.
    """

    def __init__(self, config: MambaConfig, device=None, dtype=None):
        super().__init__()
        config.validate()
        self.config = config
        self.backbone = Backbone(config, device=device, dtype=dtype)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False, device=device, dtype=dtype)
        self.tie_weights()
        self._mark_no_weight_decay()
        if torch.device(device if device is not None else "cpu").type != "meta":
            self.init_weights()

    def tie_weights(self) -> None:
        """Make ``lm_head.weight`` the embedding's parameter when ``tie_embeddings``."""
        if self.config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    def no_weight_decay_names(self) -> set[str]:
        """Names (as in ``named_parameters()``) of the parameters upstream trains without weight
        decay: each mixer's A_log, D and dt bias. Names survive FSDP2's ``fully_shard``, which
        replaces the Parameter objects and with them their ``_no_weight_decay`` attributes."""
        return {f"backbone.layers.{i}.mixer.{name}" for i, layer in enumerate(self.backbone.layers)
                for name in layer.mixer.NO_WEIGHT_DECAY}

    def _mark_no_weight_decay(self) -> None:
        for name in self.no_weight_decay_names():
            self.get_parameter(name)._no_weight_decay = True

    def _apply(self, fn, recurse=True):
        # Module._apply (behind to_empty / to / cuda) gives each module a new Parameter when the
        # tensor type changes (meta -> cpu), which would untie the LM head and drop the
        # _no_weight_decay marks: restore both afterwards.
        super()._apply(fn, recurse)
        self.tie_weights()
        self._mark_no_weight_decay()
        return self

    @torch.no_grad()
    def init_weights(self) -> None:
        """mamba-ssm's initialisation: each mixer's own init, then ``_init_weights``: embedding
        N(0, 0.02), out_proj re-drawn (kaiming uniform) and divided by sqrt(n_layer), norms 1."""
        if not self.config.tie_embeddings:
            self.lm_head.reset_parameters()
        nn.init.normal_(self.backbone.embedding.weight, std=0.02)
        for layer in self.backbone.layers:
            layer.norm.reset_parameters()
            layer.mixer.reset_parameters()
            out_proj = layer.mixer.out_proj.weight
            nn.init.kaiming_uniform_(out_proj, a=math.sqrt(5))
            out_proj /= math.sqrt(self.config.n_layer)
        self.backbone.norm_f.reset_parameters()

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [b, L] int64; labels [b, L] (IGNORE_INDEX -100 = no loss); seq_idx [b, L] int32.

        Without labels: logits [b, L, padded_vocab]. With labels: the mean cross-entropy over the
        labelled tokens, a 0-d float32 tensor, computed chunk by chunk (no full logits tensor).
        """
        hidden_states = self.backbone(input_ids, seq_idx=seq_idx)
        if labels is None:
            return self.lm_head(hidden_states)
        return chunked_cross_entropy(hidden_states.flatten(0, 1), self.lm_head.weight, labels.flatten(),
                                     ignore_index=IGNORE_INDEX)

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int, dtype: torch.dtype | None = None
                                 ) -> InferenceCache:
        """Zero states for ``batch_size`` sequences; ``dtype`` defaults to the weights' dtype."""
        states = [layer.mixer.allocate_state(batch_size, dtype) for layer in self.backbone.layers]
        position = torch.zeros((), dtype=torch.long, device=self.lm_head.weight.device)
        return InferenceCache(states=states, batch_size=batch_size, max_seqlen=max_seqlen, position=position)

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        """Run the prompt input_ids [b, L] from a fresh state; fills ``cache``. Returns the logits of
        the last position, [b, padded_vocab]."""
        hidden_states = self.backbone(input_ids, states=cache.states)
        cache.position.fill_(input_ids.shape[1])
        cache.seqlen_offset = input_ids.shape[1]
        return self.lm_head(hidden_states[:, -1])

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        """Consume one token per sequence, input_ids [b]; returns logits [b, padded_vocab]."""
        hidden_states = self.backbone.step(input_ids, cache.states, cache.position)
        cache.position.add_(1)
        cache.seqlen_offset += 1
        return self.lm_head(hidden_states)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device=None, dtype=None) -> "MambaLM":
        """Load our export, a mamba-ssm directory or a transformers Mamba/Mamba2 directory."""
        from kotomamba.model.pretrained import load_pretrained

        return load_pretrained(cls, path, device=device, dtype=dtype)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write mamba-ssm's layout: ``config.json`` + ``model.safetensors`` (all keys of
        ``MambaLMHeadModel.state_dict()``), atomically."""
        from kotomamba.model.pretrained import save_pretrained

        save_pretrained(self, path)
