"""Text generation with the recurrent state cache: prefill the prompt once, then one O(1) step per token.

``generate(model, input_ids, ...)`` is the library entry point (used by ``kotomamba evaluate``);
``main(argv)`` is ``kotomamba generate``. Sampling is exactly what the flags say: temperature 1.0,
top-k 0 (off) and top-p 1.0 (off) by default, i.e. plain sampling from the model's distribution;
``--temperature 0`` (or ``--top-k 1``) is greedy. The predecessor defaulted ``--topk`` to 1 and so
was silently greedy whatever the other flags said.

Filtering order follows Hugging Face's ``generate`` and mamba-ssm's ``decode``
(``mamba_ssm/utils/generation.py``): repetition penalty on the raw logits (CTRL, Keskar et al. 2019,
arXiv:1909.05858), then temperature, then top-k, then top-p (nucleus, Holtzman et al. 2019,
arXiv:1904.09751). On CUDA the decode step runs as a captured CUDA graph (one launch per token
instead of one per kernel), as mamba-ssm's ``generate(cg=True)`` does.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from kotomamba.errors import UserError, report
from kotomamba.io import check_output, write_json


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen from the logits.

    ``temperature`` 0 means greedy; ``top_k`` 0 means no top-k filter; ``top_p`` 1.0 means no
    nucleus filter; ``repetition_penalty`` 1.0 means none (> 1 discourages tokens already present).
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def __post_init__(self):
        if not self.temperature >= 0.0:
            raise UserError(f"--temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"--top-k must be >= 0 (0 means off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise UserError(f"--top-p must be in (0, 1] (1 means off), got {self.top_p}")
        if not self.repetition_penalty > 0.0:
            raise UserError(f"--repetition-penalty must be > 0 (1 means off), got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


def apply_repetition_penalty(logits: torch.Tensor, previous: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty: logits ``[B, V]`` of tokens in ``previous [B, T]`` are divided by
    ``penalty`` where positive and multiplied where negative (a new tensor; the input is unchanged)."""
    if penalty == 1.0 or previous.shape[1] == 0:
        return logits
    seen = logits.gather(1, previous)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(1, previous, seen)


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Logits ``[B, V]`` with everything below the k-th largest of each row set to -inf (ties kept)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches ``p`` (at least one).

    A token is dropped when the probability mass of the tokens strictly more likely than it
    already reaches ``p``. Logits ``[B, V]``.
    """
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = mass_before >= p
    drop = drop_sorted.scatter(1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def next_token(logits: torch.Tensor, previous: torch.Tensor, sampling: SamplingConfig,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Choose the next token ``[B]`` (int64) from logits ``[B, V]`` given the tokens so far ``[B, T]``."""
    logits = apply_repetition_penalty(logits.float(), previous, sampling.repetition_penalty)
    if sampling.greedy:
        return logits.argmax(dim=-1)
    logits = logits / sampling.temperature
    logits = filter_top_p(filter_top_k(logits, sampling.top_k), sampling.top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


class _GraphedStep:
    """``model.step`` for one batch size captured as a CUDA graph over a fixed inference cache.

    The cache tensors (the states and the position their step reads) and the input buffer are static;
    replaying the graph updates the cache in place and rewrites ``logits``; a prefill into the same cache
    sets them for the next replay. Built once per (batch size, dtype) and kept on the model.
    """

    def __init__(self, model, batch_size: int, max_seqlen: int, dtype: torch.dtype):
        device = next(model.parameters()).device
        self.cache = model.allocate_inference_cache(batch_size, max_seqlen, dtype=dtype)
        self.input_ids = torch.zeros(batch_size, dtype=torch.long, device=device)
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up outside capture (allocator, lazy kernel init)
            for _ in range(2):
                model.step(self.input_ids, self.cache)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = model.step(self.input_ids, self.cache)
        self.max_seqlen = max_seqlen

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        self.input_ids.copy_(input_ids)
        self.graph.replay()
        return self.logits


def _graphed_step(model, batch_size: int, max_seqlen: int, dtype: torch.dtype) -> _GraphedStep:
    graphs = model.__dict__.setdefault("_kotomamba_decode_graphs", {})
    key = (batch_size, dtype)
    if key not in graphs or graphs[key].max_seqlen < max_seqlen:
        graphs[key] = _GraphedStep(model, batch_size, max_seqlen, dtype)
    return graphs[key]


def _model_dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


@torch.inference_mode()
def generate(model, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, repetition_penalty: float = 1.0, eos_id: int | None = None,
             generator: torch.Generator | None = None, cuda_graph: bool | None = None) -> torch.Tensor:
    """Continue ``input_ids [B, L]`` by up to ``max_new_tokens``; returns ``[B, L + T]`` (int64).

    The prompt is read once (``model.prefill``), then each token costs one ``model.step`` on the
    recurrent state. Tokens are drawn from the first ``model.config.vocab_size`` logits only (the
    padded tail is never produced). With ``eos_id``, a row stops at its first EOS and is filled
    with ``eos_id`` afterwards; generation ends when every row has stopped, so ``T`` is the longest
    row's length (at most ``max_new_tokens``). ``cuda_graph`` defaults to on for CUDA models.
    Sampling draws from ``generator`` (on the model's device) so a seed reproduces the output.
    """
    sampling = SamplingConfig(temperature, top_k, top_p, repetition_penalty)
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise UserError(f"generate: input_ids must be [batch, length >= 1], got {tuple(input_ids.shape)}")
    batch, prompt_len = input_ids.shape
    device = next(model.parameters()).device
    input_ids = input_ids.to(device=device, dtype=torch.long)
    if max_new_tokens <= 0:
        return input_ids.clone()
    tokens = torch.empty(batch, prompt_len + max_new_tokens, dtype=torch.long, device=device)
    tokens[:, :prompt_len] = input_ids
    vocab = model.config.vocab_size
    use_graph = device.type == "cuda" if cuda_graph is None else cuda_graph
    dtype = _model_dtype(model)
    max_seqlen = prompt_len + max_new_tokens
    if use_graph:
        stepper = _graphed_step(model, batch, max_seqlen, dtype)
        cache = stepper.cache
        step = stepper
    else:
        cache = model.allocate_inference_cache(batch, max_seqlen, dtype=dtype)
        step = lambda ids: model.step(ids, cache)  # noqa: E731
    logits = model.prefill(input_ids, cache)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    length = prompt_len
    for _ in range(max_new_tokens):
        token = next_token(logits[:, :vocab], tokens[:, :length], sampling, generator)
        if eos_id is not None:
            token = token.masked_fill(finished, eos_id)
            finished |= token == eos_id
        tokens[:, length] = token
        length += 1
        # One host sync per token only where it can end generation early.
        if length == prompt_len + max_new_tokens or (eos_id is not None and bool(finished.all())):
            break
        logits = step(token)
    return tokens[:, :length]


# ---------------------------------------------------------------------------------------------
# kotomamba generate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kotomamba generate",
        description="Sample text from a model directory (a kotomamba/transformers/mamba-ssm export). "
                    "Defaults SAMPLE from the model's distribution (temperature 1, no top-k, no top-p); "
                    "pass --temperature 0 for greedy decoding.")
    parser.add_argument("--model", required=True,
                        help="model directory loadable by MambaLM.from_pretrained, or a hub id org/name@revision")
    parser.add_argument("--prompt", action="append", required=True,
                        help="prompt text; repeat the flag for several prompts")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="softmax temperature; 0 means greedy (default 1.0: sampling)")
    parser.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens; 0 = off (default)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass; 1.0 = off (default)")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="CTRL penalty; 1.0 = off (default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling generator (default 0)")
    parser.add_argument("--batch", type=int, default=1, help="samples per prompt, decoded together (default 1)")
    parser.add_argument("--no-stop-at-eos", action="store_true", help="keep generating after the EOS token")
    parser.add_argument("--tokenizer-type", default=None,
                        help="Megatron tokenizer type (default: the HF tokenizer files in --model)")
    parser.add_argument("--tokenizer-model", default=None,
                        help="tokenizer file or directory, URL or hub id org/name@revision (default: --model)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                        help="weights dtype (default: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--no-cuda-graph", action="store_true", help="decode without CUDA graphs")
    parser.add_argument("--output", default=None, help="also write the samples to this JSON file (atomic)")
    return parser


def resolve_device_dtype(device: str | None, dtype: str | None) -> tuple[torch.device, torch.dtype]:
    """The device and weights dtype the CLIs use: CUDA + bf16 when there is a GPU, else CPU + fp32. A ``device``
    that is no torch device, or a CUDA one this machine does not have, is refused before the model is loaded."""
    try:
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as exc:
        raise UserError(f"--device {device}: not a torch device (cpu, cuda, cuda:N, ...)") from exc
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPUs; pass another "
                        f"--device, or none (cuda if available, else cpu)")
    name = dtype or ("bfloat16" if dev.type == "cuda" else "float32")
    return dev, getattr(torch, name)


def load_model(model_dir: str, device: torch.device, dtype: torch.dtype):
    """``MambaLM.from_pretrained(model_dir)`` in eval mode; a directory that is not there is named as
    the ``--model`` it is, before anything else (the tokenizer defaults to its files) is looked for, and so
    is a training run or checkpoint, with the conversion that makes a model directory of it.
    ``model_dir`` may be a hub id ``org/name@revision`` (fetched: :func:`model_path`)."""
    from kotomamba.model import MambaLM
    from kotomamba.model.pretrained import CONFIG_NAME
    from kotomamba.train.run_dir import resolve_checkpoint

    model_dir = model_path(model_dir)
    if not Path(model_dir).is_dir():
        raise UserError(f"--model {model_dir}: no such model directory")
    checkpoint = None if (Path(model_dir) / CONFIG_NAME).is_file() else resolve_checkpoint(model_dir)
    if checkpoint is not None:
        raise UserError(f"--model {model_dir}: a training checkpoint ({checkpoint}), not a model directory: "
                        f"`kotomamba convert --checkpoint {model_dir} --to hf --output DIR` makes one of it "
                        "(with its tokenizer)")
    return MambaLM.from_pretrained(model_dir, device=device, dtype=dtype).eval()


_HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def model_path(spec: str) -> str:
    """The local directory of ``--model``: as given, or fetched when it names a hub repository or URLs."""
    from kotomamba.data.remote_inputs import local_input

    return local_input(spec, "model")


def load_tokenizer(model_dir: str, tokenizer_type: str | None, tokenizer_model: str | None, vocab_size: int):
    """``kotomamba.data`` tokenizer: the given type/model (local or remote), else the HF tokenizer files of
    ``model_dir`` (fetched with the model when it is remote); one of more ids than the model's ``vocab_size``
    is refused."""
    from kotomamba.data.remote_inputs import local_input
    from kotomamba.data.tokenizer import build_tokenizer, check_fits

    model_dir = model_path(model_dir)
    if tokenizer_model is not None:
        tokenizer_model = local_input(tokenizer_model, "tokenizer")

    if tokenizer_model is None and not any((Path(model_dir) / name).is_file() for name in _HF_TOKENIZER_FILES):
        raise UserError(f"--model {model_dir}: no tokenizer files ({', '.join(_HF_TOKENIZER_FILES)}); pass "
                        f"--tokenizer-type and --tokenizer-model")
    tokenizer = build_tokenizer(tokenizer_type or "HuggingFaceTokenizer", tokenizer_model or model_dir)
    given = f"--tokenizer-model {tokenizer_model}" if tokenizer_model is not None else f"{model_dir}'s tokenizer files"
    check_fits(tokenizer, vocab_size, given, f"--model {model_dir}")
    return tokenizer


def sample_texts(model, tokenizer, prompts: list[str], max_new_tokens: int, sampling: SamplingConfig,
                 seed: int, samples_per_prompt: int = 1, stop_at_eos: bool = True,
                 cuda_graph: bool | None = None) -> list[dict]:
    """Generate ``samples_per_prompt`` continuations of every prompt (one batch per prompt).

    Returns ``[{"prompt", "completion", "text", "tokens"}]`` in prompt order; ``completion`` excludes
    the prompt and stops before the EOS token; ``text`` is prompt + completion.
    """
    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    results = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt)
        if not ids:
            raise UserError(f"prompt {prompt!r} encodes to no tokens; give a non-empty prompt")
        batch = torch.tensor([ids] * samples_per_prompt, dtype=torch.long, device=device)
        out = generate(model, batch, max_new_tokens, sampling.temperature, sampling.top_k, sampling.top_p,
                       sampling.repetition_penalty, tokenizer.eod if stop_at_eos else None, generator,
                       cuda_graph=cuda_graph)
        # Decoded on its own, a completion would lose the space its first piece carries (SentencePiece
        # drops a leading "▁" at the start of a text): decode prompt + completion, cut the prompt off.
        prompt_text = tokenizer.decode(ids)
        for row in out[:, len(ids):].tolist():
            if stop_at_eos and tokenizer.eod in row:
                row = row[:row.index(tokenizer.eod)]
            full = tokenizer.decode(ids + row)
            completion = full[len(prompt_text):] if full.startswith(prompt_text) else tokenizer.decode(row)
            results.append({"prompt": prompt, "completion": completion, "text": prompt + completion,
                            "tokens": len(row)})
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        sampling = SamplingConfig(args.temperature, args.top_k, args.top_p, args.repetition_penalty)
        if args.batch < 1 or args.max_new_tokens < 0:
            raise UserError("--batch must be >= 1 and --max-new-tokens >= 0")
        if args.output:
            check_output(args.output, "--output")  # before the model is loaded and the samples are drawn
        device, dtype = resolve_device_dtype(args.device, args.dtype)
        model = load_model(args.model, device, dtype)
        tokenizer = load_tokenizer(args.model, args.tokenizer_type, args.tokenizer_model, model.config.vocab_size)
        samples = sample_texts(model, tokenizer, args.prompt, args.max_new_tokens, sampling, args.seed,
                               args.batch, not args.no_stop_at_eos, cuda_graph=False if args.no_cuda_graph else None)
    except UserError as exc:
        return report("generate", exc)
    for sample in samples:
        print(f"=== {sample['prompt']!r}\n{sample['text']}\n")
    if args.output:
        write_json(args.output, {"model": args.model, "sampling": dataclasses.asdict(sampling), "seed": args.seed,
                                 "max_new_tokens": args.max_new_tokens, "samples": samples})
    return 0
