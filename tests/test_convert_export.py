"""kotomamba convert: training checkpoint -> transformers / mamba-ssm, and back (continual pretraining).

transformers' own Mamba / Mamba2 models (CPU slow path, float32) are the parity oracle.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from kotomamba.convert.cli import convert, main
from kotomamba.train.checkpoint_files import load_model_state_dict
from kotomamba.errors import UserError
from kotomamba.model import MambaLM, preset
from kotomamba.train.checkpoint_files import save_local

VOCAB = 600
SEQ_LENGTH = 32
# mamba-ssm 2.x MambaLMHeadModel key names (models/mixer_seq_simple.py, modules/mamba_simple.py, mamba2.py)
MAMBA1_MIXER_KEYS = {"A_log", "D", "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight",
                     "dt_proj.weight", "dt_proj.bias", "out_proj.weight"}
MAMBA2_MIXER_KEYS = {"A_log", "D", "dt_bias", "in_proj.weight", "conv1d.weight", "conv1d.bias", "norm.weight",
                     "out_proj.weight"}
MAMBA_SSM_CONFIG_FIELDS = {"d_model", "d_intermediate", "n_layer", "vocab_size", "ssm_cfg", "attn_layer_idx",
                           "attn_cfg", "rms_norm", "residual_in_fp32", "fused_add_norm", "pad_vocab_size_multiple",
                           "tie_embeddings"}


def _mamba_ssm_keys(layer: str, n_layer: int) -> set[str]:
    mixer = MAMBA1_MIXER_KEYS if layer == "Mamba1" else MAMBA2_MIXER_KEYS
    keys = {"backbone.embedding.weight", "backbone.norm_f.weight", "lm_head.weight"}
    for i in range(n_layer):
        keys |= {f"backbone.layers.{i}.norm.weight"} | {f"backbone.layers.{i}.mixer.{k}" for k in mixer}
    return keys


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory) -> Path:
    import sentencepiece

    docs = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
    lines = [line for line in docs.read_text(encoding="utf-8").splitlines() if line.strip()]
    prefix = tmp_path_factory.mktemp("tok") / "tokenizer"
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(prefix),
                                             vocab_size=VOCAB, byte_fallback=True, num_threads=1, minloglevel=2)
    return prefix.with_suffix(".model")


def _trained_like(layer: str, tie: bool = True) -> MambaLM:
    """A tiny model whose parameters are all perturbed (no parameter keeps its init pattern)."""
    torch.manual_seed(0)
    model = MambaLM(preset("tiny", vocab_size=VOCAB, tie_embeddings=tie, ssm_cfg={"layer": layer}))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model.eval()


def _write_run(run_dir: Path, model: MambaLM, tokenizer_model: Path, step: int = 7, consumed: int = 56) -> None:
    checkpoint = run_dir / "checkpoints" / f"step_{step:08d}"
    save_local({"model": model.state_dict(), "train_state": {"step": step, "consumed_samples": consumed}}, checkpoint)
    (run_dir / "checkpoints" / "latest").write_text(checkpoint.name + "\n")
    (run_dir / "model_config.json").write_text(json.dumps(model.config.to_dict()))
    data = {"data_path": "0.7 results/r/ja_text_document 0.3 results/r/en_text_document", "split": "949,50,1",
            "seq_length": SEQ_LENGTH, "tokenizer_type": "SentencePieceTokenizer",
            "tokenizer_model": str(tokenizer_model)}
    (run_dir / "config.resolved.yaml").write_text(yaml.safe_dump({"data": data}))


def _ids(batch: int = 2, length: int = 37) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("layer", ["Mamba1", "Mamba2"])
def test_hf_export_loads_in_transformers_with_our_logits(layer, tmp_path, sentencepiece_model):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from kotomamba.data.tokenizer import build_tokenizer

    model = _trained_like(layer)
    _write_run(tmp_path / "run", model, sentencepiece_model)
    evaluation = {"perplexity": {"loss": 2.5, "perplexity": 12.18, "tokens": 1000},
                  "baseline_init": {"loss": 6.2, "perplexity": 492.7, "tokens": 1000},
                  "lm_eval": {"local_mc": {"acc": 0.75}}, "samples": [{"prompt": "Hi", "text": "Hi there"}]}
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    assert main(["--checkpoint", str(tmp_path / "run"), "--to", "hf", "--output", str(tmp_path / "hf"),
                 "--eval-json", str(tmp_path / "eval.json")]) == 0
    out = tmp_path / "hf"

    hf, info = AutoModelForCausalLM.from_pretrained(str(out), output_loading_info=True, local_files_only=True)
    assert type(hf).__name__ == ("Mamba2ForCausalLM" if layer == "Mamba2" else "MambaForCausalLM")
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(hf.eval()(ids).logits, model(ids), rtol=1e-5, atol=1e-5)

    written = json.loads((out / "config.json").read_text())
    every_field = type(AutoConfig.from_pretrained(str(out)))().to_dict()  # a default config, all fields
    assert set(every_field) - {"transformers_version"} <= set(written)

    ours_tok = build_tokenizer("SentencePieceTokenizer", str(sentencepiece_model))
    tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    assert tok.eos_token_id == ours_tok.eod == written["eos_token_id"] and tok.pad_token_id is not None
    text = "The model is state-dict compatible with mamba-ssm."
    assert tok.encode(text, add_special_tokens=False) == ours_tok.encode(text)
    generation = GenerationConfig.from_pretrained(str(out))
    assert generation.do_sample and generation.eos_token_id == ours_tok.eod

    card = (out / "README.md").read_text()
    assert "Tokens seen: 1,792" in card and "step 7" in card  # 56 samples x 32 tokens
    assert "0.7 `ja_text_document`; 0.3 `en_text_document`" in card and "results/r" not in card  # names, not paths
    assert f'"layer": "{layer}"' in card and "| local_mc | acc | 0.7500 |" in card and "12.18" in card
    assert "| held-out, untrained model | loss | 6.2000 |" in card and "Hi there" in card
    assert "transformers >= 5.23" not in card  # one group: every transformers version agrees


def test_hf_card_of_a_grouped_mamba2_names_the_transformers_it_needs():
    from kotomamba.convert.model_card import model_card
    from kotomamba.convert.run_info import RunInfo

    config = preset("tiny", ssm_cfg={"ngroups": 2}).to_dict()
    assert "Needs transformers >= 5.23" in model_card("hf", config, RunInfo("run/checkpoints/step_1"), None)
    assert "transformers >= 5.23" not in model_card("mamba_ssm", config, RunInfo("run/checkpoints/step_1"), None)


def test_round_trip_hf_to_ours_to_hf_is_lossless(tmp_path, sentencepiece_model):
    from safetensors.torch import load_file

    model = _trained_like("Mamba2", tie=False)
    _write_run(tmp_path / "run", model, sentencepiece_model)
    first, ours, second = tmp_path / "hf1", tmp_path / "ours", tmp_path / "hf2"
    convert(str(tmp_path / "run"), "hf", str(first))
    convert(str(first), "kotomamba", str(ours))
    _, state = load_model_state_dict(ours)
    for key, tensor in model.state_dict().items():
        assert torch.equal(state[key], tensor), key
    convert(str(ours), "hf", str(second), "HuggingFaceTokenizer", str(first))
    a, b = load_file(str(first / "model.safetensors")), load_file(str(second / "model.safetensors"))
    assert sorted(a) == sorted(b) and "lm_head.weight" in a
    assert all(torch.equal(a[key], b[key]) and a[key].dtype == b[key].dtype for key in a)
    assert json.loads((first / "config.json").read_text()) == json.loads((second / "config.json").read_text())
    assert (first / "tokenizer.json").read_text() == (second / "tokenizer.json").read_text()


@pytest.mark.parametrize("layer", ["Mamba1", "Mamba2"])
def test_mamba_ssm_export_has_its_names_and_a_released_directory_loads_into_ours(layer, tmp_path,
                                                                                sentencepiece_model):
    model = _trained_like(layer)
    _write_run(tmp_path / "run", model, sentencepiece_model)
    out = tmp_path / "mamba_ssm"
    convert(str(tmp_path / "run"), "mamba_ssm", str(out))
    config = json.loads((out / "config.json").read_text())
    assert set(config) == MAMBA_SSM_CONFIG_FIELDS and config == model.config.to_dict()
    weights = torch.load(out / "pytorch_model.bin", weights_only=True)  # what mamba-ssm's loader reads
    assert set(weights) == _mamba_ssm_keys(layer, model.config.n_layer)
    assert torch.equal(weights["lm_head.weight"], weights["backbone.embedding.weight"])  # tied, both stored

    released = tmp_path / "released"  # the state-spaces layout: config.json + pytorch_model.bin only
    released.mkdir()
    for name in ("config.json", "pytorch_model.bin"):
        (released / name).write_bytes((out / name).read_bytes())
    loaded = MambaLM.from_pretrained(released).eval()
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    convert(str(released), "kotomamba", str(tmp_path / "init"))
    config_back, state = load_model_state_dict(tmp_path / "init")
    assert config_back == model.config
    assert all(torch.equal(state[key], tensor) for key, tensor in model.state_dict().items())


def test_dtype_cast_and_user_errors(tmp_path, sentencepiece_model):
    from safetensors.torch import load_file

    model = _trained_like("Mamba1")
    _write_run(tmp_path / "run", model, sentencepiece_model)
    convert(str(tmp_path / "run"), "mamba_ssm", str(tmp_path / "bf16"), dtype="bfloat16")
    assert {t.dtype for t in load_file(str(tmp_path / "bf16" / "model.safetensors")).values()} == {torch.bfloat16}
    bare = tmp_path / "bare"  # a model directory without tokenizer files
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((tmp_path / "bf16" / name).read_bytes())
    with pytest.raises(UserError, match="no tokenizer known"):
        convert(str(bare), "hf", str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()
    with pytest.raises(UserError, match="not a run directory"):
        convert(str(tmp_path), "hf", str(tmp_path / "hf"))
    wrong = model.config.to_dict() | {"n_layer": 3}
    (tmp_path / "run" / "model_config.json").write_text(json.dumps(wrong))
    with pytest.raises(UserError, match="do not match model_config.json"):
        convert(str(tmp_path / "run"), "mamba_ssm", str(tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()


@pytest.mark.gpu
@pytest.mark.parametrize("layer", ["Mamba1", "Mamba2"])
def test_mamba_ssm_loads_our_export(layer, tmp_path, sentencepiece_model):
    mixer_seq_simple = pytest.importorskip("mamba_ssm.models.mixer_seq_simple")
    model = _trained_like(layer)
    _write_run(tmp_path / "run", model, sentencepiece_model)
    convert(str(tmp_path / "run"), "mamba_ssm", str(tmp_path / "out"))
    theirs = mixer_seq_simple.MambaLMHeadModel.from_pretrained(str(tmp_path / "out"), device="cuda").eval()
    ids = _ids().cuda()
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, model.cuda()(ids), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_a_truncated_weight_file_is_named(tmp_path, name):
    """A copy cut short (a full disk, an interrupted transfer) is a one-line error naming it, not a traceback."""
    model = _trained_like("Mamba2")
    model.save_pretrained(tmp_path / "model")
    weights = tmp_path / "model" / name
    if name != "model.safetensors":
        torch.save(model.state_dict(), weights)
        (tmp_path / "model" / "model.safetensors").unlink()
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=rf"^{weights}: truncated or corrupt weight file \("):
        MambaLM.from_pretrained(tmp_path / "model")
    with pytest.raises(UserError, match=rf"^{weights}: truncated or corrupt weight file \("):
        convert(str(tmp_path / "model"), "kotomamba", str(tmp_path / "ours"))


def test_a_tokenizer_with_more_ids_than_the_model_is_refused(tmp_path, sentencepiece_model):
    """An export with another model's tokenizer would name an eos id the model has no logit for."""
    torch.manual_seed(0)
    model = MambaLM(preset("tiny", vocab_size=VOCAB // 2))
    _write_run(tmp_path / "run", model, sentencepiece_model)
    for target in ("hf", "mamba_ssm", "kotomamba"):
        with pytest.raises(UserError, match=rf"^{sentencepiece_model}: a tokenizer of {VOCAB} ids, more than the "
                                            rf"{VOCAB // 2} of the model {tmp_path / 'run'}: not the tokenizer"):
            convert(str(tmp_path / "run"), target, str(tmp_path / target))
        assert not (tmp_path / target).exists()


@pytest.mark.parametrize("edit", [{"num_hidden_layers": "two"}, {"num_heads": 3}])
def test_a_transformers_config_that_transformers_refuses_is_one_line_naming_it(tmp_path, capsys, edit):
    """A hand-edited config.json of a transformers model: transformers' own validation error, said in one line."""
    from transformers import Mamba2Config

    Mamba2Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_heads=4, head_dim=16).save_pretrained(
        tmp_path / "model")
    config = tmp_path / "model" / "config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | edit))
    assert main(["--checkpoint", str(tmp_path / "model"), "--to", "kotomamba", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kotomamba convert: error: {config}: not a valid transformers config (")
    assert err.count("\n") == 1 and next(iter(edit)) in err and not (tmp_path / "o").exists()


def test_an_unfinished_stage_is_said_by_the_card_and_the_command(tmp_path, sentencepiece_model, capsys):
    """A run stopped at step 7 of the 20 its config plans: exporting it says so, where a reader of the card looks."""
    _write_run(tmp_path / "run", _trained_like("Mamba1"), sentencepiece_model)
    resolved = tmp_path / "run" / "config.resolved.yaml"
    resolved.write_text(yaml.safe_dump(yaml.safe_load(resolved.read_text()) | {"train": {"steps": 20}}))
    assert main(["--checkpoint", str(tmp_path / "run"), "--to", "mamba_ssm", "--output", str(tmp_path / "out")]) == 0
    said = "step 7 of the 20 planned for stage 'run': unfinished"
    assert f"- Checkpoint: `step_00000007` ({said}" in (tmp_path / "out" / "README.md").read_text()
    assert f"kotomamba convert: warning: {tmp_path / 'run'}: {said}" in capsys.readouterr().err
    resolved.write_text(yaml.safe_dump(yaml.safe_load(resolved.read_text()) | {"train": {"steps": 7}}))
    assert main(["--checkpoint", str(tmp_path / "run"), "--to", "mamba_ssm", "--output", str(tmp_path / "done")]) == 0
    assert "- Checkpoint: `step_00000007` (step 7)\n" in (tmp_path / "done" / "README.md").read_text()
    assert "warning" not in capsys.readouterr().err
