"""ApplyPolicy: keep or not, why, and with what loss weight.

Thresholds are absolute or quantiles; quantiles come from the graph's one ``ScoreQuantiles`` over
all scored rows (never guessed). Weights are normalised to mean 1 over kept rows; rows not kept
weigh 0.
"""

from __future__ import annotations

import math

import apache_beam as beam

from pipeline.config import CurateConfig
from pipeline.quantiles import quantile

_DRIFT_FLOOR = 1e-3  # keeps drift weights finite for facts the model already says


def resolve_thresholds(config: CurateConfig, quantiles: dict[str, list[float]]) -> dict[str, float | None]:
    """Absolute thresholds for this run, quantile settings resolved on the data."""
    drift_points, interference_points = quantiles.get("drift", []), quantiles.get("interference", [])
    max_drift = config.max_drift
    if config.max_drift_quantile is not None:
        max_drift = quantile(drift_points, config.max_drift_quantile)
    max_interference = config.max_interference
    if config.max_interference_quantile is not None:
        max_interference = quantile(interference_points, config.max_interference_quantile)
    return {"max_drift": max_drift, "max_interference": max_interference,
            "median_drift": quantile(drift_points, 0.5)}


def decide(fact: dict, config: CurateConfig, thresholds: dict[str, float | None]) -> str:
    """The reason a fact is kept or not; the first that applies wins."""
    if fact.get("duplicate_of"):
        return "duplicate"
    if fact["conflicts_with"] and (
            config.conflicts == "drop_all"
            or (config.conflicts == "keep_first" and fact["conflict_with_earlier"])):
        return "conflict"
    if thresholds["max_drift"] is not None and fact["drift"] > thresholds["max_drift"]:
        return "high_drift"
    if thresholds["max_interference"] is not None and fact["interference"] > thresholds["max_interference"]:
        return "high_interference"
    return "kept"


def raw_weight(drift: float, config: CurateConfig, median_drift: float | None) -> float:
    """Un-normalised loss weight of a kept fact: (drift / median)^(+-strength), clipped."""
    if config.weighting == "none" or config.weight_strength == 0.0:
        return 1.0
    ratio = max(drift, _DRIFT_FLOOR) / max(median_drift or 0.0, _DRIFT_FLOOR)
    exponent = config.weight_strength if config.weighting == "drift" else -config.weight_strength
    lo, hi = config.weight_clip
    return float(min(hi, max(lo, math.pow(ratio, exponent))))


def _decided(fact: dict, config: CurateConfig, thresholds: dict) -> dict:
    reason = decide(fact, config, thresholds)
    keep = reason == "kept"
    return {**fact, "reason": reason, "keep": keep,
            "raw_weight": raw_weight(fact["drift"], config, thresholds["median_drift"]) if keep else 0.0}


def _normalised(fact: dict, mean_raw: float) -> dict:
    out = {k: v for k, v in fact.items() if k != "raw_weight"}
    out["weight"] = fact["raw_weight"] / mean_raw if fact["keep"] and mean_raw > 0 else 0.0
    return out


class ApplyPolicy(beam.PTransform):
    """``{facts: (key, scored fact), quantiles: (score, points)}`` -> ``scored``: (key, fact + keep,
    reason, weight); ``thresholds``: one dict."""

    def __init__(self, config: CurateConfig):
        super().__init__()
        self._config = config

    def expand(self, inputs):
        config, facts = self._config, inputs["facts"]
        thresholds = (
            facts.pipeline
            | "ThresholdsTrigger" >> beam.Create([None])
            | "ResolveThresholds" >> beam.Map(
                lambda _, q: resolve_thresholds(config, q), beam.pvalue.AsDict(inputs["quantiles"])))
        decided = facts | "Decide" >> beam.Map(
            lambda kv, t: (kv[0], _decided(kv[1], config, t)), beam.pvalue.AsSingleton(thresholds))
        mean_raw = (decided
                    | "KeptRawWeights" >> beam.FlatMapTuple(lambda _, f: [f["raw_weight"]] if f["keep"] else [])
                    | "MeanRawWeight" >> beam.combiners.Mean.Globally())
        scored = decided | "NormaliseWeights" >> beam.Map(
            lambda kv, m: (kv[0], _normalised(kv[1], m)),
            beam.pvalue.AsSingleton(mean_raw, default_value=0.0))
        return {"scored": scored, "thresholds": thresholds}
