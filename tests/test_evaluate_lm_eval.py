"""lm-eval bridge, offline: a multiple-choice task over a local JSONL file.

Oracle: lm-eval's own ``HFLM`` running transformers' Mamba2 on the same export.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from kotomamba.convert.export import write_hf  # noqa: E402
from kotomamba.convert.run_info import RunInfo  # noqa: E402
from kotomamba.data.tokenizer import build_tokenizer  # noqa: E402
from kotomamba.evaluate.cli import main  # noqa: E402
from kotomamba.evaluate.lm_eval_bridge import KotomambaLM, run_tasks  # noqa: E402
from kotomamba.model import MambaLM, preset  # noqa: E402

QUESTIONS = [
    ("The capital of France is", ["Paris", "a banana", "blue"], 0),
    ("Two plus two equals", ["seven", "four", "the sky"], 1),
    ("Cats like to drink", ["petrol", "ink", "milk"], 2),
    ("A checkpoint is written", ["atomically", "never", "upside down"], 0),
    ("Mamba is a state space", ["dog", "model", "colour"], 1),
]
TASK_YAML = """task: kotomamba_local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    import sentencepiece

    root = tmp_path_factory.mktemp("lmeval")
    text = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
    lines = [line for line in text.read_text(encoding="utf-8").splitlines() if line.strip()]
    lines += [q + " " + " ".join(c) for q, c, _ in QUESTIONS]
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(root / "tok"),
                                             vocab_size=500, byte_fallback=True, num_threads=1, minloglevel=2)
    torch.manual_seed(0)
    model = MambaLM(preset("tiny", vocab_size=500))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.3 * torch.randn_like(param))  # a peaked, non-uniform distribution
    write_hf(model.config, model.state_dict(), root / "export", ("SentencePieceTokenizer", str(root / "tok.model")),
             RunInfo(checkpoint="test"))
    tasks = root / "tasks"
    tasks.mkdir()
    data = root / "local_mc.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS))
    (tasks / "local_mc.yaml").write_text(TASK_YAML.format(data=data))
    return root


def _ours(export: Path):
    model = MambaLM.from_pretrained(export / "export").eval()
    return model, build_tokenizer("HuggingFaceTokenizer", str(export / "export"))


def _hflm(export: Path):
    from lm_eval.models.huggingface import HFLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Our bridge conditions an empty context on the end-of-document token (what separated documents
        # in training); HFLM would pick BOS, so tell it.
        eod = build_tokenizer("HuggingFaceTokenizer", str(export / "export")).eod
        return HFLM(pretrained=str(export / "export"), device="cpu", batch_size=2, dtype="float32",
                    prefix_token_id=eod)


def test_loglikelihoods_match_lm_evals_own_transformers_model(export):
    from lm_eval.api.instance import Instance

    requests = [Instance("loglikelihood", {}, (ctx, " " + choice), i)
                for i, (ctx, choice) in enumerate((q, c) for q, cs, _ in QUESTIONS for c in cs)]
    requests.append(Instance("loglikelihood", {}, ("", "Paris is big"), len(requests)))
    model, tokenizer = _ours(export)
    ours = KotomambaLM(model, tokenizer, batch_size=4).loglikelihood(requests)
    theirs = _hflm(export).loglikelihood(requests)
    for (a, greedy_a), (b, greedy_b) in zip(ours, theirs):
        assert a == pytest.approx(b, abs=1e-4) and greedy_a == greedy_b
    rolling = [Instance("loglikelihood_rolling", {}, ("State space models scale linearly. " * 6,), 0)]
    short = KotomambaLM(model, tokenizer, batch_size=4, max_length=16)  # several rolling windows
    assert short.loglikelihood_rolling(rolling)[0] == pytest.approx(
        _hflm_rolling(export, rolling, max_length=16), abs=1e-3)


def _hflm_rolling(export: Path, requests, max_length: int) -> float:
    lm = _hflm(export)
    lm._max_length = max_length
    return lm.loglikelihood_rolling(requests)[0]


def test_generate_until_stops_at_the_stop_string(export):
    from lm_eval.api.instance import Instance

    model, tokenizer = _ours(export)
    lm = KotomambaLM(model, tokenizer)
    # The random model may end a document at once after a prompt (the tokenizer, trained on a document of the
    # repository, changes with it): the first prompt it goes on after is the one to cut.
    for prompt in ["The model"] + [question for question, _, _ in QUESTIONS]:
        free = lm.generate_until([Instance("generate_until", {}, (prompt, {"max_gen_toks": 12, "until": []}), 0)])[0]
        if len(free) >= 4:
            break
    assert len(free) >= 4, "the model ended a document at once after every prompt"
    stop = free[len(free) // 2:][:2]
    cut = lm.generate_until([Instance("generate_until", {}, (prompt, {"max_gen_toks": 12, "until": [stop]}), 0)])
    assert cut[0] == free[:free.index(stop)] and len(cut[0]) < len(free)


@pytest.mark.slow
def test_local_multiple_choice_task_scores_like_lm_evals_transformers_run(export, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    model, tokenizer = _ours(export)
    ours = run_tasks(model, tokenizer, ["kotomamba_local_mc"], str(export / "tasks"), batch_size=4)
    theirs = simple_evaluate(model=_hflm(export), tasks=["kotomamba_local_mc"],
                             task_manager=TaskManager(include_path=str(export / "tasks")), log_samples=False)
    assert ours["kotomamba_local_mc"]["acc"] == theirs["results"]["kotomamba_local_mc"]["acc,none"]
    assert 0.0 <= ours["kotomamba_local_mc"]["acc"] <= 1.0 and "acc_stderr" in ours["kotomamba_local_mc"]

    assert main(["--model", str(export / "export"), "--lm-eval-tasks", "kotomamba_local_mc",
                 "--lm-eval-include-path", str(export / "tasks"), "--output", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["lm_eval"] == ours and "perplexity" not in result
