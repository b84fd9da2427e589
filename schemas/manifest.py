"""Manifest: what a curated dataset holds and how it was made (``D/manifest.json``)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

# Free-form dictionaries (the scoring config) travel as JSON text in Arrow; the field metadata says so.
JSON_FIELD = {b"encoding": b"json"}

INPUT_FILE_TYPE = pa.struct([
    pa.field("path", pa.string(), nullable=False),
    pa.field("sha256", pa.string(), nullable=False),
    pa.field("bytes", pa.int64(), nullable=False),
])
COUNTS_TYPE = pa.struct([
    pa.field("input", pa.int64(), nullable=False),
    pa.field("scored", pa.int64(), nullable=False),
    pa.field("rejected", pa.int64(), nullable=False),
    pa.field("kept", pa.int64(), nullable=False),
    pa.field("by_reason", pa.map_(pa.string(), pa.int64()), nullable=False),
])
MODEL_REF_TYPE = pa.struct([
    pa.field("name", pa.string(), nullable=False),
    pa.field("path", pa.string()),
    pa.field("revision", pa.string()),
])

MANIFEST_SCHEMA = pa.schema([
    pa.field("dataset_id", pa.string(), nullable=False),
    pa.field("created_at", pa.string(), nullable=False),
    pa.field("beacon_version", pa.string(), nullable=False),
    pa.field("inputs", pa.list_(INPUT_FILE_TYPE), nullable=False),
    pa.field("input_digest", pa.string(), nullable=False),
    pa.field("format", pa.string(), nullable=False),
    pa.field("counts", COUNTS_TYPE, nullable=False),
    pa.field("rejected_by_stage", pa.map_(pa.string(), pa.int64()), nullable=False),
    pa.field("quantiles", pa.map_(pa.string(), pa.map_(pa.string(), pa.float64())), nullable=False),
    pa.field("thresholds", pa.map_(pa.string(), pa.float64()), nullable=False),
    pa.field("config", pa.string(), nullable=False, metadata=JSON_FIELD),
    pa.field("config_hash", pa.string(), nullable=False),
    pa.field("models", pa.map_(pa.string(), MODEL_REF_TYPE), nullable=False),
    pa.field("runner", pa.string(), nullable=False),
    pa.field("timings", pa.map_(pa.string(), pa.float64()), nullable=False),
])


class InputFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    sha256: str
    bytes: int


class Counts(BaseModel):
    """``input == scored + rejected`` always holds; ``kept`` counts scored rows with keep=true."""

    model_config = ConfigDict(extra="forbid")
    input: int
    scored: int
    rejected: int
    kept: int
    by_reason: dict[str, int] = Field(default_factory=dict)


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    path: str | None = None
    revision: str | None = None


class Manifest(BaseModel):
    """Everything a reader needs to trust and reproduce a curated dataset."""

    model_config = ConfigDict(extra="forbid")
    dataset_id: str
    created_at: str
    beacon_version: str
    inputs: list[InputFile]
    input_digest: str = Field(description="sha256 over the input files' digests, in order.")
    format: str
    counts: Counts
    rejected_by_stage: dict[str, int] = Field(default_factory=dict)
    quantiles: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="score -> {'q0.5': value, ...} over scored rows.")
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="Absolute thresholds the policy applied (quantiles resolved).")
    config: dict[str, Any] = Field(json_schema_extra={"arrow_encoding": "json"})
    config_hash: str
    models: dict[str, ModelRef]
    runner: str
    timings: dict[str, float] = Field(default_factory=dict, description="Stage -> seconds.")

    def to_arrow_row(self) -> dict[str, Any]:
        """The manifest as one row of ``MANIFEST_SCHEMA`` (JSON fields encoded)."""
        import json

        row = self.model_dump()
        row["config"] = json.dumps(row["config"], sort_keys=True)
        for key in ("rejected_by_stage", "thresholds", "timings", "models"):
            row[key] = list(row[key].items())
        row["counts"]["by_reason"] = list(row["counts"]["by_reason"].items())
        row["quantiles"] = [(k, list(v.items())) for k, v in row["quantiles"].items()]
        return row
