"""ScoreDrift: fills ``drift_sentence`` and the chosen ``drift`` (the definitions: ``scoring.drift``).

ProbeModel has already written ``drift_lm``, ``drift_expected`` and ``drift_rank``; sentence drift
needs the sentence embeddings EmbedTexts adds. All four are written; ``drift`` copies the configured
one and ``drift_definition`` names it.
"""

from __future__ import annotations

import apache_beam as beam

from schemas.scoring_spec import DRIFT_COLUMNS, DRIFT_DEFINITIONS
from scoring.drift import sentence_drift


def with_drift(fact: dict, definition: str) -> dict:
    """The fact with ``drift_sentence``, the default ``drift`` and its ``drift_definition`` filled in."""
    sentence = float(sentence_drift(fact["emb_answer"], fact["emb_target"], [fact["answer_empty"]])[0])
    out = {**fact, "drift_sentence": sentence, "drift_definition": definition}
    out["drift"] = out[DRIFT_COLUMNS[definition]]
    return out


class ScoreDrift(beam.PTransform):
    """(key, embedded fact) -> (key, fact + drift_sentence + drift + drift_definition)."""

    def __init__(self, definition: str):
        super().__init__()
        if definition not in DRIFT_COLUMNS:
            raise ValueError(f"unknown drift definition {definition!r}; choose one of "
                             f"{', '.join(DRIFT_DEFINITIONS)}")
        self._definition = definition

    def expand(self, facts):
        definition = self._definition
        return facts | "Drift" >> beam.MapTuple(lambda key, fact: (key, with_drift(fact, definition)))
