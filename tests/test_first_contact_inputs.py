"""Tokenizers and initial checkpoints fetched from where they live: a real HTTP server on loopback serves
the Hugging Face hub's URL layout (``/<org>/<name>/resolve/<revision>/<file>``) and plain URLs."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from hub_server import REVISION, hub_at_endpoint

from kotomamba.data.remote_inputs import fetch_input, main
from kotomamba.data.tokenizer import build_tokenizer
from kotomamba.errors import UserError
from kotomamba.model import MambaLM, preset
from train_helpers import VOCAB, make_corpus

@pytest.fixture
def hub(monkeypatch):
    yield from hub_at_endpoint(monkeypatch)


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory) -> Path:
    return Path(make_corpus(tmp_path_factory.mktemp("tok"))[0])


def _quiet(line: str) -> None:
    pass


def test_tokenizer_from_a_hub_id_loads_and_is_fetched_once(hub, tokenizer_json, tmp_path):
    config = json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "</s>"}).encode()
    hub.publish("acme/words", {"tokenizer.json": tokenizer_json.read_bytes(), "tokenizer_config.json": config})
    path = fetch_input(f"acme/words@{REVISION}", "tokenizer", tmp_path / "cache", log=_quiet)
    assert sorted(p.name for p in Path(path).iterdir() if not p.name.startswith(".")) == [
        "tokenizer.json", "tokenizer_config.json"]
    ours = build_tokenizer("HuggingFaceTokenizer", path)
    assert ours.encode("w3 w4 w5") == [3, 4, 5] and ours.eod == VOCAB - 1
    hub.requests.clear()
    assert fetch_input(f"acme/words@{REVISION}", "tokenizer", tmp_path / "cache", log=_quiet) == path
    assert hub.requests == []  # not even a HEAD: works offline


@pytest.mark.parametrize("layout", ["mamba-ssm", "sharded safetensors"])
def test_init_checkpoint_from_a_hub_id_loads_with_the_same_weights(hub, tmp_path, layout):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = MambaLM(preset("tiny", vocab_size=VOCAB)).eval()
    state = {key: tensor.clone().contiguous() for key, tensor in model.state_dict().items()}
    files = {"config.json": json.dumps(model.config.to_dict()).encode()}
    if layout == "mamba-ssm":  # state-spaces' layout: config.json + pytorch_model.bin only
        torch.save(state, tmp_path / "weights.bin")
        files["pytorch_model.bin"] = (tmp_path / "weights.bin").read_bytes()
    else:
        keys = sorted(state)
        shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
        for name, shard_keys in shards.items():
            save_file({key: state[key] for key in shard_keys}, str(tmp_path / name))
            files[name] = (tmp_path / name).read_bytes()
        weight_map = {key: name for name, shard_keys in shards.items() for key in shard_keys}
        files["model.safetensors.index.json"] = json.dumps({"weight_map": weight_map}).encode()
    hub.publish("acme/mamba-tiny", files)
    path = fetch_input(f"acme/mamba-tiny@{REVISION}", "model", tmp_path / "cache", log=_quiet)
    loaded = MambaLM.from_pretrained(path).eval()
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_urls_with_sha256_are_verified(hub, tokenizer_json, tmp_path, capsys):
    body = tokenizer_json.read_bytes()
    hub.files["/files/tokenizer.json"] = body
    digest = hashlib.sha256(body).hexdigest()
    path = fetch_input(f"{hub.url}/files/tokenizer.json#sha256={digest}", "tokenizer", tmp_path / "cache", log=_quiet)
    assert Path(path).name == "tokenizer.json" and Path(path).read_bytes() == body
    wrong = hashlib.sha256(b"another file").hexdigest()
    assert main(["tokenizer", f"{hub.url}/files/tokenizer.json#sha256={wrong}", "--cache", str(tmp_path / "c2")]) == 2
    error = capsys.readouterr().err
    assert "sha256 mismatch" in error and f"{hub.url}/files/tokenizer.json" in error


def test_what_is_not_there_is_named(hub, tmp_path):
    with pytest.raises(UserError, match="a hub id needs a pinned revision, org/name@<commit hash>"):
        fetch_input("acme/words", "tokenizer", tmp_path, log=_quiet)
    with pytest.raises(UserError, match=f"acme/nothing@{REVISION}: no config.json at "
                                        f"{hub.url}/acme/nothing/resolve/{REVISION}/config.json"):
        fetch_input(f"acme/nothing@{REVISION}", "model", tmp_path, log=_quiet)
    local = tmp_path / "tokenizer.model"
    local.write_bytes(b"local")
    assert fetch_input(str(local), "tokenizer", tmp_path / "cache") == str(local)


def test_commands_take_a_released_model_by_hub_id(hub, tokenizer_json, tmp_path, monkeypatch, capsys):
    from kotomamba.convert.cli import main as convert
    from kotomamba.train.checkpoint_files import load_model_state_dict
    from kotomamba.model.generation import main as generate

    torch.manual_seed(0)
    model = MambaLM(preset("tiny", vocab_size=VOCAB)).eval()
    model.save_pretrained(tmp_path / "released")
    files = {name: (tmp_path / "released" / name).read_bytes() for name in ("config.json", "model.safetensors")}
    tokenizer_config = json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "</s>"}).encode()
    hub.publish("acme/mamba-tiny", {**files, "tokenizer.json": tokenizer_json.read_bytes(),
                                    "tokenizer_config.json": tokenizer_config})
    monkeypatch.setenv("KOTOMAMBA_CACHE", str(tmp_path / "cache"))
    released = f"acme/mamba-tiny@{REVISION}"

    assert convert(["--checkpoint", released, "--to", "kotomamba", "--output", str(tmp_path / "init")]) == 0
    _, state = load_model_state_dict(tmp_path / "init")
    assert all(torch.equal(state[key], tensor) for key, tensor in model.state_dict().items())
    assert (tmp_path / "init" / "tokenizer.json").is_file()  # the repository's tokenizer came along
    assert generate(["--model", released, "--prompt", "w1 w2", "--max-new-tokens", "3", "--temperature", "0"]) == 0
    assert "=== 'w1 w2'\nw1 w2" in capsys.readouterr().out
    assert (tmp_path / "cache" / "hub" / "acme" / "mamba-tiny" / REVISION / "model.safetensors").is_file()


def test_corpus_shards_on_a_hub_dataset_resolve_to_the_same_layout(hub, tmp_path):
    """What `kotomamba download` needs for hub datasets: the resolve URL, then its own fetch and sha256 check."""
    from kotomamba.data.download import Source, download
    from kotomamba.data.hub import HubId, resolve_url

    shard = b'{"text": "a line of a shard"}\n'
    hub.files[f"/datasets/acme/corpus/resolve/{REVISION}/train/00.jsonl"] = shard
    url = resolve_url(HubId("acme/corpus", REVISION), "train/00.jsonl", repo_type="dataset")
    assert url == f"{hub.url}/datasets/acme/corpus/resolve/{REVISION}/train/00.jsonl"
    [path] = download([Source(url, hashlib.sha256(shard).hexdigest())], tmp_path, log=_quiet)
    assert path.read_bytes() == shard
