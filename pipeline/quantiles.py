"""ScoreQuantiles: the distribution of each score, computed once in the graph.

The policy resolves its quantile thresholds from these points and the manifest summarises them at
``schemas.manifest.QUANTILES``; the service's stats read the manifest's. (The evaluation's drift
quartiles are of the facts it evaluates, a different population, and stay its own.) Beam's ApproximateQuantiles is exact at small sizes and bounded in memory at large ones.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.transforms.stats import ApproximateQuantiles

from schemas.manifest import QUANTILES, quantile_label

QUANTILE_STEPS = 1000  # points at every 0.1%


def quantile(points: list[float], q: float) -> float | None:
    """The q-quantile from ``QUANTILE_STEPS + 1`` evenly spaced quantile points (None if empty)."""
    if not points:
        return None
    return float(points[min(len(points) - 1, round(q * (len(points) - 1)))])


def summary(points: list[float]) -> dict[str, float]:
    """The points at ``QUANTILES``, keyed ``q0.5`` and so on (what the manifest records)."""
    return {quantile_label(q): quantile(points, q) for q in QUANTILES} if points else {}


class ScoreQuantiles(beam.PTransform):
    """(key, fact) -> (score name, its ``QUANTILE_STEPS + 1`` quantile points), one per ``columns``."""

    def __init__(self, columns: tuple[str, ...]):
        super().__init__()
        self._columns = columns

    def expand(self, facts):
        per_column = []
        for name in self._columns:
            per_column.append(
                facts
                | f"Values_{name}" >> beam.MapTuple(lambda _, f, n=name: float(f[n]))
                | f"Quantiles_{name}" >> ApproximateQuantiles.Globally(QUANTILE_STEPS + 1)
                | f"Name_{name}" >> beam.Map(lambda points, n=name: (n, [float(p) for p in points])))
        return per_column | "AllQuantiles" >> beam.Flatten()
