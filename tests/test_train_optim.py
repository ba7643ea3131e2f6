"""AdamW groups on the real model: no weight decay on A_log, D, dt_bias, biases, norms, embeddings."""
import pytest

from kotomamba.model.config import preset
from kotomamba.model.lm import MambaLM
from kotomamba.train.flops import param_count
from kotomamba.train.config import DEFAULT_NO_DECAY
from kotomamba.train.optim import is_no_decay, param_groups


@pytest.mark.parametrize("layer", ["Mamba1", "Mamba2"])
def test_groups_of_the_tiny_model(layer):
    model = MambaLM(preset("tiny", ssm_cfg={"layer": layer}))
    groups = {g["group"]: g for g in param_groups(model, 0.1, DEFAULT_NO_DECAY)}
    names = {id(p): n for n, p in model.named_parameters()}
    decay = sorted(names[id(p)].split(".", 3)[-1] for p in groups["decay"]["params"])
    plain = {names[id(p)] for p in groups["no_decay"]["params"]}
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["decay"]["weight_decay"] == 0.1
    assert {"backbone.layers.0.mixer.A_log", "backbone.layers.0.mixer.D", "backbone.layers.0.norm.weight",
            "backbone.norm_f.weight", "backbone.embedding.weight", "backbone.layers.1.mixer.conv1d.bias"} <= plain
    assert all(name.endswith("weight") and "norm" not in name for name in decay)
    assert "mixer.in_proj.weight" in decay and "mixer.out_proj.weight" in decay
    if layer == "Mamba2":
        assert "backbone.layers.0.mixer.dt_bias" in plain and "backbone.layers.0.mixer.norm.weight" in plain
    else:
        assert "backbone.layers.0.mixer.dt_proj.bias" in plain and "mixer.dt_proj.weight" in decay
    # the tied LM head appears once
    assert len(groups["decay"]["params"]) + len(groups["no_decay"]["params"]) == len(list(model.parameters()))
    # and the FLOP module's parameter count matches the real model
    assert param_count(model.config) == sum(p.numel() for p in model.parameters())


def test_pattern_matching_is_by_name_component():
    assert is_no_decay("mixer.D", ["D"]) and not is_no_decay("mixer.dt_proj.weight", ["D"])
    assert is_no_decay("mixer.dt_bias", ["bias"]) and is_no_decay("backbone.norm_f.weight", ["norm"])
    assert not is_no_decay("mixer.in_proj.weight", ["A_log", "D", "bias", "norm", "embedding"])
