"""kotomamba evaluate: token-weighted held-out perplexity, trained < untrained, samples, JSON output."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from kotomamba.convert.export import write_hf
from kotomamba.convert.run_info import RunInfo
from kotomamba.data.indexed_dataset import IndexedDatasetWriter
from kotomamba.data.tokenizer import build_tokenizer
from kotomamba.evaluate.cli import main
from kotomamba.evaluate.perplexity import heldout_loss
from kotomamba.model import MambaLM, preset

SEQ = 32


def _documents() -> list[str]:
    docs = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
    paragraphs = [p.strip() for p in docs.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    return paragraphs * 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A SentencePiece tokenizer, a Megatron dataset of the docs, and a briefly trained tiny model's export."""
    import sentencepiece

    root = tmp_path_factory.mktemp("eval")
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_documents()), model_prefix=str(root / "tok"), vocab_size=500, byte_fallback=True,
        num_threads=1, minloglevel=2)
    tokenizer = build_tokenizer("SentencePieceTokenizer", str(root / "tok.model"))
    writer = IndexedDatasetWriter(root / "docs_text_document", np.uint16)
    stream = []
    for doc in _documents():
        ids = tokenizer.encode(doc) + [tokenizer.eod]
        writer.add_document(ids)
        stream += ids
    writer.finalize()

    torch.manual_seed(0)
    model = MambaLM(preset("tiny", vocab_size=tokenizer.vocab_size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.tensor(stream)
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        starts = torch.randint(0, len(data) - SEQ - 1, (8,), generator=gen)
        batch = torch.stack([data[s:s + SEQ + 1] for s in starts])
        loss = model(batch[:, :-1], labels=batch[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    export = root / "export"
    write_hf(model.config, model.state_dict(), export, ("SentencePieceTokenizer", str(root / "tok.model")),
             RunInfo(checkpoint="test"))
    return root, model.eval()


def _dataset(items: int, seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    return [{"tokens": torch.randint(0, 500, (SEQ + 1,), generator=gen)} for _ in range(items)]


def test_heldout_loss_is_token_weighted_and_independent_of_batching():
    torch.manual_seed(0)
    model = MambaLM(preset("tiny", vocab_size=500)).eval()
    dataset = _dataset(7)
    tokens = torch.stack([item["tokens"] for item in dataset])
    with torch.no_grad():
        logits = model(tokens[:, :-1]).float()
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), reduction="sum")
    expected = float(expected) / tokens[:, 1:].numel()
    one, three = heldout_loss(model, dataset, 1), heldout_loss(model, dataset, 3)
    assert one["tokens"] == three["tokens"] == 7 * SEQ and one["samples"] == 7
    assert one["loss"] == pytest.approx(expected, rel=1e-5)
    assert three["loss"] == pytest.approx(expected, rel=1e-5)
    assert one["perplexity"] == pytest.approx(math.exp(one["loss"]))
    assert heldout_loss(model, dataset, 3) == three  # deterministic


def test_evaluate_writes_perplexity_baseline_and_samples(setup, tmp_path):
    root, _ = setup
    (tmp_path / "prompts.txt").write_text("The model\n\nConversion and evaluation\n")
    args = ["--model", str(root / "export"), "--data", f"1.0 {root / 'docs_text_document'}", "--split", "70,30,0",
            "--seq-length", str(SEQ), "--eval-samples", "12", "--micro-batch-size", "5", "--seed", "3",
            "--baseline-init", "--prompt", "Every stage", "--prompts-file", str(tmp_path / "prompts.txt"),
            "--max-new-tokens", "8", "--temperature", "0.8", "--top-p", "0.95"]
    assert main(args + ["--output", str(tmp_path / "a.json")]) == 0
    result = json.loads((tmp_path / "a.json").read_text())
    trained, untrained = result["perplexity"], result["baseline_init"]
    assert trained["tokens"] == 12 * SEQ and result["data"]["reset_at_eod"] is True
    assert trained["loss"] < untrained["loss"] - 0.5  # trained < untrained
    assert untrained["loss"] == pytest.approx(math.log(500), abs=0.5)  # fresh init ~ uniform
    assert trained["perplexity"] == pytest.approx(math.exp(trained["loss"]))
    assert [s["prompt"] for s in result["samples"]] == ["Every stage", "The model", "Conversion and evaluation"]
    assert all(0 < s["tokens"] <= 8 and s["text"] == s["prompt"] + s["completion"] for s in result["samples"])
    assert result["sampling"]["temperature"] == 0.8 and result["sampling"]["top_k"] == 0
    assert main(args + ["--output", str(tmp_path / "b.json")]) == 0
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()  # deterministic, seeded


def test_evaluate_bad_input_is_a_user_error(setup, tmp_path, capsys):
    root, _ = setup
    code = main(["--model", str(root / "export"), "--data", str(tmp_path / "missing_prefix"), "--output",
                 str(tmp_path / "x.json")])
    assert code == 2 and "missing_prefix" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
    code = main(["--model", str(root / "export"), "--prompts-file", str(tmp_path / "nope.txt"), "--output",
                 str(tmp_path / "x.json")])
    assert code == 2 and "nope.txt" in capsys.readouterr().err
