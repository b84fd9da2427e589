"""The risk column's model: a probability, higher for targets far down the base model's ranking and
lower for targets other facts share (the directions the knowledge benchmark measured)."""

from __future__ import annotations

from scoring.risk import AT_RISK, features, risk


def test_risk_is_a_probability_in_the_measured_directions() -> None:
    assert 0.0 < risk(1, 0) < 1.0 and 0.0 < risk(49_152, 40) < 1.0
    assert risk(5000, 0) > risk(2, 0)  # far down the ranking: harder
    assert risk(100, 3) < risk(100, 0)  # a shared target: learned earlier
    assert risk(100, 1) == risk(100, 7)  # shared or not, however many share it
    assert 0.0 < AT_RISK < 1.0


def test_features_guard_ranks_below_one() -> None:
    assert features(0, 0) == features(1, 0) == [1.0, 0.0, 0.0]
    assert features(1, 2)[2] == 1.0
    assert 0.5 < risk(10**9, 0) < 1.0  # a huge rank stays a finite probability
