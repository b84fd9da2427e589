"""The per-fact training trace: states read off a forward pass, and each fact's history from them."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch

from scoring.drift import expected_drift
from trainer.trace import TRACE_SCHEMA, FactTrace, fact_states, summarise


def _batch():
    # Two facts over a vocabulary of 5: labels -100 on the prompt; targets [2, 3] + eos 4, and [1] + eos 4.
    labels = torch.tensor([[-100, -100, 2, 3, 4], [-100, 1, 4, -100, -100]])
    logits = torch.full((2, 5, 5), -5.0)
    # Position t predicts labels[t + 1]: fact 0 gets 2 and 3 right (its eos wrong), fact 1 gets 1 wrong.
    logits[0, 1, 2] = logits[0, 2, 3] = 5.0
    logits[0, 3, 0] = 5.0
    logits[1, 0, 3] = 5.0
    logits[1, 1, 4] = 5.0
    embeddings = torch.eye(5)
    return logits, labels, embeddings


def test_learned_means_every_target_token_is_the_argmax_and_the_eos_does_not_count():
    logits, labels, emb = _batch()
    states = fact_states(logits, labels, emb, last_is_eos=True)
    assert states["learned"] == [True, False]
    assert fact_states(logits, labels, emb, last_is_eos=False)["learned"] == [False, False]  # eos wrong
    p = torch.softmax(logits, -1)
    assert states["target_prob_min"][0] == pytest.approx(min(p[0, 1, 2], p[0, 2, 3]).item())
    assert states["target_prob_mean"][1] == pytest.approx(p[1, 0, 1].item())
    # The loss is over every trained token, the eos included.
    nll = -torch.log(torch.stack([p[0, 1, 2], p[0, 2, 3], p[0, 3, 4]])).mean()
    assert states["loss"][0] == pytest.approx(nll.item(), rel=1e-5)


def test_distance_is_the_datasets_expected_drift_at_the_answer_position():
    logits, labels, emb = _batch()
    states = fact_states(logits, labels, emb, last_is_eos=True)
    assert states["distance"][0] == pytest.approx(expected_drift(logits[0, 1], emb, 2))
    assert states["distance"][1] == pytest.approx(expected_drift(logits[1, 0], emb, 1))
    assert states["distance"][0] < states["distance"][1]  # the learned fact is nearer its target


def test_history_first_learned_forgotten_and_pushed_away(tmp_path):
    rows = [(1, "a", False, 0.5), (2, "a", True, 0.2), (3, "a", False, 0.4), (4, "a", True, 0.1),
            (1, "b", False, 0.3), (3, "b", False, 0.6), (2, "c", True, 0.1)]
    trace = FactTrace()
    for step, fact, learned, distance in rows:
        trace.add(step, [fact], {"loss": [1.0], "target_prob_min": [0.1], "target_prob_mean": [0.2],
                                 "learned": [learned], "distance": [distance]})
    path = trace.write(tmp_path)
    table = pq.read_table(path)
    assert table.schema == TRACE_SCHEMA
    got = summarise(table, margin=0.05)
    assert got["a"] == {"first_learned_step": 2, "times_forgotten": 1, "pushed_away_in_training": False,
                        "visits": 4}
    assert got["b"] == {"first_learned_step": None, "times_forgotten": 0, "pushed_away_in_training": True,
                        "visits": 2}
    assert got["c"]["first_learned_step"] == 2
    # A resumed run keeps the visits up to the checkpoint it resumes from.
    assert sorted(r["step"] for r in FactTrace.resumed(tmp_path, 2).rows) == [1, 1, 2, 2]
    assert FactTrace.resumed(tmp_path, 0).rows == []
