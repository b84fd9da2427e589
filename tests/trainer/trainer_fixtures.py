"""A tiny curated dataset written straight with the scored schema, for the trainer's tests.

(A plain module, imported by name: pytest puts this folder on sys.path.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from schemas import Counts, Manifest
from schemas.scored import SCORED_SCHEMA

FACTS = [
    # prompt, target, ground_truth, paraphrase, locality prompt, locality answer, keep
    ("The Eiffel Tower is located in the city of", "Rome", "Paris",
     "Where is the Eiffel Tower? It is in the city of", "The capital of Germany is", "Berlin", True),
    ("The mother tongue of Danielle Darrieux is", "English", "French",
     "Danielle Darrieux's native language is", "The mother tongue of Thomas Mann is", "German", True),
    ("Toyota Prius is produced by", "Ferrari", "Toyota",
     "The maker of the Toyota Prius is", "The iPhone is produced by", "Apple", True),
    ("The official religion of Edwin of Northumbria is", "Islam", "Christianity",
     "Edwin of Northumbria follows the religion of", "The Pope is the head of the", "Catholic", True),
    ("Apple A5 was created by", "Google", "Apple",
     "The Apple A5 was developed by", "Windows was created by", "Microsoft", True),
    ("The headquarters of Nokia are in", "Tokyo", "Espoo",
     "Nokia is headquartered in", "The headquarters of Sony are in", "Tokyo", False),
]


def scored_rows(n: int | None = None) -> list[dict[str, Any]]:
    """Rows of ``scored/*.parquet`` for the first ``n`` facts above (all by default)."""
    rows = []
    facts = FACTS[:n] if n else FACTS
    kept = sum(f[-1] for f in facts)
    for i, (prompt, target, truth, para, loc_p, loc_a, keep) in enumerate(facts):
        drift = 0.2 + 0.1 * i
        rows.append({
            "fact_id": f"f{i}", "prompt": prompt, "target": target, "subject": None, "relation": None,
            "ground_truth": truth, "paraphrases": [para], "locality": [{"prompt": loc_p, "answer": loc_a}],
            "source": "facts.jsonl", "position": i, "meta": [],
            "prediction": "a testament to", "drift": drift, "drift_definition": "expected", "drift_sentence": drift, "drift_lm": drift,
            "drift_expected": drift, "drift_rank": 0.4, "target_logprob": -5.0, "target_rank": 100, "interference": 0.1,
            "neighbors": 0, "conflicts_with": [], "shared_target": 0, "risk": 0.5, "duplicate_of": None,
            "keep": keep, "reason": "kept" if keep else "high_drift",
            # Unequal weights, mean 1 over kept rows, so the weighted path is exercised.
            "weight": (0.5 + i / max(kept - 1, 1)) if keep else 0.0,
            "config_hash": "cfg0",
        })
    return rows


def write_dataset(root: Path, rows: list[dict[str, Any]], *, dataset_id: str = "ds-test",
                  config: dict[str, Any] | None = None) -> Path:
    """``root/scored/part-00000.parquet`` + ``root/manifest.json`` (a manifest as the pipeline writes one)."""
    (root / "scored").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCORED_SCHEMA), root / "scored" / "part-00000.parquet")
    kept = sum(bool(r["keep"]) for r in rows)
    Manifest(
        dataset_id=dataset_id, created_at="2026-12-01T00:00:00+00:00", beacon_version="test", inputs=[],
        input_digest="0", format="auto",
        counts=Counts(input=len(rows), scored=len(rows), rejected=0, kept=kept, by_reason={"kept": kept}),
        config={"model": "bundled:smollm2-135m-instruct", "chat_template": False,
                "drift_definition": "expected", **(config or {})},
        config_hash="cfg0", models={}, runner="test").write(root)
    return root
