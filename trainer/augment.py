"""Paraphrase augmentation (``augment: paraphrases``): train on a share of each fact's paraphrases and
keep the rest for evaluation.

The split is a pure function of the fact's paraphrase list and ``paraphrase_share``, so ``beacon eval``
recomputes it from the run's config and measures paraphrase accuracy on the held-out ones only. A fact
with one paraphrase (or none) keeps it for evaluation; at least one is always held out.
"""

from __future__ import annotations

import math
from typing import Any

PARAPHRASE_ID = "{fact_id}#para{k}"  # the training example of a fact's k-th trained paraphrase


def split_paraphrases(paraphrases: list[str] | None, share: float) -> tuple[list[str], list[str]]:
    """(trained, held out): the first ``floor(share x n)`` paraphrases (at most n - 1), and the rest."""
    items = list(paraphrases or [])
    trained = min(len(items) - 1, math.floor(share * len(items))) if items else 0
    return items[:trained], items[trained:]


def augmented_rows(rows: list[dict[str, Any]], share: float) -> list[dict[str, Any]]:
    """``rows`` followed by one row per trained paraphrase: the fact's target and weight, its own id."""
    extra = []
    for row in rows:
        trained, _ = split_paraphrases(row.get("paraphrases"), share)
        extra += [{**row, "fact_id": PARAPHRASE_ID.format(fact_id=row["fact_id"], k=k), "prompt": p}
                  for k, p in enumerate(trained)]
    return rows + extra
