"""Pure policy functions: quantiles, thresholds, decisions, weights; the curate config's own rules."""

import numpy as np
import pytest

from pipeline.config import CurateConfig
from pipeline.policy import decide, raw_weight, resolve_thresholds
from pipeline.quantiles import quantile, summary


def test_quantile_picks_from_evenly_spaced_points():
    points = list(np.linspace(0, 1, 1001))
    assert quantile(points, 0.9) == pytest.approx(0.9)
    assert quantile([], 0.5) is None
    assert summary(points)["q0.5"] == pytest.approx(0.5) and summary(points)["q0.99"] == pytest.approx(0.99)


def test_quantile_thresholds_are_resolved_on_the_data():
    config = CurateConfig(max_drift_quantile=0.75, max_interference=0.8)
    t = resolve_thresholds(config, {"drift": list(np.linspace(0, 2, 1001)), "interference": [0.0] * 1001})
    assert t["max_drift"] == pytest.approx(1.5)
    assert t["max_interference"] == 0.8
    assert t["median_drift"] == pytest.approx(1.0)


def _fact(**kw):
    base = dict(drift=0.5, interference=0.1, conflicts_with=[], conflict_with_earlier=False, duplicate_of=None)
    return {**base, **kw}


NO_THRESHOLDS = {"max_drift": None, "max_interference": None, "median_drift": 0.5}


def test_decisions_and_their_precedence():
    config = CurateConfig()
    t = {"max_drift": 0.6, "max_interference": 0.9, "median_drift": 0.5}
    assert decide(_fact(), config, t) == "kept"
    assert decide(_fact(drift=0.7), config, t) == "high_drift"
    assert decide(_fact(interference=0.95), config, t) == "high_interference"
    assert decide(_fact(duplicate_of="f1", drift=0.9), config, t) == "duplicate"
    later = _fact(conflicts_with=["f1"], conflict_with_earlier=True, drift=0.9)
    assert decide(later, config, t) == "conflict"


def test_conflict_actions():
    first = _fact(conflicts_with=["f2"], conflict_with_earlier=False)
    later = _fact(conflicts_with=["f1"], conflict_with_earlier=True)
    keep_first, drop_all, keep_all = (CurateConfig(conflicts=c) for c in ("keep_first", "drop_all", "keep_all"))
    assert [decide(f, keep_first, NO_THRESHOLDS) for f in (first, later)] == ["kept", "conflict"]
    assert [decide(f, drop_all, NO_THRESHOLDS) for f in (first, later)] == ["conflict", "conflict"]
    assert [decide(f, keep_all, NO_THRESHOLDS) for f in (first, later)] == ["kept", "kept"]


def test_weights_follow_drift_in_the_chosen_direction_and_are_clipped():
    up, down, flat = (CurateConfig(weighting=w) for w in ("drift", "inverse_drift", "none"))
    assert raw_weight(1.0, up, 0.5) == pytest.approx(2.0)
    assert raw_weight(1.0, down, 0.5) == pytest.approx(0.5)
    assert raw_weight(1.0, flat, 0.5) == 1.0
    assert raw_weight(0.0, up, 0.5) == pytest.approx(0.2)  # clipped at the low end
    assert raw_weight(100.0, up, 0.5) == pytest.approx(5.0)


def test_config_rejects_impossible_combinations_naming_the_fields():
    with pytest.raises(ValueError, match="max_drift and max_drift_quantile"):
        CurateConfig(max_drift=0.5, max_drift_quantile=0.9)
    with pytest.raises(ValueError, match="conflict_threshold"):
        CurateConfig(neighbor_threshold=0.95, conflict_threshold=0.9)
    with pytest.raises(ValueError, match="weight_clip"):
        CurateConfig(weight_clip=(2.0, 1.0))


def test_config_hash_ignores_batch_sizes_but_not_scores():
    base = CurateConfig()
    assert base.config_hash() == CurateConfig(probe_batch_size=4).config_hash()
    assert base.config_hash() != CurateConfig(conflict_threshold=0.97).config_hash()


def test_a_reused_fact_id_with_other_content_is_a_clash_and_an_identical_copy_gets_its_own_id():
    from pipeline.fact_ids import id_fixes_of

    records = [(2, "k2", "The capital of Peru is", "Cusco"), (0, "k0", "The capital of Japan is", "Tokyo"),
               (5, "k5", "The capital of Japan is", "Tokyo"), (7, "k7", "The capital of Japan is", "Tokyo")]
    fixes = dict(id_fixes_of("m01", records))
    assert fixes["k2"][0] == "reject" and "m01" in fixes["k2"][1] and "Tokyo" in fixes["k2"][1]
    assert fixes["k5"] == ("rename", "m01~copy1") and fixes["k7"] == ("rename", "m01~copy2")
    assert "k0" not in fixes  # the first keeps its id
    assert id_fixes_of("m02", [(0, "k0", "p", "t")]) == []


def test_a_given_id_holding_the_copy_mark_is_rejected_so_copies_never_collide():
    from pipeline.fact_ids import id_fixes_of

    fixes = dict(id_fixes_of("k1~copy1", [(0, "k0", "p", "t")]))
    assert fixes["k0"][0] == "reject" and "reserves" in fixes["k0"][1]
