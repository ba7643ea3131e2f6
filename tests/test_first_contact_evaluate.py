"""A new user's first `kotomamba evaluate` and `kotomamba generate`: prefixes without weights, a model
path that is not there, a model without tokenizer files, lm-eval tasks without the `lmeval` extra,
an output that cannot be written, a device that is not there."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from kotomamba.convert.export import write_hf
from kotomamba.convert.run_info import RunInfo
from kotomamba.evaluate.cli import main as evaluate
from kotomamba.model import MambaLM, preset
from kotomamba.model.generation import main as generate
from train_helpers import VOCAB, make_corpus


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, str, str]:
    """(a transformers export of a tiny untrained model, two Megatron prefixes)."""
    root = tmp_path_factory.mktemp("first_eval")
    tokenizer, prefix = make_corpus(root)
    other = root / "other_text_document"
    for ext in ("bin", "idx"):
        shutil.copyfile(f"{prefix}.{ext}", f"{other}.{ext}")
    torch.manual_seed(0)
    model = MambaLM(preset("tiny", vocab_size=VOCAB))
    write_hf(model.config, model.state_dict(), root / "export", ("HuggingFaceTokenizer", tokenizer),
             RunInfo(checkpoint="test"))
    return root / "export", prefix, str(other)


def _evaluate(model: Path, output: Path, *data: str) -> dict:
    assert evaluate(["--model", str(model), "--data", *data, "--seq-length", "16", "--eval-samples", "4",
                     "--split", "50,50,0", "--output", str(output)]) == 0
    return json.loads(output.read_text())


def test_prefixes_without_weights_are_blended_equally(setup, tmp_path):
    model, first, second = setup
    unweighted = _evaluate(model, tmp_path / "a.json", first, second)
    weighted = _evaluate(model, tmp_path / "b.json", f"1 {first} 1 {second}")
    assert unweighted["data"]["data_path"] == f"1 {first} 1 {second}"
    assert unweighted["perplexity"] == weighted["perplexity"]


def test_a_model_path_that_is_not_there_is_named(tmp_path, capsys):
    missing = tmp_path / "nonexistent"
    assert generate(["--model", str(missing), "--prompt", "w1"]) == 2
    assert f"--model {missing}: no such model directory" in capsys.readouterr().err
    assert evaluate(["--model", str(missing), "--prompt", "w1", "--output", str(tmp_path / "e.json")]) == 2
    assert f"--model {missing}: no such model directory" in capsys.readouterr().err


def test_a_model_without_tokenizer_files_says_which_flags_to_pass(setup, tmp_path, capsys):
    model, _, _ = setup
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(model / name, bare / name)
    assert generate(["--model", str(bare), "--prompt", "w1"]) == 2
    error = capsys.readouterr().err
    assert f"--model {bare}: no tokenizer files" in error and "--tokenizer-type and --tokenizer-model" in error


def test_lm_eval_tasks_without_the_extra_name_the_extra(setup, tmp_path, capsys, monkeypatch):
    model, _, _ = setup
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` then fails as without the extra
    output = tmp_path / "eval.json"
    assert evaluate(["--model", str(model), "--lm-eval-tasks", "hellaswag", "--output", str(output)]) == 2
    assert "pip install 'kotomamba[lmeval]'" in capsys.readouterr().err
    assert not output.exists()


def test_the_evaluation_sampling_reaches_the_exports_generation_config(setup, tmp_path):
    from transformers import GenerationConfig

    from kotomamba.convert.cli import main as convert

    model, prefix, _ = setup
    assert evaluate(["--model", str(model), "--data", prefix, "--seq-length", "16", "--eval-samples", "2",
                     "--split", "50,50,0", "--temperature", "0.8", "--top-p", "0.95", "--top-k", "20",
                     "--output", str(tmp_path / "eval.json")]) == 0  # no prompts, as a pipeline may be set up
    assert convert(["--checkpoint", str(model), "--to", "hf", "--eval-json", str(tmp_path / "eval.json"),
                    "--output", str(tmp_path / "hf")]) == 0
    generation = GenerationConfig.from_pretrained(str(tmp_path / "hf"))
    assert generation.do_sample and (generation.temperature, generation.top_p, generation.top_k) == (0.8, 0.95, 20)


def test_an_output_that_cannot_be_written_is_refused_before_any_sample_is_drawn(setup, tmp_path, capsys):
    model, prefix, _ = setup
    (tmp_path / "file").write_text("")
    output = tmp_path / "file" / "samples.json"  # below a file
    assert generate(["--model", str(model), "--prompt", "w1", "--output", str(output)]) == 2
    printed = capsys.readouterr()
    assert printed.err == f"kotomamba generate: error: {output} (--output): cannot be written: {tmp_path / 'file'} " \
                          "is a file, not a directory\n"
    assert printed.out == ""  # no sample was drawn (and printed) first
    assert evaluate(["--model", str(model), "--data", prefix, "--seq-length", "16", "--eval-samples", "4",
                     "--prompt", "w1", "--output", str(tmp_path)]) == 2
    printed = capsys.readouterr()
    assert printed.err == f"kotomamba evaluate: error: {tmp_path} (--output): is a directory, not a file\n"
    assert printed.out == ""


def test_a_tokenizer_with_more_ids_than_the_model_is_refused_before_the_work(setup, tmp_path, capsys):
    """Another model's tokenizer: its ids past the model's vocabulary would index past the embedding."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    model, prefix, _ = setup
    big = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB + 100)} | {"</s>": VOCAB + 100},
                                     unk_token="w0"))
    big.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    big.save(str(tmp_path / "big.json"))
    flags = ["--model", str(model), "--prompt", f"w1 w{VOCAB + 50}", "--tokenizer-type", "HuggingFaceTokenizer",
             "--tokenizer-model", str(tmp_path / "big.json")]
    expected = (f"--tokenizer-model {tmp_path / 'big.json'}: a tokenizer of {VOCAB + 101} ids, more than the "
                f"{VOCAB} of the model --model {model}: not the tokenizer it was trained with\n")
    assert generate(flags) == 2
    assert capsys.readouterr().err == "kotomamba generate: error: " + expected
    output = tmp_path / "eval.json"
    assert evaluate(flags + ["--data", prefix, "--seq-length", "16", "--eval-samples", "4", "--output",
                             str(output)]) == 2
    printed = capsys.readouterr()
    assert printed.err == "kotomamba evaluate: error: " + expected and not output.exists()


