"""Answer matching, drift quartiles and aggregation: pure functions."""

from __future__ import annotations

import pyarrow as pa
import pytest

from trainer.metrics import (EVAL_SCHEMA, aggregate, build_metrics, drift_quartiles, learned_sentence,
                             normalise, starts_with_target)


@pytest.mark.parametrize("answer, target, hit", [
    ("Paris. It is a city", "Paris", True),
    (" paris", "Paris", True),
    ("New York City", "new york", True),
    ("the U.S.", "US", False),  # prefix of the answer, not anywhere in it
    ("Parisian", "Paris", True),  # prefix match counts, as in the calibration
    ("poet poet poet", "poet", True),
    ("", "Paris", False),
    ("anything", "...", False),  # an empty normalised target never matches
    ("Köln", "KÖLN", True),
])
def test_starts_with_target(answer: str, target: str, hit: bool) -> None:
    assert starts_with_target(answer, target) is hit


def test_normalise() -> None:
    assert normalise(" São-Paulo! ") == "sãopaulo"


def test_drift_quartiles() -> None:
    q = drift_quartiles([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    assert q.tolist() == [1, 1, 2, 2, 3, 3, 4, 4]
    assert drift_quartiles([]).tolist() == []


def rows() -> pa.Table:
    base = {name: None for name in EVAL_SCHEMA.names}
    data = []
    for i in range(8):
        kept = i < 6
        data.append({**base, "fact_id": f"f{i}", "kept": kept, "reason": "kept" if kept else "high_drift",
                     "weight": 1.0 if kept else 0.0, "drift": 0.1 * i, "drift_quartile": 1 + i // 2,
                     "target": "x", "answer": "x", "answer_before": "y",
                     "efficacy": i % 2 == 0, "efficacy_before": i == 4, "efficacy_prob": None,
                     "target_logprob_before": -3.0, "target_logprob_after": -1.0,
                     "target_rank_after": 1, "paraphrase_count": 1, "paraphrase": float(i == 0),
                     "locality_count": 0 if i == 1 else 1, "locality": None if i == 1 else 0.5,
                     "locality_bleed": None if i == 1 else 0.0, "drift_definition": "expected",
                     "drift_before": 0.5, "drift_after": 0.4, "drift_expected_before": 0.5,
                     "drift_expected_after": 0.4, "pushed_away": i == 3})
    return pa.Table.from_pylist(data, schema=EVAL_SCHEMA)


def test_aggregate_skips_nulls_and_counts_learned_vs_known() -> None:
    agg = aggregate(rows())
    assert agg["n"] == 8 and agg["efficacy"] == 0.5
    assert agg["efficacy_prob"] is None  # no ground truth anywhere
    assert agg["locality"] == 0.5  # the fact without locality prompts is left out, not counted as 0
    assert agg["learned"] == 3 and agg["forgotten"] == 0  # f4 was known before training
    assert (agg["answer_target"], agg["already_known"]) == (4, 1)
    assert learned_sentence(agg) == "4 of 8 trained facts answer with the target (3 newly learned, 1 already known)"


def test_the_sentence_says_what_was_lost_only_when_something_was() -> None:
    group = {"n": 45, "answer_target": 44, "learned": 41, "already_known": 3, "forgotten": 1}
    assert learned_sentence(group) == ("44 of 45 trained facts answer with the target (41 newly learned, "
                                       "3 already known); 1 that did before no longer do")


def test_build_metrics_groups() -> None:
    m = build_metrics(rows(), drift_definition="expected", pushed_away_epsilon=0.01, run={"x": 1})
    assert m["n"] == 6 and m["kept"]["n"] == 6 and m["filtered"]["n"] == 2 and m["all"]["n"] == 8
    assert set(m["by_drift_quartile"]) == {"q1", "q2", "q3", "q4"}
    q4 = m["by_drift_quartile"]["q4"]
    assert q4["n_all"] == 2 and q4["n"] == 0 and q4["efficacy"] is None  # both filtered
    assert m["pushed_away"] == pytest.approx(1 / 6)
    for key in ("efficacy", "paraphrase", "locality", "pushed_away", "locality_bleed", "efficacy_prob"):
        assert key in m
