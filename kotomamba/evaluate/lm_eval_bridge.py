"""lm-evaluation-harness bridge: our ``MambaLM`` + tokenizer as an ``lm_eval`` model.

``KotomambaLM`` subclasses ``lm_eval.api.model.TemplateLM`` (an ``LM`` whose ``loglikelihood``
splits context/continuation the harness's way: trailing context spaces move to the continuation,
an empty context is replaced by the end-of-text token). Scoring is one forward pass per batch of
right-padded sequences (a causal model never sees the padding); ``generate_until`` decodes with
the recurrent cache (``kotomamba.model.generation.generate``). Tasks run through
``lm_eval.simple_evaluate``, with local task YAMLs from ``include_path``.

Needs the ``lmeval`` extra: ``pip install 'kotomamba[lmeval]'``.
"""
from __future__ import annotations

from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from kotomamba.model.generation import generate


class KotomambaLM(TemplateLM):
    """``model``: a ``MambaLM`` (eval mode, on its device); ``tokenizer``: a ``kotomamba.data`` tokenizer."""

    def __init__(self, model, tokenizer, batch_size: int = 8, max_length: int = 2048):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self._max_length = max_length
        self._device = next(model.parameters()).device
        self._vocab = model.config.vocab_size

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eod

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def device(self):
        return self._device

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    @torch.inference_mode()
    def _score(self, rows: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """Each row ``(inputs, targets)``: the last ``len(targets)`` input positions predict ``targets``.

        Returns ``(sum of log-probabilities, whether every target is the argmax)`` per row.
        """
        results = []
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start:start + self.batch_size]
            width = max(len(inputs) for inputs, _ in batch)
            ids = torch.full((len(batch), width), self.eot_token_id, dtype=torch.long)
            for i, (inputs, _) in enumerate(batch):
                ids[i, :len(inputs)] = torch.tensor(inputs, dtype=torch.long)
            logprobs = torch.log_softmax(self.model(ids.to(self._device))[..., :self._vocab].float(), dim=-1)
            for i, (inputs, targets) in enumerate(batch):
                end = len(inputs)
                row = logprobs[i, end - len(targets):end]
                target = torch.tensor(targets, dtype=torch.long, device=row.device)
                picked = row.gather(1, target[:, None]).squeeze(1)
                results.append((float(picked.double().sum()), bool((row.argmax(-1) == target).all())))
        return results

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        rows = []
        for _, context, continuation in requests:
            whole = (context + continuation)[-(self.max_length + 1):]
            rows.append((whole[:-1], continuation))
        results = self._score(rows)
        for (key, _, _), result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        totals = []
        for request in requests:
            (text,) = request.args
            windows = [make_disjoint_window(window) for window in get_rolling_token_windows(
                self.tok_encode(text), self.prefix_token_id, self.max_length, context_len=1)]
            rows = [((context + predicted)[:-1], predicted) for context, predicted in windows]
            total = sum(logprob for logprob, _ in self._score(rows))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            totals.append(total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        outputs = []
        for request in requests:
            context, gen_kwargs = request.args
            kwargs: dict[str, Any] = dict(gen_kwargs)
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", 256))
            do_sample = bool(kwargs.pop("do_sample", False))
            temperature = float(kwargs.pop("temperature", 1.0)) if do_sample else 0.0
            context_ids = self.tok_encode(context)[-max(1, self.max_length - max_new):] or [self.prefix_token_id]
            prompt = torch.tensor([context_ids], dtype=torch.long, device=self._device)
            out = generate(self.model, prompt, max_new, temperature=temperature,
                           top_p=float(kwargs.pop("top_p", 1.0)) if do_sample else 1.0,
                           top_k=int(kwargs.pop("top_k", 0)) if do_sample else 0, eos_id=self.eot_token_id)
            new = out[0, len(context_ids):].tolist()
            if self.eot_token_id in new:
                new = new[:new.index(self.eot_token_id)]
            text = self.tok_decode(new)
            for stop in until:
                if stop and stop in text:
                    text = text[:text.index(stop)]
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            outputs.append(text)
        return outputs


def run_tasks(model, tokenizer, tasks: list[str], include_path: str | None = None, batch_size: int = 8,
              max_length: int = 2048, limit: int | None = None, num_fewshot: int | None = None,
              seed: int = 1234) -> dict[str, dict[str, float]]:
    """Evaluate ``tasks`` with lm-eval; returns ``{task: {metric: value}}`` (numbers only, e.g. ``acc``,
    ``acc_stderr``; lm-eval's ``,none`` filter suffix removed)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    results = simple_evaluate(model=KotomambaLM(model, tokenizer, batch_size, max_length), tasks=tasks,
                              task_manager=manager, limit=limit, num_fewshot=num_fewshot, log_samples=False,
                              random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                              fewshot_random_seed=seed)
    scores: dict[str, dict[str, float]] = {}
    for task, metrics in results["results"].items():
        scores[task] = {name.split(",")[0]: float(value) for name, value in metrics.items()
                        if isinstance(value, (int, float)) and not isinstance(value, bool)}
    return scores
