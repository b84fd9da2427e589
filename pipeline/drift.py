"""ScoreDrift: how far what the model says today is from the target, in four definitions.

- ``sentence``: 1 - cos(E(answer), E(target)), E the sentence encoder, answer the words of the
  greedy answer in the target's slot (``pipeline.probe.answer_head``).
- ``lm``: the same on the LM's mean input-token embeddings (computed in ProbeModel).
- ``expected``: 1 - cos(sum_v p(v|prompt) E[v], E[target's first token]) in the LM's embedding
  space (computed in ProbeModel): smooth, and blind to junk greedy answers.
- ``rank``: log(rank of the target's first token) / log(vocabulary size) (computed in ProbeModel):
  how far down the model's own list the target starts.

All four are written; ``drift`` holds the configured default.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np

DRIFT_COLUMNS = {"sentence": "drift_sentence", "lm": "drift_lm", "expected": "drift_expected",
                 "rank": "drift_rank"}


def cosine_drift(a: np.ndarray, b: np.ndarray) -> float:
    """1 - cos(a, b) for L2-normalised vectors, clipped to [0, 2] against rounding."""
    return float(np.clip(1.0 - float(np.dot(a, b)), 0.0, 2.0))


def sentence_drift(fact: dict) -> float:
    """Sentence-space drift of one embedded fact; an empty answer is as far as it gets (1.0)."""
    if fact["answer_empty"]:
        return 1.0
    return cosine_drift(fact["emb_answer"], fact["emb_target"])


def with_drift(fact: dict, definition: str) -> dict:
    """The fact with ``drift_sentence`` and the default ``drift`` filled in."""
    out = {**fact, "drift_sentence": sentence_drift(fact)}
    out["drift"] = out[DRIFT_COLUMNS[definition]]
    return out


class ScoreDrift(beam.PTransform):
    """(key, embedded fact) -> (key, fact + drift_sentence + drift)."""

    def __init__(self, definition: str):
        super().__init__()
        if definition not in DRIFT_COLUMNS:
            raise ValueError(f"unknown drift definition {definition!r}; choose one of {sorted(DRIFT_COLUMNS)}")
        self._definition = definition

    def expand(self, facts):
        definition = self._definition
        return facts | "Drift" >> beam.MapTuple(lambda key, fact: (key, with_drift(fact, definition)))
