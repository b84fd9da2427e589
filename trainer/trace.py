"""The per-fact training trace: each fact's state at every visit, read off the training forward pass.

The logits of the forward pass that computes the loss already say, for free, where each fact in the
batch stands: its loss, the probability of each target token, whether every target token is the
argmax under teacher forcing (exactly "greedy decoding reproduces the target"), and how far the
expected next-token embedding at the answer position is from the target's (the dataset's
``drift_expected``, ``scoring.drift.expected_drift``). ``beacon train`` writes them to
``R/trace.parquet``, one row per fact per visit; ``beacon eval`` turns them into each fact's
``first_learned_step``, ``times_forgotten`` and ``pushed_away_in_training`` (``summarise``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyarrow as pa

TRACE_FILE = "trace.parquet"
TRACE_SCHEMA = pa.schema([
    pa.field("step", pa.int64(), nullable=False),  # the optimizer step the visit's gradient went into
    pa.field("fact_id", pa.string(), nullable=False),
    pa.field("loss", pa.float64(), nullable=False),  # mean cross-entropy over the trained tokens
    pa.field("target_prob_min", pa.float64(), nullable=False),  # over the target tokens (eos excluded)
    pa.field("target_prob_mean", pa.float64(), nullable=False),
    pa.field("learned", pa.bool_(), nullable=False),  # every target token is the argmax
    pa.field("distance", pa.float64(), nullable=False),  # drift_expected's definition, at the answer
])


def fact_states(logits: Any, labels: Any, embeddings: Any, *, last_is_eos: bool) -> dict[str, list]:
    """Each row's state from a forward pass: ``loss``, ``target_prob_min/mean``, ``learned``, ``distance``.

    Only the trained positions are read (a few per fact, not the whole sequence), and the distance of
    every row is one matrix product: the trace must cost a small fraction of the step it rides on.

    Args:
        logits: ``[batch, seq, vocab]``; position t predicts ``labels[:, t + 1]``.
        labels: ``[batch, seq]``, -100 where no loss is taken.
        embeddings: the LM's input embedding matrix (the space of ``distance``).
        last_is_eos: the last trained token of each row is the end of sequence, not the target.
    """
    import torch
    import torch.nn.functional as F

    from scoring.drift import expected_drifts

    n = labels.shape[0]
    out: dict[str, list] = {"loss": [0.0] * n, "target_prob_min": [0.0] * n, "target_prob_mean": [0.0] * n,
                            "learned": [False] * n, "distance": [1.0] * n}
    with torch.no_grad():
        shifted = F.pad(labels, (0, 1), value=-100)[:, 1:]
        trained = shifted != -100
        target = trained.clone()
        if last_is_eos:  # the eos is trained, but "learned" is about the target's own tokens
            target &= ~(trained & (trained.cumsum(1) == trained.sum(1, keepdim=True)))
        rows = trained.nonzero()[:, 0].tolist()
        picked = logits.detach()[trained].float()  # [trained positions, vocab]
        tokens = shifted[trained]
        # log p(token) without materialising the log-softmax of every position: one logsumexp a row.
        logp = (picked.gather(-1, tokens[:, None])[:, 0] - torch.logsumexp(picked, -1)).tolist()
        hit = (picked.argmax(-1) == tokens).tolist()
        is_target = target[trained].tolist()
        per_row: dict[int, list[tuple[float, bool, bool]]] = {}
        for r, lp, h, t in zip(rows, logp, hit, is_target):
            per_row.setdefault(r, []).append((lp, h, t))
        for r, values in per_row.items():
            out["loss"][r] = -sum(v[0] for v in values) / len(values)
            answer = [(math.exp(lp), h) for lp, h, t in values if t]
            if answer:
                out["target_prob_min"][r] = min(p for p, _ in answer)
                out["target_prob_mean"][r] = sum(p for p, _ in answer) / len(answer)
                out["learned"][r] = all(h for _, h in answer)
        first = target & (target.cumsum(1) == 1)  # the answer position: where the target starts
        if first.any():
            where = first.nonzero()
            distance = expected_drifts(logits.detach()[first], embeddings, shifted[first]).tolist()
            for r, d in zip(where[:, 0].tolist(), distance):
                out["distance"][r] = d
    return out


class FactTrace:
    """The trace rows of one run, in memory; written whole (atomically) at every save and at the end."""

    def __init__(self, rows: list[dict[str, Any]] | None = None) -> None:
        self.rows: list[dict[str, Any]] = rows or []

    @classmethod
    def resumed(cls, run_dir: Path, step: int) -> "FactTrace":
        """The rows of an earlier attempt up to ``step`` (the checkpoint resumed from); none at step 0."""
        path = Path(run_dir) / TRACE_FILE
        if step == 0 or not path.is_file():
            return cls()
        import pyarrow.parquet as pq

        return cls([r for r in pq.read_table(path).to_pylist() if r["step"] <= step])

    def add(self, step: int, fact_ids: list[str], states: dict[str, list]) -> None:
        for i, fact_id in enumerate(fact_ids):
            self.rows.append({"step": step, "fact_id": fact_id, **{k: v[i] for k, v in states.items()}})

    def write(self, run_dir: Path) -> Path:
        from trainer.files import write_parquet

        path = Path(run_dir) / TRACE_FILE
        write_parquet(pa.Table.from_pylist(self.rows, schema=TRACE_SCHEMA), path)
        return path


def summarise(trace: pa.Table, *, margin: float) -> dict[str, dict[str, Any]]:
    """Per fact: ``first_learned_step`` (None if never), ``times_forgotten`` (learned on one visit, not
    on the next), ``pushed_away_in_training`` (its distance rose above its first visit's by ``margin``)."""
    visits: dict[str, list[tuple[int, bool, float]]] = {}
    for step, fact_id, learned, distance in zip(*(trace.column(c).to_pylist() for c in
                                                  ("step", "fact_id", "learned", "distance"))):
        visits.setdefault(fact_id, []).append((step, learned, distance))
    out = {}
    for fact_id, rows in visits.items():
        rows.sort(key=lambda r: r[0])
        learned = [r[1] for r in rows]
        out[fact_id] = {
            "first_learned_step": next((r[0] for r in rows if r[1]), None),
            "times_forgotten": sum(a and not b for a, b in zip(learned, learned[1:])),
            "pushed_away_in_training": any(r[2] > rows[0][2] + margin for r in rows[1:]),
            "visits": len(rows),
        }
    return out
