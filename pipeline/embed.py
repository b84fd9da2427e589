"""EmbedTexts: sentence embeddings of each fact's prompt, target and answer, through RunInference."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from pipeline import METRICS_NS
from pipeline.inference import KeyedInference, Progress
from scoring.drift import answer_head, encode_sentences

log = logging.getLogger(__name__)


def texts_of(fact: dict) -> tuple[str, str, str]:
    """What is embedded per fact: the prompt, the target, and the answer in the target's slot."""
    return fact["prompt"], fact["target"], answer_head(fact.get("prediction", ""), fact["target"])


class SentenceEncoderHandler(ModelHandler[dict, dict, Any]):
    """A sentence-transformers model, loaded once per worker; one encode call per batch of facts."""

    def __init__(self, model: str, *, batch_size: int = 64):
        super().__init__()
        self._model_spec = model
        self._batch_size = batch_size
        self._progress = Progress("embed")

    def load_model(self) -> Any:
        from scoring.models import load_encoder

        return load_encoder(self._model_spec)

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"min_batch_size": self._batch_size, "max_batch_size": self._batch_size}

    def run_inference(self, batch: Sequence[dict], model: Any,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        rows = [texts_of(fact) for fact in batch]
        # Targets repeat across facts (shared answers): encode each distinct text once.
        unique = sorted({t for row in rows for t in row})
        vectors = encode_sentences(model, unique, self._batch_size)
        index = {text: vectors[i] for i, text in enumerate(unique)}
        self._progress.add(len(batch))
        for fact, (prompt, target, answer) in zip(batch, rows):
            yield PredictionResult(fact, {
                "emb_prompt": index[prompt], "emb_target": index[target], "emb_answer": index[answer],
                "answer_empty": not answer})

    def get_metrics_namespace(self) -> str:
        return METRICS_NS


class EmbedTexts(beam.PTransform):
    """(key, fact) -> ``ok``: (key, fact + emb_prompt, emb_target, emb_answer, L2-normalised
    float32); ``failed``: (key, fact, error) for facts of a batch that raised."""

    def __init__(self, encoder: str, *, batch_size: int):
        super().__init__()
        self._handler = SentenceEncoderHandler(encoder, batch_size=batch_size)

    def expand(self, facts):
        return facts | "Embed" >> KeyedInference(self._handler)
