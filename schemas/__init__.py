"""Data contracts shared by the pipeline, the trainer and the service.

Each record has one pyarrow schema (what is written to disk) and one pydantic model (what code and
the API validate against); ``tests/schemas`` proves every pair agrees.
"""

from schemas.fact import FACT_SCHEMA, Fact, LocalityPrompt
from schemas.manifest import MANIFEST_SCHEMA, Counts, Manifest
from schemas.rejected import REJECTED_SCHEMA, Rejected
from schemas.scored import REASONS, SCORED_SCHEMA, ScoredFact

__all__ = [
    "FACT_SCHEMA",
    "Fact",
    "LocalityPrompt",
    "MANIFEST_SCHEMA",
    "Counts",
    "Manifest",
    "REJECTED_SCHEMA",
    "Rejected",
    "REASONS",
    "SCORED_SCHEMA",
    "ScoredFact",
]
