"""Per-fact evaluation rows and their aggregates: pure functions, no model.

``eval.parquet`` has one row per fact of the dataset (kept and filtered), joined to the scored
dataset on ``fact_id``; ``metrics.json`` aggregates it overall (the facts trained on), by drift
quartile and for kept vs. filtered facts.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

EVAL_FIELDS: list[pa.Field] = [
    pa.field("fact_id", pa.string(), nullable=False),
    pa.field("kept", pa.bool_(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("weight", pa.float64(), nullable=False),
    pa.field("drift", pa.float64(), nullable=False),  # the dataset's default drift, before training
    pa.field("drift_quartile", pa.int64(), nullable=False),  # 1 = nearest quarter of the dataset
    pa.field("target", pa.string(), nullable=False),
    pa.field("answer", pa.string(), nullable=False),  # greedy answer after training
    pa.field("answer_before", pa.string(), nullable=False),  # greedy answer of the base model
    pa.field("efficacy", pa.bool_(), nullable=False),  # answer starts with the target (normalised)
    pa.field("efficacy_before", pa.bool_(), nullable=False),
    pa.field("efficacy_prob", pa.bool_()),  # p(target) > p(ground_truth); null without ground_truth
    pa.field("target_logprob_before", pa.float64(), nullable=False),
    pa.field("target_logprob_after", pa.float64(), nullable=False),
    pa.field("ground_truth_logprob_after", pa.float64()),
    pa.field("target_rank_after", pa.int64(), nullable=False),
    pa.field("paraphrase_count", pa.int64(), nullable=False),
    pa.field("paraphrase", pa.float64()),  # fraction of paraphrases answered with the target
    pa.field("locality_count", pa.int64(), nullable=False),
    pa.field("locality", pa.float64()),  # token agreement with the base model, teacher forced
    # Fraction of locality prompts answered with the target now, and not before training.
    pa.field("locality_bleed", pa.float64()),
    pa.field("drift_definition", pa.string(), nullable=False),
    pa.field("drift_before", pa.float64(), nullable=False),  # that definition, base model, recomputed
    pa.field("drift_after", pa.float64(), nullable=False),
    pa.field("drift_expected_before", pa.float64(), nullable=False),
    pa.field("drift_expected_after", pa.float64(), nullable=False),
    pa.field("pushed_away", pa.bool_(), nullable=False),  # drift_after > drift_before + epsilon
    # From the training trace (R/trace.parquet); null for a fact never trained on, or without a trace.
    pa.field("trained_visits", pa.int64()),  # forward passes the fact was in
    pa.field("first_learned_step", pa.int64()),  # first step whose forward pass had it learned
    pa.field("times_forgotten", pa.int64()),  # learned on one visit, not on the next
    pa.field("pushed_away_in_training", pa.bool_()),  # distance rose above its first visit's + epsilon
]
EVAL_SCHEMA = pa.schema(EVAL_FIELDS)

# Aggregated per group: the mean over facts where the value is not null.
MEAN_COLUMNS = ("efficacy", "efficacy_before", "efficacy_prob", "paraphrase", "locality",
                "locality_bleed", "pushed_away", "drift_before", "drift_after", "target_logprob_before",
                "target_logprob_after")


def normalise(text: str) -> str:
    """Casefolded text without punctuation, symbols or spaces (for prefix matching)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(c for c in text if unicodedata.category(c)[0] not in "PZSC")


def starts_with_target(answer: str, target: str) -> bool:
    """Whether the normalised answer starts with the normalised target (an empty target never matches)."""
    t = normalise(target)
    return bool(t) and normalise(answer).startswith(t)


def drift_quartiles(drift: Sequence[float]) -> np.ndarray:
    """Quartile 1..4 of each value among all values (1 = smallest drift)."""
    d = np.asarray(drift, dtype=float)
    if d.size == 0:
        return np.zeros(0, dtype=np.int64)
    edges = np.quantile(d, [0.25, 0.5, 0.75])
    return (np.searchsorted(edges, d, side="left") + 1).astype(np.int64)


