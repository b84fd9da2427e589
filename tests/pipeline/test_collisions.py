"""FindCollisions and normalize_text: exact shared targets and duplicates."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.collisions import FindCollisions
from pipeline.text import normalize_text


@pytest.mark.parametrize("raw, norm", [
    ("  Paris. ", "paris"),
    ("PARIS!?", "paris"),
    ("The   capital\tof\nFrance is", "the capital of france is"),
    ("Straße", "strasse"),  # casefold, not lower
    ("ﬁnland", "finland"),  # NFKC expands the ligature
    ("U.S. Army", "u.s. army"),  # inner punctuation is kept
    ("Paris", "paris"),
])
def test_normalize_text(raw, norm):
    assert normalize_text(raw) == norm


def _run(rows):
    facts = [(key, {"prompt_norm": normalize_text(p), "target_norm": normalize_text(t),
                    "fact_id": fid, "order": order}) for key, p, t, fid, order in rows]
    p = BeamTestPipeline()
    out = p | beam.Create(facts) | FindCollisions()
    return p, out


def test_shared_targets_and_duplicates_one_output_per_key():
    rows = [
        # key, prompt, target, fact_id, order
        ("a", "The capital of France is", "Paris", "f-a", 3),
        ("b", "the capital of  France is", "paris.", "f-b", 1),  # same fact, earlier
        ("c", "The capital of France is", "PARIS", "f-c", 7),  # same fact, later
        ("d", "Lyon is in", "France", "f-d", 0),
        ("e", "The capital of France is", "Lyon", "f-e", 2),  # same prompt, other target
        ("f", "Eiffel Tower is in", "Paris", "f-f", 5),  # same target, other prompt
    ]
    p, out = _run(rows)
    assert_that(out, equal_to([
        ("a", {"shared_target": 3, "duplicate_of": "f-b"}),
        ("b", {"shared_target": 3, "duplicate_of": None}),
        ("c", {"shared_target": 3, "duplicate_of": "f-b"}),
        ("d", {"shared_target": 0, "duplicate_of": None}),
        ("e", {"shared_target": 0, "duplicate_of": None}),
        ("f", {"shared_target": 3, "duplicate_of": None}),
    ]))
    p.run().wait_until_finish()


def test_equal_orders_still_leave_exactly_one_original():
    rows = [("x", "Q", "A", "f-2", 0), ("y", "Q", "A", "f-1", 0), ("z", "Q", "A", "f-3", 0)]
    p, out = _run(rows)
    assert_that(out, equal_to([
        ("x", {"shared_target": 2, "duplicate_of": "f-1"}),
        ("y", {"shared_target": 2, "duplicate_of": None}),
        ("z", {"shared_target": 2, "duplicate_of": "f-1"}),
    ]))
    p.run().wait_until_finish()
