"""Fact: one normalised input record, whatever layout it was read from."""

from __future__ import annotations

import hashlib

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

LOCALITY_TYPE = pa.struct([pa.field("prompt", pa.string(), nullable=False),
                           pa.field("answer", pa.string(), nullable=False)])

FACT_FIELDS: list[pa.Field] = [
    pa.field("fact_id", pa.string(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("target", pa.string(), nullable=False),
    pa.field("subject", pa.string()),
    pa.field("relation", pa.string()),
    pa.field("ground_truth", pa.string()),
    pa.field("paraphrases", pa.list_(pa.string()), nullable=False),
    pa.field("locality", pa.list_(LOCALITY_TYPE), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("position", pa.int64(), nullable=False),
    pa.field("meta", pa.map_(pa.string(), pa.string()), nullable=False),
]
FACT_SCHEMA = pa.schema(FACT_FIELDS)


class LocalityPrompt(BaseModel):
    """A prompt whose answer the edit must not change."""

    model_config = ConfigDict(extra="forbid")
    prompt: str
    answer: str


class Fact(BaseModel):
    """A fact to teach: the model should answer ``target`` after ``prompt``."""

    model_config = ConfigDict(extra="forbid")
    fact_id: str = Field(description="Given by the input, or a stable hash of prompt and target.")
    prompt: str = Field(min_length=1)
    target: str = Field(min_length=1)
    subject: str | None = None
    relation: str | None = None
    ground_truth: str | None = Field(None, description="What is true today, when the input says.")
    paraphrases: list[str] = Field(default_factory=list)
    locality: list[LocalityPrompt] = Field(default_factory=list)
    source: str = Field(description="Input file the record came from.")
    position: int = Field(ge=0, description="Index of the record in its source (0-based).")
    meta: dict[str, str] = Field(default_factory=dict)


def stable_fact_id(prompt: str, target: str) -> str:
    """Content id for records that bring none: the same fact gets the same id in every run."""
    digest = hashlib.sha256(f"{prompt}\x1f{target}".encode("utf-8")).hexdigest()
    return f"f_{digest[:16]}"
