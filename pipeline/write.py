"""WriteScored: scored and rejected rows to Parquet with the explicit schemas, and the run's stats.

Everything is written under a staging folder; ``pipeline.run`` moves it into place only after the
pipeline succeeded, so readers never see a half-written dataset.
"""

from __future__ import annotations

import json

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import WriteToParquet
from apache_beam.transforms.stats import ApproximateQuantiles

from schemas import REJECTED_SCHEMA, SCORED_SCHEMA

SCORE_COLUMNS = ("drift", "drift_sentence", "drift_lm", "drift_expected", "drift_rank", "target_logprob",
                 "target_rank", "interference", "neighbors", "shared_target", "weight")
STATS_FILE = "_stats.json"
_QUANTILE_POINTS = 21  # every 5%
_SCORED_NAMES = SCORED_SCHEMA.names
_REJECTED_NAMES = REJECTED_SCHEMA.names


def to_scored_row(fact: dict) -> dict:
    """Exactly the ScoredFact columns: internal fields (embeddings, keys) are dropped here."""
    return {name: fact.get(name) for name in _SCORED_NAMES}


def to_rejected_row(rejected: dict) -> dict:
    return {name: rejected[name] for name in _REJECTED_NAMES}


def quantile_labels(n: int = _QUANTILE_POINTS) -> list[str]:
    return [f"q{i / (n - 1):g}" for i in range(n)]


def _write_stats(path: str, reasons: list, stages: list, quantiles: list, thresholds: list) -> None:
    labels = quantile_labels()
    stats = {
        "by_reason": dict(reasons),
        "rejected_by_stage": dict(stages),
        "quantiles": {name: dict(zip(labels, map(float, points))) for name, points in quantiles if points},
        "thresholds": {k: v for t in thresholds for k, v in t.items() if v is not None},
    }
    with FileSystems.create(path) as f:
        f.write(json.dumps(stats, sort_keys=True).encode())


class WriteScored(beam.PTransform):
    """Writes ``<staging>/scored/*.parquet``, ``<staging>/rejected/*.parquet`` and ``_stats.json``."""

    def __init__(self, staging: str):
        super().__init__()
        self._staging = staging.rstrip("/")

    def expand(self, inputs):
        scored, rejected, thresholds = inputs["scored"], inputs["rejected"], inputs["thresholds"]
        rows = scored | "ScoredRows" >> beam.MapTuple(lambda _, fact: to_scored_row(fact))
        rows | "WriteScoredParquet" >> WriteToParquet(
            f"{self._staging}/scored/part", SCORED_SCHEMA, file_name_suffix=".parquet")
        (rejected | "RejectedRows" >> beam.Map(to_rejected_row)
         | "WriteRejectedParquet" >> WriteToParquet(
             f"{self._staging}/rejected/part", REJECTED_SCHEMA, file_name_suffix=".parquet"))

        reasons = (rows | "Reason" >> beam.Map(lambda r: r["reason"])
                   | "CountReasons" >> beam.combiners.Count.PerElement())
        stages = (rejected | "Stage" >> beam.Map(lambda r: r["stage"])
                  | "CountStages" >> beam.combiners.Count.PerElement())
        per_column = []
        for name in SCORE_COLUMNS:
            per_column.append(
                rows
                | f"Values_{name}" >> beam.Map(lambda r, n=name: float(r[n]))
                | f"Quantiles_{name}" >> ApproximateQuantiles.Globally(_QUANTILE_POINTS)
                | f"Name_{name}" >> beam.Map(lambda pts, n=name: (n, pts)))
        quantiles = per_column | "AllQuantiles" >> beam.Flatten()
        stats_path = f"{self._staging}/{STATS_FILE}"
        return (
            rows.pipeline
            | "StatsTrigger" >> beam.Create([stats_path])
            | "WriteStats" >> beam.Map(
                _write_stats,
                beam.pvalue.AsList(reasons), beam.pvalue.AsList(stages),
                beam.pvalue.AsList(quantiles), beam.pvalue.AsList(thresholds)))
