"""MambaLM: keys and shapes, loss, initialisation, meta construction, decoding, packing, I/O."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from kotomamba.errors import UserError
from kotomamba.model import MambaConfig, MambaLM, preset
from kotomamba.model.config import PRESETS

MAMBA1 = {"ssm_cfg": {"layer": "Mamba1"}}
MAMBA2 = {}

MAMBA1_LAYER_KEYS = {"norm.weight", "mixer.in_proj.weight", "mixer.conv1d.weight", "mixer.conv1d.bias",
                     "mixer.x_proj.weight", "mixer.dt_proj.weight", "mixer.dt_proj.bias", "mixer.A_log",
                     "mixer.D", "mixer.out_proj.weight"}
MAMBA2_LAYER_KEYS = {"norm.weight", "mixer.in_proj.weight", "mixer.conv1d.weight", "mixer.conv1d.bias",
                     "mixer.dt_bias", "mixer.A_log", "mixer.D", "mixer.norm.weight", "mixer.out_proj.weight"}


@pytest.mark.parametrize("overrides,layer_keys", [(MAMBA1, MAMBA1_LAYER_KEYS), (MAMBA2, MAMBA2_LAYER_KEYS)])
def test_state_dict_keys_and_shapes_are_mamba_ssm(overrides, layer_keys):
    cfg = preset("tiny", vocab_size=250, **overrides)
    sd = MambaLM(cfg, device="meta").state_dict()
    expected = {"backbone.embedding.weight", "backbone.norm_f.weight", "lm_head.weight"}
    expected |= {f"backbone.layers.{i}.{k}" for i in range(cfg.n_layer) for k in layer_keys}
    assert set(sd) == expected
    assert sd["backbone.embedding.weight"].shape == (256, 64) == sd["lm_head.weight"].shape
    d_inner = 128
    if cfg.layer == "Mamba1":
        assert sd["backbone.layers.0.mixer.in_proj.weight"].shape == (2 * d_inner, 64)
        assert sd["backbone.layers.0.mixer.x_proj.weight"].shape == (4 + 2 * 8, d_inner)
        assert sd["backbone.layers.0.mixer.A_log"].shape == (d_inner, 8)
    else:
        nheads, n = d_inner // 16, 16
        assert sd["backbone.layers.0.mixer.in_proj.weight"].shape == (2 * d_inner + 2 * n + nheads, 64)
        assert sd["backbone.layers.0.mixer.conv1d.weight"].shape == (d_inner + 2 * n, 1, 4)
        assert sd["backbone.layers.0.mixer.A_log"].shape == (nheads,)


def test_released_presets():
    assert {"tiny", "mamba-130m", "mamba-2.8b", "mamba2-130m", "mamba2-780m", "mamba2-2.7b"} <= set(PRESETS)
    m1, m2 = preset("mamba-130m"), preset("mamba2-2.7b")
    assert (m1.d_model, m1.n_layer, m1.padded_vocab_size, m1.layer) == (768, 24, 50280, "Mamba1")
    assert (m2.d_model, m2.n_layer, m2.padded_vocab_size, m2.layer) == (2560, 64, 50288, "Mamba2")
    assert m2.mixer_options()["headdim"] == 64 and m2.mixer_options()["chunk_size"] == 256
    n = sum(p.numel() for p in MambaLM(m1, device="meta").parameters())
    assert 125e6 < n < 135e6  # "130m"
    tiny1 = preset("tiny", ssm_cfg={"layer": "Mamba1"})
    assert tiny1.layer == "Mamba1" and "headdim" not in tiny1.ssm_cfg


def test_config_json_round_trip_and_errors():
    cfg = preset("tiny")
    assert MambaConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    released = {"d_model": 768, "n_layer": 24, "vocab_size": 50277, "ssm_cfg": {}, "rms_norm": True,
                "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 8}
    assert MambaConfig.from_dict(released).layer == "Mamba1"
    with pytest.raises(UserError, match="field 'n_layers'"):
        MambaConfig.from_dict({**released, "n_layers": 3}, source="x/config.json")
    with pytest.raises(UserError, match="ssm_cfg.headdim"):
        preset("tiny", ssm_cfg={"headdim": 48})
    with pytest.raises(UserError, match="ssm_cfg.layer"):
        preset("tiny", ssm_cfg={"layer": "Mamba3"})


@pytest.mark.parametrize("overrides", [MAMBA1, MAMBA2])
def test_loss_is_mean_cross_entropy_over_labelled_tokens(overrides):
    torch.manual_seed(0)
    model = MambaLM(preset("tiny", **overrides))
    ids = torch.randint(0, 512, (2, 19))
    labels = torch.randint(0, 512, (2, 19))
    labels[0, :5] = -100
    loss = model(ids, labels=labels)
    expected = F.cross_entropy(model(ids).flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("overrides", [MAMBA1, MAMBA2])
def test_a_block_never_returns_its_input_as_the_residual(overrides):
    """FSDP2 hooks a block's outputs for backward; an output that is the block's own input would alias a
    tensor from outside the block (FSDP2 warns about it in every multi-process run)."""
    block = MambaLM(preset("tiny", **overrides)).backbone.layers[0]
    x = torch.randn(2, 8, block.norm.weight.shape[0], requires_grad=True)
    out, residual = block(x)
    assert residual is not x and residual.data_ptr() != x.data_ptr()
    torch.testing.assert_close(residual, x)
    _, second = block(out, residual)
    torch.testing.assert_close(second, out + residual)


@pytest.mark.parametrize("overrides", [MAMBA1, MAMBA2])
def test_meta_construction_then_init_weights_is_upstream_init(overrides):
    cfg = preset("tiny", n_layer=4, **overrides)
    model = MambaLM(cfg, device="meta")
    model.to_empty(device="cpu")
    model.init_weights()
    assert model.lm_head.weight is model.backbone.embedding.weight
    emb = model.backbone.embedding.weight
    assert abs(emb.std().item() - 0.02) < 0.002
    mixer = model.backbone.layers[0].mixer
    torch.testing.assert_close(mixer.D, torch.ones_like(mixer.D))
    if cfg.layer == "Mamba1":
        torch.testing.assert_close(mixer.A_log[3], torch.log(torch.arange(1.0, 9.0)))
        dt = F.softplus(mixer.dt_proj.bias)
        assert mixer.dt_proj.bias._no_weight_decay
    else:
        assert ((mixer.A_log.exp() >= 1) & (mixer.A_log.exp() <= 16)).all()
        dt = F.softplus(mixer.dt_bias)
        assert mixer.dt_bias._no_weight_decay
    assert ((dt >= 1e-3 * 0.999) & (dt <= 0.1 * 1.001)).all()
    assert mixer.A_log._no_weight_decay and mixer.D._no_weight_decay
    no_wd = model.no_weight_decay_names()
    assert len(no_wd) == 3 * cfg.n_layer and "backbone.layers.3.mixer.A_log" in no_wd
    assert all(getattr(p, "_no_weight_decay", False) == (n in no_wd) for n, p in model.named_parameters())
    # out_proj: kaiming uniform bound 1/sqrt(fan_in), divided by sqrt(n_layer)
    bound = 1 / math.sqrt(mixer.out_proj.weight.shape[1]) / math.sqrt(cfg.n_layer)
    assert mixer.out_proj.weight.abs().max() <= bound
    assert mixer.out_proj.weight.abs().max() > 0.8 * bound
    ids = torch.randint(0, 512, (1, 9))
    assert torch.isfinite(model(ids)).all()


@pytest.mark.parametrize("overrides", [MAMBA1, MAMBA2])
@pytest.mark.parametrize("prompt_len", [1, 3, 21])
def test_prefill_and_steps_equal_the_full_forward(overrides, prompt_len):
    torch.manual_seed(0)
    model = MambaLM(preset("tiny", **overrides)).eval()
    ids = torch.randint(0, 512, (2, 29))
    with torch.no_grad():
        full = model(ids)
    cache = model.allocate_inference_cache(2, 64)
    logits = [model.prefill(ids[:, :prompt_len], cache)]
    for t in range(prompt_len, 29):
        logits.append(model.step(ids[:, t], cache))
    assert cache.seqlen_offset == 29
    torch.testing.assert_close(torch.stack(logits, dim=1), full[:, prompt_len - 1:], atol=1e-4, rtol=1e-4)


def test_packed_documents_equal_separate_runs():
    torch.manual_seed(0)
    model = MambaLM(preset("tiny")).eval()  # chunk size 16: documents cross chunk boundaries
    lengths = [5, 16, 14]
    docs = [torch.randint(0, 512, (1, n)) for n in lengths]
    packed = torch.cat(docs, dim=1)
    seq_idx = torch.cat([torch.full((1, n), i, dtype=torch.int32) for i, n in enumerate(lengths)], dim=1)
    with torch.no_grad():
        together = model(packed, seq_idx=seq_idx)
        apart = torch.cat([model(d) for d in docs], dim=1)
        leaky = model(packed)
    torch.testing.assert_close(together, apart, atol=1e-5, rtol=1e-5)
    assert (leaky[:, 5:] - apart[:, 5:]).abs().max() > 1e-3  # without seq_idx state does leak


def test_mamba1_refuses_seq_idx():
    model = MambaLM(preset("tiny", **MAMBA1))
    with pytest.raises(ValueError, match="seq_idx"):
        model(torch.zeros(1, 4, dtype=torch.long), seq_idx=torch.zeros(1, 4, dtype=torch.int32))


@pytest.mark.parametrize("overrides", [MAMBA1, MAMBA2])
def test_save_and_load_mamba_ssm_layouts(tmp_path, overrides):
    torch.manual_seed(0)
    model = MambaLM(preset("tiny", **overrides)).eval()
    model.save_pretrained(tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text()) == json.loads(
        json.dumps(model.config.to_dict()))
    # A mamba-ssm directory: config.json + pytorch_model.bin
    (tmp_path / "ssm").mkdir()
    (tmp_path / "ssm" / "config.json").write_text(json.dumps(model.config.to_dict()))
    torch.save(model.state_dict(), tmp_path / "ssm" / "pytorch_model.bin")
    ids = torch.randint(0, 512, (2, 11))
    with torch.no_grad():
        expected = model(ids)
        for sub in ("ours", "ssm"):
            loaded = MambaLM.from_pretrained(tmp_path / sub, dtype=torch.float32)
            torch.testing.assert_close(loaded(ids), expected)


def test_from_pretrained_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        MambaLM.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"d_model": 64,\n "n_layer": }')
    with pytest.raises(UserError, match="line 2"):
        MambaLM.from_pretrained(tmp_path)
    cfg = preset("tiny")
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    with pytest.raises(UserError, match="no weights"):
        MambaLM.from_pretrained(tmp_path)
    sd = MambaLM(preset("tiny", n_layer=1)).state_dict()
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError, match="missing keys"):
        MambaLM.from_pretrained(tmp_path)


def test_a_config_without_the_model_sizes_is_named_before_the_weights(tmp_path):
    # Read as mamba-ssm's defaults (a 2.8b model), {} was blamed on the weights' keys after building that model.
    MambaLM(preset("tiny")).save_pretrained(tmp_path)
    config = tmp_path / "config.json"
    for data, named in (({}, "missing fields 'd_model', 'n_layer', 'vocab_size'"),
                        ({"d_model": 64, "ssm_cfg": {}}, "missing fields 'n_layer', 'vocab_size'"),
                        ({**preset("tiny").to_dict(), "vocab_size": None}, "field 'vocab_size': must be a positive")):
        config.write_text(json.dumps(data))
        with pytest.raises(UserError) as caught:
            MambaLM.from_pretrained(tmp_path)
        assert str(caught.value).startswith(f"{config}: {named}"), caught.value
