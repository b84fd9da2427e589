"""ScoredFact: a Fact with its pre-training scores and the curation decision.

Scoring is non-destructive: every scored row keeps all its scores, so a user can re-threshold with
one DuckDB query without re-running the models.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
from pydantic import ConfigDict, Field

from schemas.fact import FACT_FIELDS, Fact
from schemas.scoring_spec import DriftDefinition

Reason = Literal["kept", "duplicate", "conflict", "high_drift", "high_interference"]
REASONS: tuple[str, ...] = Reason.__args__  # type: ignore[attr-defined]

SCORED_FIELDS: list[pa.Field] = FACT_FIELDS + [
    pa.field("prediction", pa.string(), nullable=False),
    pa.field("drift", pa.float64(), nullable=False),
    pa.field("drift_definition", pa.string(), nullable=False),
    pa.field("drift_sentence", pa.float64(), nullable=False),
    pa.field("drift_lm", pa.float64(), nullable=False),
    pa.field("drift_expected", pa.float64(), nullable=False),
    pa.field("drift_rank", pa.float64(), nullable=False),
    pa.field("target_logprob", pa.float64(), nullable=False),
    pa.field("target_rank", pa.int64(), nullable=False),
    pa.field("interference", pa.float64(), nullable=False),
    pa.field("neighbors", pa.int64(), nullable=False),
    pa.field("conflicts_with", pa.list_(pa.string()), nullable=False),
    pa.field("shared_target", pa.int64(), nullable=False),
    pa.field("risk", pa.float64(), nullable=False),
    pa.field("duplicate_of", pa.string()),
    pa.field("keep", pa.bool_(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("weight", pa.float64(), nullable=False),
    pa.field("config_hash", pa.string(), nullable=False),
]
SCORED_SCHEMA = pa.schema(SCORED_FIELDS)


class ScoredFact(Fact):
    """One row of ``scored/*.parquet``."""

    model_config = ConfigDict(extra="forbid")
    prediction: str = Field(description="The base model's greedy answer to the prompt today.")
    drift: float = Field(description="The drift by ``drift_definition`` (0 = already says it).")
    drift_definition: DriftDefinition = Field(description="Which drift column ``drift`` copies.")
    drift_sentence: float = Field(description="1 - cos(E(prediction), E(target)), E the sentence encoder.")
    drift_lm: float = Field(description="Same on the LM's mean input-token embeddings.")
    drift_expected: float = Field(
        description="1 - cos(sum_v p(v|prompt) E[v], E[first target token]) in the LM's embedding space.")
    drift_rank: float = Field(ge=0.0, le=1.0, description="log(target_rank) / log(vocabulary size): "
                                                          "0 = the model's top choice, 1 = its last.")
    target_logprob: float = Field(description="Mean log-probability of the target tokens (teacher forced).")
    target_rank: int = Field(ge=1, description="Rank of the target's first token in p(.|prompt); 1 = top.")
    interference: float = Field(description="Largest prompt cosine to a fact with a different target.")
    neighbors: int = Field(ge=0, description="Other facts whose prompt cosine is above the neighbour threshold.")
    conflicts_with: list[str] = Field(
        default_factory=list, description="fact_ids asking the same question with another answer.")
    shared_target: int = Field(ge=0, description="How many other facts have the same (normalised) target.")
    risk: float = Field(ge=0.0, le=1.0, description="P(not learned by plain LoRA at a budget where most facts "
                                                    "are), from target_rank and shared_target (scoring.risk).")
    duplicate_of: str | None = Field(None, description="fact_id of the earlier identical fact, if any.")
    keep: bool
    reason: Reason
    weight: float = Field(ge=0.0, description="Loss weight; mean 1 over kept rows, 0 where not kept.")
    config_hash: str
