"""WriteScored: scored and rejected rows to Parquet with the explicit schemas.

Everything is written under a staging folder; ``pipeline.manifest.commit`` moves it into place only
after the pipeline succeeded, so readers never see a half-written dataset.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.io.parquetio import WriteToParquet

from schemas import REJECTED_SCHEMA, SCORED_SCHEMA
from schemas.fact import meta_entries

_SCORED_NAMES = SCORED_SCHEMA.names
_REJECTED_NAMES = REJECTED_SCHEMA.names


def to_scored_row(fact: dict) -> dict:
    """Exactly the ScoredFact columns: internal fields (embeddings, keys) are dropped here."""
    row = {name: fact.get(name) for name in _SCORED_NAMES}
    row["meta"] = meta_entries(row["meta"])
    return row


def to_rejected_row(rejected: dict) -> dict:
    return {name: rejected[name] for name in _REJECTED_NAMES}


class WriteScored(beam.PTransform):
    """``{scored: (key, fact), rejected: dead letters}`` -> ``<staging>/scored/*.parquet`` and
    ``<staging>/rejected/*.parquet``; returns the scored and rejected rows as written."""

    def __init__(self, staging: str):
        super().__init__()
        self._staging = staging.rstrip("/")

    def expand(self, inputs):
        rows = inputs["scored"] | "ScoredRows" >> beam.MapTuple(lambda _, fact: to_scored_row(fact))
        rows | "WriteScoredParquet" >> WriteToParquet(
            f"{self._staging}/scored/part", SCORED_SCHEMA, file_name_suffix=".parquet")
        rejected = inputs["rejected"] | "RejectedRows" >> beam.Map(to_rejected_row)
        rejected | "WriteRejectedParquet" >> WriteToParquet(
            f"{self._staging}/rejected/part", REJECTED_SCHEMA, file_name_suffix=".parquet")
        return {"scored": rows, "rejected": rejected}
