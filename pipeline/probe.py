"""ProbeModel: what the base LM says today, and how far that is from each target.

One ``ModelHandler`` for ``RunInference``: the LM loads once per worker, facts arrive in batches.
Per fact it returns the greedy answer (left-padded batched decoding), the teacher-forced mean
log-probability of the target, the rank of the target's first token, and three drift variants from the
LM itself: ``drift_lm`` and ``drift_expected`` in its input-embedding space, ``drift_rank`` from its
ranking (see ``scoring.drift``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from pipeline import METRICS_NS
from pipeline.inference import KeyedInference, Progress
from scoring.drift import clean_answer, lm_answer_drift
from scoring.lm_scores import decode_answer, probe

log = logging.getLogger(__name__)


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
        from scoring.models import load_lm

        started = time.perf_counter()
        # CPU, as the scores have always been computed: the same dataset scores on every machine.
        model, tokenizer, path = load_lm(self._model_spec, device="cpu")
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
        drift_lm = lm_answer_drift(lm, tokenizer, answers, targets)
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


class ProbeModel(beam.PTransform):
    """(key, fact) -> ``ok``: (key, fact + prediction, target_logprob, target_rank, drift_lm,
    drift_expected, drift_rank); ``failed``: (key, fact, error) for facts of a batch that raised."""

    def __init__(self, model: str, *, batch_size: int, max_new_tokens: int, chat_template: bool):
        super().__init__()
        self._handler = LMProbeHandler(model, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                       chat_template=chat_template)

    def expand(self, facts):
        return facts | "Probe" >> KeyedInference(self._handler)
