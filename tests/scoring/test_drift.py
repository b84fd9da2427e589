"""Each drift definition, once: the pipeline and the evaluation call these same functions."""

import numpy as np
import pytest

from pipeline.drift import with_drift
from schemas.scoring_spec import DRIFT_COLUMNS, DRIFT_DEFINITIONS
from scoring.drift import answer_head, clean_answer, drift_by_definition, rank_drift, sentence_drift


def _unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_identical_answer_and_target_have_zero_drift():
    e = _unit([0.3, -1.2, 2.0])
    assert sentence_drift(e, e.copy(), [False])[0] == pytest.approx(0.0, abs=1e-6)


def test_drift_grows_with_distance_and_stays_in_range():
    t = _unit([1, 0, 0])
    near, far, opposite = _unit([1, 0.2, 0]), _unit([0, 1, 0]), _unit([-1, 0, 0])
    d = sentence_drift(np.stack([near, far, opposite]), np.stack([t, t, t]), [False] * 3)
    assert d[0] < d[1] < d[2] <= 2.0
    assert d[1] == pytest.approx(1.0, abs=1e-6)


def test_empty_answer_counts_as_far():
    e = _unit([1, 1])
    assert sentence_drift(e, e, [True])[0] == 1.0


def test_rank_drift_is_zero_for_the_top_choice_and_one_for_the_last():
    np.testing.assert_allclose(rank_drift([1, 100, 10_000], 10_000), [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="vocabulary"):
        rank_drift([1], 1)


def test_default_drift_column_follows_the_definition_and_is_named():
    e = _unit([1, 0])
    fact = {"emb_answer": e, "emb_target": e, "answer_empty": False, "drift_lm": 0.7, "drift_expected": 0.2,
            "drift_rank": 0.4}
    assert with_drift(fact, "expected")["drift"] == 0.2
    assert with_drift(fact, "rank")["drift"] == 0.4
    assert with_drift(fact, "lm")["drift"] == 0.7
    assert with_drift(fact, "sentence")["drift"] == pytest.approx(0.0, abs=1e-6)
    assert with_drift(fact, "lm")["drift_definition"] == "lm"
    assert set(DRIFT_COLUMNS) == set(DRIFT_DEFINITIONS)


def test_teacher_forced_definitions_come_from_the_scores_and_unknown_ones_are_refused():
    scores = {"drift_expected": np.array([0.3]), "drift_rank": np.array([0.1])}
    kw = dict(answers=["x"], targets=["y"], scores=scores, model=None, tokenizer=None, encoder="unused")
    assert drift_by_definition("expected", **kw)[0] == 0.3
    assert drift_by_definition("rank", **kw)[0] == 0.1
    with pytest.raises(ValueError, match="unknown drift definition 'cosine'"):
        drift_by_definition("cosine", **kw)


@pytest.mark.slow
def test_sentence_drift_after_training_equals_the_pipelines_definition():
    """The evaluation encodes answers itself; the pipeline gets them from EmbedTexts: same numbers."""
    from scoring.drift import encode_sentences
    from scoring.models import load_encoder

    answers, targets = ["Paris. It is", "", "the city of Rome"], ["Paris", "Sega", "Milan"]
    via_eval = drift_by_definition("sentence", answers=answers, targets=targets, scores={}, model=None,
                                   tokenizer=None, encoder="bundled:all-minilm-l6-v2")
    st = load_encoder("bundled:all-minilm-l6-v2")
    heads = [answer_head(clean_answer(a), t) for a, t in zip(answers, targets)]
    by_hand = [with_drift({"emb_answer": encode_sentences(st, [h])[0], "emb_target": encode_sentences(st, [t])[0],
                           "answer_empty": not h, "drift_rank": 0.0}, "sentence")["drift"]
               for h, t in zip(heads, targets)]
    np.testing.assert_allclose(via_eval, by_hand, atol=1e-5)
    assert via_eval[0] == pytest.approx(0.0, abs=1e-5) and via_eval[1] == 1.0


@pytest.mark.parametrize("prediction,target,expected", [
    ("Paris.", "Paris", "Paris"),
    ("French. She is a Canadian artist who", "English", "French"),
    ("New York City is big", "Los Angeles", "New York"),
    ("", "Sega", ""),
    ("...", "Sega", ""),
])
def test_answer_head_takes_the_targets_slot(prediction, target, expected):
    assert answer_head(prediction, target) == expected
