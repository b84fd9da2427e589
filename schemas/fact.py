"""Fact: one normalised input record, whatever layout it was read from.

The ``Fact`` model holds the field rules every layout shares (required text, optional text, lists of
text, locality pairs, the meta map, length limits); ``pipeline.formats`` only maps each layout's keys
onto these fields and hands the result to ``Fact.model_validate``.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Optional

import pyarrow as pa
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints,
                      ValidationInfo, field_validator, model_validator)
from pydantic_core import PydanticCustomError

LOCALITY_TYPE = pa.struct([pa.field("prompt", pa.string(), nullable=False),
                           pa.field("answer", pa.string(), nullable=False)])
# ``meta`` on disk: a list of key/value structs, which every reader supports (Hugging Face ``datasets``
# has no dtype for Arrow's map type, which datasets written before this change carry; the two share a
# physical layout, and ``upgrade_meta`` casts an old column). In DuckDB,
# ``map_from_entries(meta)['key']`` looks a key up.
META_TYPE = pa.list_(pa.struct([pa.field("key", pa.string(), nullable=False),
                                pa.field("value", pa.string(), nullable=False)]))

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
    pa.field("meta", META_TYPE, nullable=False),
]
FACT_SCHEMA = pa.schema(FACT_FIELDS)

# Strict: bytes or numbers are not silently turned into text; surrounding whitespace carries nothing.
_Stripped = Annotated[str, StringConstraints(strict=True, strip_whitespace=True)]
Text = Annotated[str, StringConstraints(strict=True, strip_whitespace=True, min_length=1)]
# Blank optional text is the same as none given.
OptionalText = Annotated[Optional[_Stripped], AfterValidator(lambda text: text or None)]
# Blank items are dropped rather than rejected: an empty paraphrase teaches nothing.
TextList = Annotated[list[_Stripped], AfterValidator(lambda items: [i for i in items if i])]


class LocalityPrompt(BaseModel):
    """A prompt whose answer the edit must not change."""

    model_config = ConfigDict(extra="forbid")
    prompt: Text
    answer: Text


class Fact(BaseModel):
    """A fact to teach: the model should answer ``target`` after ``prompt``.

    Validate with ``context={"max_prompt_chars": N, "max_target_chars": M}`` to enforce the curate
    config's length limits; without a context no limit applies (rows already curated are trusted).
    """

    model_config = ConfigDict(extra="forbid")
    fact_id: _Stripped = Field("", description="Given by the input, or a stable hash of prompt and target.")
    prompt: Text
    target: Text
    subject: OptionalText = None
    relation: OptionalText = None
    ground_truth: OptionalText = Field(None, description="What is true today, when the input says.")
    paraphrases: TextList = Field(default_factory=list)
    locality: list[LocalityPrompt] = Field(default_factory=list)
    source: str = Field(description="Input file the record came from.")
    position: int = Field(ge=0, description="Index of the record in its source (0-based).")
    meta: Annotated[dict[str, str], BeforeValidator(lambda value: meta_dict(value))] = Field(default_factory=dict)

    @field_validator("prompt", "target")
    @classmethod
    def _within_limit(cls, text: str, info: ValidationInfo) -> str:
        # The limit is a curate setting, not a property of facts, so it arrives as context.
        knob = f"max_{info.field_name}_chars"
        limit = (info.context or {}).get(knob)
        if limit is not None and len(text) > limit:
            raise PydanticCustomError(
                "too_long", "is {length} characters, above {knob}={limit}; shorten it or raise {knob}",
                {"length": len(text), "knob": knob, "limit": limit})
        return text

    @model_validator(mode="after")
    def _derive_id(self) -> Fact:
        if not self.fact_id:
            self.fact_id = stable_fact_id(self.prompt, self.target)
        return self


def stable_fact_id(prompt: str, target: str) -> str:
    """Content id for records that bring none: the same fact gets the same id in every run."""
    digest = hashlib.sha256(f"{prompt}\x1f{target}".encode("utf-8")).hexdigest()
    return f"f_{digest[:16]}"


def meta_dict(value: Any) -> Any:
    """``meta`` as a dict, from any form it is stored in: a dict, key/value structs (``META_TYPE``), or the
    (key, value) pairs an older dataset's Arrow map reads as. Anything else is returned as it came, for
    the caller's validation to name."""
    if isinstance(value, list) and all(isinstance(i, dict) and set(i) == {"key", "value"} for i in value):
        return {i["key"]: i["value"] for i in value}
    if isinstance(value, list) and all(isinstance(i, (list, tuple)) and len(i) == 2 for i in value):
        return dict(value)
    return value


def meta_entries(meta: dict[str, str] | None) -> list[dict[str, str]]:
    """``meta`` as ``META_TYPE`` values, for writing a row with ``pa.Table.from_pylist``."""
    return [{"key": k, "value": v} for k, v in (meta or {}).items()]


def to_arrow_row(row: dict[str, Any]) -> dict[str, Any]:
    """A Fact or ScoredFact row (``model_dump()``) as the Parquet schemas store it."""
    return {**row, "meta": meta_entries(meta_dict(row["meta"]))} if "meta" in row else row


def upgrade_meta(table: pa.Table) -> pa.Table:
    """A table whose ``meta`` column is an older dataset's ``map<string, string>``, with ``META_TYPE``
    instead; any other table as it is."""
    if "meta" not in table.column_names or not pa.types.is_map(table.schema.field("meta").type):
        return table
    index = table.column_names.index("meta")
    return table.set_column(index, pa.field("meta", META_TYPE, nullable=False),
                            table.column("meta").cast(META_TYPE))
