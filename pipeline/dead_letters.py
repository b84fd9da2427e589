"""Dead letters after reading: a fact that failed a later stage becomes a ``Rejected`` row, not a drop."""

from __future__ import annotations

import json

import apache_beam as beam

from schemas.rejected import truncate_raw


def dead_letter(fact: dict, stage: str, error: str) -> dict:
    """A fact that failed after reading, as a dead letter (internal fields left out of ``raw``)."""
    # source and position are columns of their own; the raw record need not repeat the input's path.
    shown = {k: v for k, v in fact.items() if not k.startswith("emb_") and k not in ("order", "source", "position")}
    return {"source": fact["source"], "position": int(fact["position"]), "stage": stage,
            "raw": truncate_raw(json.dumps(shown, default=str)), "error": error}


class DeadLetters(beam.PTransform):
    """(key, fact, error) from a failed stage -> dead letters of that ``stage``."""

    def __init__(self, stage: str):
        super().__init__()
        self._stage = stage

    def expand(self, failed):
        stage = self._stage
        return failed | "DeadLetter" >> beam.MapTuple(lambda key, fact, error: dead_letter(fact, stage, error))