def aggregate(table: pa.Table) -> dict[str, Any]:
    """Means of the per-fact metrics over the rows of ``table``, with ``n``."""
    out: dict[str, Any] = {"n": table.num_rows}
    for name in MEAN_COLUMNS:
        values = [v for v in table.column(name).to_pylist() if v is not None and not _isnan(v)]
        out[name] = float(np.mean(values)) if values else None
    # Learned by training, not known before: the honest count for "which facts did it learn".
    eff = np.asarray(table.column("efficacy").to_pylist(), dtype=bool)
    before = np.asarray(table.column("efficacy_before").to_pylist(), dtype=bool)
    out["answer_target"] = int(eff.sum())
    out["learned"] = int((eff & ~before).sum())
    out["already_known"] = int((eff & before).sum())
    out["forgotten"] = int((~eff & before).sum())
    return out


def learned_sentence(group: dict[str, Any], facts: str = "trained facts") -> str:
    """What a group's counts say, once: "45 of 45 trained facts answer with the target (41 newly
    learned, 4 already known)", and how many known before no longer do, if any."""
    text = (f"{group['answer_target']} of {group['n']} {facts} answer with the target "
            f"({group['learned']} newly learned, {group['already_known']} already known)")
    if group["forgotten"]:
        text += f"; {group['forgotten']} that did before no longer do"
    return text


def training_summary(table: pa.Table) -> dict[str, Any] | None:
    """What the training trace says of these facts (None without a trace)."""
    visits = [v for v in table.column("trained_visits").to_pylist() if v is not None]
    if not visits:
        return None
    first = [s for s in table.column("first_learned_step").to_pylist() if s is not None]
    forgotten = [f for f in table.column("times_forgotten").to_pylist() if f is not None]
    pushed = [p for p in table.column("pushed_away_in_training").to_pylist() if p is not None]
    return {"traced": len(visits), "learned_in_training": len(first),
            "first_learned_step_median": float(np.median(first)) if first else None,
            "first_learned_step_max": max(first) if first else None,
            "forgotten_facts": sum(f > 0 for f in forgotten), "times_forgotten": sum(forgotten),
            "pushed_away_in_training": float(np.mean(pushed)) if pushed else None}


def build_metrics(table: pa.Table, *, drift_definition: str, pushed_away_epsilon: float,
                  run: dict[str, Any]) -> dict[str, Any]:
    """``metrics.json``: top level over the kept (trained) facts, then groups and drift quartiles."""
    kept = table.filter(table.column("kept"))
    filtered = table.filter(pc.invert(table.column("kept")))
    trained = aggregate(kept)
    metrics: dict[str, Any] = {
        "scope": "kept facts (the ones trained on); see 'all' and 'filtered' for the others",
        "summary": learned_sentence(trained),
        **trained,
        "drift_definition": drift_definition,
        "pushed_away_epsilon": pushed_away_epsilon,
        "kept": dict(trained),
        "filtered": aggregate(filtered),
        "all": aggregate(table),
        "by_drift_quartile": {},
        "training": training_summary(kept),
        "run": run,
    }
    quartile = np.asarray(table.column("drift_quartile").to_pylist())
    drift = np.asarray(table.column("drift").to_pylist(), dtype=float)
    for q in (1, 2, 3, 4):
        rows = table.filter(pa.array(quartile == q))
        rows_kept = rows.filter(rows.column("kept"))
        in_q = drift[quartile == q]
        metrics["by_drift_quartile"][f"q{q}"] = {
            "drift_min": float(in_q.min()) if in_q.size else None,
            "drift_max": float(in_q.max()) if in_q.size else None,
            "n_all": rows.num_rows,
            **aggregate(rows_kept),  # n, efficacy, ... over the kept facts of the quartile
        }
    return metrics


def summary_table(metrics: dict[str, Any]) -> str:
    """A short plain-text table of what was learned, for the terminal."""
    def pct(v: Any) -> str:
        return "   -" if v is None else f"{100 * v:3.0f}%"

    lines = [f"{'facts':<22}{'n':>5}  {'efficacy':>8}  {'before':>6}  {'paraph':>6}  {'local':>6}  "
             f"{'bleed':>6}  {'pushed':>6}"]
    groups = [("kept (trained)", metrics["kept"]), ("filtered (untrained)", metrics["filtered"])]
    groups += [(f"kept, drift {k}", v) for k, v in metrics["by_drift_quartile"].items()]
    for name, g in groups:
        if not g["n"]:
            continue
        lines.append(f"{name:<22}{g['n']:>5}  {pct(g['efficacy']):>8}  {pct(g['efficacy_before']):>6}  "
                     f"{pct(g['paraphrase']):>6}  {pct(g['locality']):>6}  {pct(g['locality_bleed']):>6}  "
                     f"{pct(g['pushed_away']):>6}")
    return "\n".join(lines)


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)