def test_data_tokenized_with_a_larger_vocabulary_is_refused_before_the_model_reads_it(setup, tmp_path, capsys):
    import numpy as np

    from kotomamba.data.indexed_dataset import IndexedDatasetWriter

    model, _, _ = setup
    prefix = tmp_path / "other_tokenizer_text_document"
    with IndexedDatasetWriter(str(prefix), np.uint16) as writer:
        for start in range(40):
            writer.add_document(VOCAB + np.arange(start, start + 30) % 40)  # every id past the model's
    output = tmp_path / "eval.json"
    assert evaluate(["--model", str(model), "--data", str(prefix), "--split", "50,50,0", "--seq-length", "16",
                     "--eval-samples", "4", "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kotomamba evaluate: error: --data {prefix}: the validation split holds token id ")
    assert err.endswith(f", past the {VOCAB} ids of the model {model}: tokenized with another tokenizer\n")
    assert not output.exists()


def test_a_validation_split_shorter_than_one_sample_is_refused(setup, tmp_path, capsys):
    """Every sample of 4 tokens' worth of documents is them repeated: its perplexity measures copying."""
    import numpy as np

    from kotomamba.data.indexed_dataset import IndexedDatasetWriter

    model, _, _ = setup
    prefix = tmp_path / "short_text_document"
    with IndexedDatasetWriter(str(prefix), np.uint16) as writer:
        writer.add_document(np.array([1, 2, 3, VOCAB - 1]))
    output = tmp_path / "eval.json"
    assert evaluate(["--model", str(model), "--data", str(prefix), "--split", "0,100,0", "--seq-length", "16",
                     "--eval-samples", "4", "--output", str(output)]) == 2
    assert capsys.readouterr().err == (
        f"kotomamba evaluate: error: {prefix}: the valid split holds 4 tokens (1 documents), fewer than one sample "
        "of seq_length + 1 = 17: every sample would repeat the same documents, so the perplexity would measure "
        "copying; add documents, or give the valid split a larger share by --split ('0,100,0') or a shorter "
        "--seq-length\n")
    assert not output.exists()


def test_a_prompts_file_is_read_past_its_byte_order_mark_and_a_bad_one_is_named(setup, tmp_path, capsys):
    model, _, _ = setup
    prompts = tmp_path / "prompts.txt"
    flags = ["--model", str(model), "--prompts-file", str(prompts), "--max-new-tokens", "2", "--output",
             str(tmp_path / "eval.json")]
    prompts.write_bytes(b"\xef\xbb\xbfw1 w2\r\n\r\nw3\r\n")  # as Windows' Notepad saves UTF-8
    assert evaluate(flags) == 0
    assert [s["prompt"] for s in json.loads((tmp_path / "eval.json").read_text())["samples"]] == ["w1 w2", "w3"]
    (tmp_path / "eval.json").unlink()
    for data, error in ((b"w1\nw2 \xff w3\n", f"{prompts}: line 2: invalid UTF-8; save the prompts file as UTF-8"),
                        (b"\n  \n", f"{prompts}: no prompts in the prompts file (one a line; it has only blank lines)")):
        prompts.write_bytes(data)
        assert evaluate(flags) == 2
        assert capsys.readouterr().err == f"kotomamba evaluate: error: {error}\n"
        assert not (tmp_path / "eval.json").exists()


def test_a_device_that_is_not_there_is_named(setup, tmp_path, capsys):
    model, _, _ = setup
    absent = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU (the first on a machine of none)
    assert generate(["--model", str(model), "--prompt", "w1", "--device", absent]) == 2
    assert capsys.readouterr().err.startswith(f"kotomamba generate: error: --device {absent}: this machine has "
                                              f"{torch.cuda.device_count()} CUDA GPUs; pass another --device")
    assert evaluate(["--model", str(model), "--prompt", "w1", "--device", "gpu0", "--output",
                     str(tmp_path / "e.json")]) == 2
    assert capsys.readouterr().err == "kotomamba evaluate: error: --device gpu0: not a torch device (cpu, cuda, " \
                                      "cuda:N, ...)\n"
