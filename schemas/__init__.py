"""Data contracts shared by the pipeline, the trainer and the service.

Each Parquet record has one pyarrow schema (what is written to disk) and one pydantic model (what
code and the API validate against); ``tests/schemas`` proves every pair agrees. The manifest is JSON,
a pydantic model only. ``scoring_spec`` holds what a dataset's scores mean (drift definitions, the
default models), ``config_file`` the config-file sections every command shares. Imports nothing of
Beacon's.
"""

from schemas.fact import FACT_SCHEMA, Fact, LocalityPrompt
from schemas.manifest import Counts, Manifest
from schemas.rejected import REJECTED_SCHEMA, Rejected
from schemas.scored import REASONS, SCORED_SCHEMA, ScoredFact
from schemas.scoring_spec import DRIFT_COLUMNS, DRIFT_DEFINITIONS, DriftDefinition, ScoringSpec

__all__ = [
    "FACT_SCHEMA",
    "Fact",
    "LocalityPrompt",
    "Counts",
    "Manifest",
    "REJECTED_SCHEMA",
    "Rejected",
    "REASONS",
    "SCORED_SCHEMA",
    "ScoredFact",
    "DRIFT_COLUMNS",
    "DRIFT_DEFINITIONS",
    "DriftDefinition",
    "ScoringSpec",
]
