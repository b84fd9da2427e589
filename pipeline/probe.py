"""ProbeModel: what the base LM says today, and how far that is from each target.

One ``ModelHandler`` for ``RunInference``: the LM loads once per worker, facts arrive in batches.
Per fact it returns the greedy answer (left-padded batched generation), the teacher-forced mean
log-probability of the target, the rank of the target's first token, and two drift variants measured
in the LM's own input-embedding space (see ``schemas.scored.ScoredFact``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from pipeline.inference import METRICS_NS, KeyedInference
from pipeline.models import resolve_lm

log = logging.getLogger(__name__)


class Progress:
    """Logs how many facts a stage has done and how fast, at most every ``every`` seconds."""

    def __init__(self, stage: str, every: float = 10.0):
        self._stage, self._every = stage, every
        self._done, self._started, self._last = 0, 0.0, 0.0

    def add(self, n: int) -> None:
        now = time.perf_counter()
        if not self._started:
            self._started = self._last = now
        self._done += n
        if now - self._last >= self._every:
            self._last = now
            rate = self._done / max(now - self._started, 1e-9)
            log.info("%s: %d facts done (%.1f facts/s)", self._stage, self._done, rate)


def target_text(prompt: str, target: str) -> str:
    """The target as it continues the prompt: with one leading space (" Sega" != "Sega")."""
    return target if prompt.endswith((" ", "\n")) else " " + target


def clean_answer(text: str) -> str:
    """The first line of a generated continuation, stripped."""
    return text.strip().split("\n", 1)[0].strip()


_EDGE_PUNCT = ".,;:!?\"'()[]"


def answer_head(prediction: str, target: str) -> str:
    """The words of the answer that stand in the target's slot: as many as the target has.

    The base model rambles ("French. She is a Canadian artist who"); answer-based drift compares
    what it says *in place of the target* ("French") with the target, not a phrase with a word.
    """
    words = [w.strip(_EDGE_PUNCT) for w in prediction.split()[:max(1, len(target.split()))]]
    return " ".join(w for w in words if w)


class LoadedLM:
    """The model and its tokenizer (a plain object: Beam's model sharing needs a weak reference)."""

    def __init__(self, model: Any, tokenizer: Any):
        self.model = model
        self.tokenizer = tokenizer


class LMProbeHandler(ModelHandler[dict, dict, LoadedLM]):
    """Loads a causal LM once per worker and probes batches of facts."""

    def __init__(self, model: str, *, batch_size: int = 16, max_new_tokens: int = 8,
                 chat_template: bool = False):
        super().__init__()
        self._model_spec = model
        self._batch_size = batch_size
        self._max_new_tokens = max_new_tokens
        self._chat_template = chat_template
        self._progress = Progress("probe")

    def load_model(self) -> LoadedLM:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = resolve_lm(self._model_spec)
        started = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model.eval()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        log.info("loaded LM %s in %.1fs", path, time.perf_counter() - started)
        return LoadedLM(model, tokenizer)

    def batch_elements_kwargs(self) -> dict[str, Any]:
        # Fixed batch sizes keep the scores reproducible: padding changes float rounding.
        return {"min_batch_size": self._batch_size, "max_batch_size": self._batch_size}

    def run_inference(self, batch: Sequence[dict], model: LoadedLM,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        lm, tokenizer = model.model, model.tokenizer
        prompts = [self._render(fact["prompt"], tokenizer) for fact in batch]
        targets = [fact["target"] for fact in batch]
        answers = greedy_answers(lm, tokenizer, prompts, self._max_new_tokens)
        scores = score_targets(lm, tokenizer, prompts, targets)
        drift_lm = lm_answer_drift(lm, tokenizer, prompts, answers, targets)
        self._progress.add(len(batch))
        for i, fact in enumerate(batch):
            yield PredictionResult(fact, {
                "prediction": answers[i],
                "target_logprob": float(scores["target_logprob"][i]),
                "target_rank": int(scores["target_rank"][i]),
                "drift_expected": float(scores["drift_expected"][i]),
                "drift_lm": float(drift_lm[i]),
            })

    def _render(self, prompt: str, tokenizer: Any) -> str:
        if not self._chat_template:
            return prompt
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)

    def get_metrics_namespace(self) -> str:
        return METRICS_NS


def greedy_answers(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Batched greedy continuations; left padding so every prompt ends where generation starts."""
    import torch

    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    new_tokens = out[:, enc["input_ids"].shape[1]:]
    return [clean_answer(t) for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def _encode_pairs(tokenizer: Any, prompts: list[str], targets: list[str]) -> tuple[list[list[int]], list[int]]:
    """Token ids of prompt + target, and where the target starts; target tokenised on its own."""
    ids, starts = [], []
    for prompt, target in zip(prompts, targets):
        p = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        t = tokenizer(target_text(prompt, target), add_special_tokens=False)["input_ids"]
        ids.append(p + t)
        starts.append(len(p))
    return ids, starts


def score_targets(model: Any, tokenizer: Any, prompts: list[str], targets: list[str]) -> dict[str, np.ndarray]:
    """One teacher-forced pass: target log-prob, first-token rank, expected-embedding drift.

    ``drift_expected`` = 1 - cos(sum_v p(v | prompt) E[v], E[t1]), E the LM's input embeddings and
    t1 the target's first token: no decoding, so junk greedy answers cannot blur it.
    """
    import torch

    ids, starts = _encode_pairs(tokenizer, prompts, targets)
    width = max(len(x) for x in ids)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    attention = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):  # right padding: positions stay 0..len-1 for every row
        input_ids[i, :len(row)] = torch.tensor(row)
        attention[i, :len(row)] = 1
    emb = model.get_input_embeddings().weight
    logprob = np.zeros(len(ids))
    rank = np.zeros(len(ids), dtype=np.int64)
    drift = np.zeros(len(ids))
    with torch.inference_mode():
        logits = model(input_ids=input_ids, attention_mask=attention).logits.float()
        for i, (row, start) in enumerate(zip(ids, starts)):
            target_ids = torch.tensor(row[start:])
            step_logits = logits[i, start - 1:len(row) - 1]  # logits predicting each target token
            logp = torch.log_softmax(step_logits, dim=-1)
            logprob[i] = logp.gather(1, target_ids[:, None]).mean().item()
            first = step_logits[0]
            rank[i] = int((first > first[target_ids[0]]).sum().item()) + 1
            expected = torch.softmax(first, dim=-1) @ emb
            drift[i] = 1.0 - torch.cosine_similarity(expected, emb[target_ids[0]], dim=0).item()
    return {"target_logprob": logprob, "target_rank": rank, "drift_expected": np.clip(drift, 0.0, 2.0)}


def lm_answer_drift(model: Any, tokenizer: Any, prompts: list[str], answers: list[str],
                    targets: list[str]) -> np.ndarray:
    """1 - cos of mean input-token embeddings of answer and target; 1.0 for an empty answer."""
    import torch

    emb = model.get_input_embeddings().weight
    out = np.ones(len(answers))
    with torch.inference_mode():
        for i, (prompt, answer, target) in enumerate(zip(prompts, answers, targets)):
            answer = answer_head(answer, target)
            if not answer:
                continue
            a = tokenizer(target_text(prompt, answer), add_special_tokens=False)["input_ids"]
            t = tokenizer(target_text(prompt, target), add_special_tokens=False)["input_ids"]
            va, vt = emb[a].mean(0), emb[t].mean(0)
            out[i] = 1.0 - torch.cosine_similarity(va, vt, dim=0).item()
    return np.clip(out, 0.0, 2.0)


class ProbeModel(beam.PTransform):
    """(key, fact) -> ``ok``: (key, fact + prediction, target_logprob, target_rank, drift_lm,
    drift_expected); ``failed``: (key, fact, error) for facts of a batch that raised."""

    def __init__(self, model: str, *, batch_size: int, max_new_tokens: int, chat_template: bool):
        super().__init__()
        self._handler = LMProbeHandler(model, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                       chat_template=chat_template)

    def expand(self, facts):
        return facts | "Probe" >> KeyedInference(self._handler)
