"""Our MambaLM against transformers' MambaForCausalLM / Mamba2ForCausalLM (slow path, CPU, fp32)
on the same random weights, and the transformers <-> ours conversions."""
from __future__ import annotations

import pytest
import torch
import transformers
from packaging.version import Version

from kotomamba.model import MambaLM, preset
from kotomamba.model.hf_compat import from_hf_config, state_dict_from_hf, state_dict_to_hf, to_hf_config

CONFIGS = {
    "mamba1": dict(ssm_cfg={"layer": "Mamba1"}),
    "mamba2": dict(),
    "mamba2-groups": dict(ssm_cfg={"ngroups": 2, "headdim": 8, "chunk_size": 8}),
    "mamba1-untied": dict(ssm_cfg={"layer": "Mamba1", "dt_rank": 6}, tie_embeddings=False),
}


# transformers before 5.23 normalises Mamba-2's gated RMSNorm over all groups at once; mamba-ssm
# (and we, and transformers from 5.23) normalise each group on its own. Equal when ngroups is 1.
GROUPED_NORM_AS_MAMBA_SSM = Version(transformers.__version__) >= Version("5.23")


def _randomise(model: MambaLM) -> None:
    """Perturb every parameter away from its init (norm weights 1, D 1 ...) so parity is not vacuous."""
    torch.manual_seed(123)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.1 if "A_log" in name or "dt" in name else 0.05))


def _hf_model(cfg, state):
    hf_cfg = to_hf_config(cfg)
    cls = transformers.MambaForCausalLM if cfg.layer == "Mamba1" else transformers.Mamba2ForCausalLM
    model = cls(hf_cfg).eval()
    model.load_state_dict(state_dict_to_hf(state, cfg))
    return model


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("batch,seqlen", [(1, 16), (2, 13), (3, 37)])
def test_logits_match_transformers(name, batch, seqlen):
    if name == "mamba2-groups" and not GROUPED_NORM_AS_MAMBA_SSM:
        pytest.skip(f"transformers {transformers.__version__} < 5.23 normalises the gated norm over all groups")
    torch.manual_seed(0)
    cfg = preset("tiny", vocab_size=100, **CONFIGS[name])
    ours = MambaLM(cfg).eval()
    _randomise(ours)
    theirs = _hf_model(cfg, ours.state_dict())
    ids = torch.randint(0, cfg.vocab_size, (batch, seqlen))
    with torch.no_grad():
        ours_logits = ours(ids)
        their_logits = theirs(ids).logits
    assert ours_logits.shape == (batch, seqlen, cfg.padded_vocab_size)
    assert (ours_logits - their_logits).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_round_trip_through_transformers(name):
    cfg = preset("tiny", vocab_size=100, **CONFIGS[name])
    back = from_hf_config(to_hf_config(cfg))
    expected = cfg.mixer_options()
    if expected.get("dt_rank") == "auto":  # transformers stores the resolved rank
        expected["dt_rank"] = -(-cfg.d_model // 16)
    assert back.mixer_options() == expected
    assert (back.d_model, back.n_layer, back.padded_vocab_size, back.tie_embeddings, back.layer) == \
        (cfg.d_model, cfg.n_layer, cfg.padded_vocab_size, cfg.tie_embeddings, cfg.layer)
    sd = MambaLM(cfg).state_dict()
    sd_back = state_dict_from_hf(state_dict_to_hf(sd, cfg), back)
    assert sd_back.keys() == sd.keys()


@pytest.mark.parametrize("name", ["mamba1", "mamba2"])
def test_from_pretrained_reads_a_transformers_directory(tmp_path, name):
    cfg = preset("tiny", vocab_size=100, **CONFIGS[name])
    ours = MambaLM(cfg).eval()
    _randomise(ours)
    theirs = _hf_model(cfg, ours.state_dict())
    theirs.save_pretrained(tmp_path / "hf")
    loaded = MambaLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 21))
    with torch.no_grad():
        assert (loaded(ids) - ours(ids)).abs().max().item() < 1e-5
    assert loaded.config.layer == cfg.layer
