"""Recurrent decoding with the state cache: same tokens as recomputing the prefix, prompt read once."""
from __future__ import annotations

import pytest
import torch

from kotomamba.model import MambaLM, preset
from kotomamba.model.generation import generate


def _tiny(layer: str, seed: int = 0) -> MambaLM:
    torch.manual_seed(seed)
    return MambaLM(preset("tiny", ssm_cfg={"layer": layer})).eval()


def _greedy_by_recomputation(model: MambaLM, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    seq = prompt
    with torch.no_grad():
        for _ in range(steps):
            logits = model(seq)[:, -1, :model.config.vocab_size]
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    return seq


@pytest.mark.parametrize("layer", ["Mamba1", "Mamba2"])
def test_greedy_decoding_matches_full_recomputation_and_reads_the_prompt_once(layer):
    model = _tiny(layer)
    prompt = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    full_passes = []
    model.backbone.register_forward_pre_hook(lambda module, args: full_passes.append(args[0].shape[1]))
    out = generate(model, prompt, 10, temperature=0.0)
    assert full_passes == [9]  # one pass over the prompt; every new token is a recurrent step
    assert torch.equal(out, _greedy_by_recomputation(model, prompt, 10))


def test_top_k_one_and_temperature_zero_agree_and_seed_reproduces():
    model = _tiny("Mamba2")
    prompt = torch.tensor([[5, 6, 7, 8]])
    greedy = generate(model, prompt, 8, temperature=0.0)
    assert torch.equal(generate(model, prompt, 8, temperature=0.7, top_k=1,
                                generator=torch.Generator().manual_seed(3)), greedy)
    draws = [generate(model, prompt.repeat(3, 1), 8, generator=torch.Generator().manual_seed(seed))
             for seed in (11, 11, 12)]
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], draws[2])
    assert not torch.equal(draws[0][:1], greedy)  # default flags sample (a random model is near uniform)


def test_tokens_beyond_the_real_vocabulary_are_never_produced():
    model = MambaLM(preset("tiny", vocab_size=500)).eval()  # 512 rows, ids 500..511 are padding
    with torch.no_grad():
        model.lm_head.weight[500:] = 10.0  # make the padded rows the most likely by far
    out = generate(model, torch.tensor([[1, 2, 3]]), 20, generator=torch.Generator().manual_seed(0))
    assert out.max() < 500


def test_stops_at_eos_per_row_and_pads_finished_rows():
    model = _tiny("Mamba1")
    prompt = torch.randint(0, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(2))
    free = generate(model, prompt, 12, temperature=0.0)
    assert not torch.equal(free[0, 5:], free[1, 5:])
    eos = int(free[0, 5 + 3])  # row 0 emits this token as its 4th new token (or earlier)
    first = [row.index(eos) if eos in row else 11 for row in free[:, 5:].tolist()]
    stopped = generate(model, prompt, 12, temperature=0.0, eos_id=eos)
    assert first[0] <= 3 and stopped.shape == (2, 5 + max(first) + 1)
    for row, end in enumerate(first):
        assert torch.equal(stopped[row, :5 + end + 1], free[row, :5 + end + 1])
        assert (stopped[row, 5 + end:] == eos).all() or end == 11


def test_zero_new_tokens_returns_the_prompt():
    prompt = torch.tensor([[1, 2, 3]])
    assert torch.equal(generate(_tiny("Mamba2"), prompt, 0), prompt)


@pytest.mark.gpu
@pytest.mark.parametrize("layer", ["Mamba1", "Mamba2"])
def test_cuda_graph_decoding_matches_eager_decoding(layer):
    model = _tiny(layer).cuda()
    prompt = torch.randint(0, model.config.vocab_size, (4, 16), device="cuda")
    eager = generate(model, prompt, 32, temperature=0.0, cuda_graph=False)
    graphed = generate(model, prompt, 32, temperature=0.0, cuda_graph=True)
    assert torch.equal(graphed, eager)
    again = generate(model, prompt[:, :5], 32, temperature=0.0, cuda_graph=True)  # graph reused, fresh prefill
    assert torch.equal(again, generate(model, prompt[:, :5], 32, temperature=0.0, cuda_graph=False))


def test_generate_cli_on_an_export_prints_and_writes_samples(tmp_path, capsys):
    import json

    import sentencepiece

    from kotomamba.convert.export import write_hf
    from kotomamba.convert.run_info import RunInfo
    from kotomamba.model.generation import main

    lines = [f"line {i}: the quick brown fox jumps over the lazy dog number {i}" for i in range(200)]
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(tmp_path / "tok"),
                                             vocab_size=300, byte_fallback=True, num_threads=1, minloglevel=2)
    torch.manual_seed(0)
    model = MambaLM(preset("tiny", vocab_size=300))
    write_hf(model.config, model.state_dict(), tmp_path / "export",
             ("SentencePieceTokenizer", str(tmp_path / "tok.model")), RunInfo(checkpoint="test"))
    args = ["--model", str(tmp_path / "export"), "--prompt", "the quick", "--prompt", "lazy dog",
            "--max-new-tokens", "6", "--batch", "2", "--seed", "5"]
    assert main(args + ["--output", str(tmp_path / "a.json")]) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "a.json").read_text())
    assert [s["prompt"] for s in result["samples"]] == ["the quick", "the quick", "lazy dog", "lazy dog"]
    assert all(s["prompt"] + s["completion"] in printed for s in result["samples"])
    assert result["sampling"] == {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0}
    assert main(args + ["--output", str(tmp_path / "b.json")]) == 0
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()
    assert main(args + ["--temperature", "-1"]) == 2


def test_a_completion_keeps_the_space_between_prompt_and_its_first_word(tmp_path):
    import sentencepiece

    from kotomamba.data.tokenizer import build_tokenizer
    from kotomamba.model.generation import SamplingConfig, sample_texts

    lines = [f"the quick brown fox jumps over the lazy dog {word}" for word in ("again", "twice", "once")] * 50
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(tmp_path / "tok"),
                                             vocab_size=300, hard_vocab_limit=False, byte_fallback=True,
                                             num_threads=1, minloglevel=2)
    tokenizer = build_tokenizer("SentencePieceTokenizer", str(tmp_path / "tok.model"))
    torch.manual_seed(0)
    model = MambaLM(preset("tiny", vocab_size=300)).eval()
    with torch.no_grad():  # favour the pieces that begin a word, so the first new token starts with a space
        for word in ("lazy", "dog", "fox"):
            model.lm_head.weight[tokenizer.encode(word)] *= 40
    prompts = ["the quick", "over the"]
    samples = sample_texts(model, tokenizer, prompts, 5, SamplingConfig(temperature=0.0), seed=0, stop_at_eos=False)
    for prompt, sample in zip(prompts, samples):
        ids = tokenizer.encode(prompt)
        out = generate(model, torch.tensor([ids]), 5, temperature=0.0, cuda_graph=False)[0].tolist()
        assert sample["text"] == tokenizer.decode(out)
    assert any(sample["completion"].startswith(" ") for sample in samples)
