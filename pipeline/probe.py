"""ProbeModel: what the base LM says today, and how far that is from each target.

One ``ModelHandler`` for ``RunInference``: the LM loads once per worker, facts arrive in batches.
Per fact it returns the greedy answer (left-padded batched decoding), the teacher-forced mean
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
from trainer.lm_scores import decode_answer, mean_embedding_distance, probe

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
        prompts = [fact["prompt"] for fact in batch]
        targets = [fact["target"] for fact in batch]
        chat, n = self._chat_template, len(batch)
        # The same scoring code the trainer's evaluation uses: "drift after" means what "drift" meant.
        # One prefill per prompt serves both the greedy answer and the teacher-forced target scores.
        scores = probe(lm, tokenizer, prompts, targets, self._max_new_tokens, n, chat_template=chat)
        answers = [clean_answer(decode_answer(tokenizer, ids)) for ids in scores["answers"]]
        drift_lm = lm_answer_drift(lm, tokenizer, prompts, answers, targets)
        self._progress.add(len(batch))
        for i, fact in enumerate(batch):
            yield PredictionResult(fact, {
                "prediction": answers[i],
                "target_logprob": float(scores["target_logprob"][i]),
                "target_rank": int(scores["target_rank"][i]),
                "drift_expected": float(scores["drift_expected"][i]),
                "drift_rank": float(scores["drift_rank"][i]),
                "drift_lm": float(drift_lm[i]),
            })

    def get_metrics_namespace(self) -> str:
        return METRICS_NS


def lm_answer_drift(model: Any, tokenizer: Any, prompts: list[str], answers: list[str],
                    targets: list[str]) -> np.ndarray:
    """1 - cos of the LM's mean input-token embeddings of the answer (in the target's slot) and target."""
    heads = [answer_head(answer, target) for answer, target in zip(answers, targets)]
    return mean_embedding_distance(model, tokenizer, heads, targets)


class ProbeModel(beam.PTransform):
    """(key, fact) -> ``ok``: (key, fact + prediction, target_logprob, target_rank, drift_lm,
    drift_expected, drift_rank); ``failed``: (key, fact, error) for facts of a batch that raised."""

    def __init__(self, model: str, *, batch_size: int, max_new_tokens: int, chat_template: bool):
        super().__init__()
        self._handler = LMProbeHandler(model, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                       chat_template=chat_template)

    def expand(self, facts):
        return facts | "Probe" >> KeyedInference(self._handler)
