"""Rejected: an input record that could not become a Fact (the dead letter)."""

from __future__ import annotations

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

RAW_MAX_CHARS = 2000

REJECTED_SCHEMA = pa.schema([
    pa.field("source", pa.string(), nullable=False),
    pa.field("position", pa.int64(), nullable=False),
    pa.field("raw", pa.string(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),
    pa.field("error", pa.string(), nullable=False),
])


class Rejected(BaseModel):
    """Where the record was, what it looked like (truncated), which stage refused it and why."""

    model_config = ConfigDict(extra="forbid")
    source: str
    position: int
    raw: str
    stage: str
    error: str


def truncate_raw(raw: str | bytes, limit: int = RAW_MAX_CHARS) -> str:
    """The raw record as text for a dead letter; undecodable bytes are shown escaped, never dropped."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="backslashreplace")
    return raw if len(raw) <= limit else raw[:limit] + f"…[{len(raw) - limit} more chars]"
