"""CurateConfig: every knob of ``beacon curate``, as a CLI flag and as a key of a config file's
``curate:`` section (read by ``schemas.config_file``, like every section).

The scoring choices the trainer shares (model, encoder, chat template, probe length, drift definition)
are defined once, in ``schemas.scoring_spec.ScoringSpec``, which this config extends.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import Field, model_validator

from schemas.config_file import ConfigSection
from schemas.scoring_spec import ScoringSpec

InterferenceIndex = Literal["faiss", "lsh"]
InputFormat = Literal["auto", "jsonl", "json", "parquet", "csv", "counterfact", "rome", "zsre"]
Weighting = Literal["none", "drift", "inverse_drift"]
ConflictAction = Literal["keep_first", "drop_all", "keep_all"]

# Fields that change no score: they are left out of the hash so that, say, a bigger batch or another
# runner reuses the same dataset identity.
_NOT_HASHED = {"probe_batch_size", "embed_batch_size"}
# The search knobs of the interference index not in use change no score either.
_INDEX_KNOBS = {"faiss": ("faiss_exact_max", "faiss_cell_size", "faiss_nprobe"),
                "lsh": ("lsh_bands", "lsh_bits", "lsh_max_bucket", "lsh_seed")}


class CurateConfig(ConfigSection, ScoringSpec):
    """How facts are read, scored and kept. Defaults run offline on a laptop."""

    # --- input -----------------------------------------------------------------------------------
    format: InputFormat = Field("auto", description="Input layout; 'auto' detects it per file.")
    max_prompt_chars: int = Field(2000, gt=0, le=1_000_000, description="Longer prompts are rejected.")
    max_target_chars: int = Field(300, gt=0, le=100_000, description="Longer targets are rejected.")

    # --- models (model, encoder, chat_template, probe_max_new_tokens: ScoringSpec) ----------------
    probe_batch_size: int = Field(16, gt=0, le=4096, description="Prompts per LM batch.")
    embed_batch_size: int = Field(64, gt=0, le=65_536, description="Texts per sentence-encoder batch.")

    # --- scores (drift_definition: ScoringSpec) ----------------------------------------------------
    neighbor_threshold: float = Field(0.9, ge=-1.0, le=1.0,
                                      description="Prompt cosine above which two facts are neighbours.")
    conflict_threshold: float = Field(0.95, ge=-1.0, le=1.0,
                                      description="Prompt cosine above which different targets conflict.")
    interference_index: InterferenceIndex = Field(
        "faiss", description="How prompt neighbours are found: faiss (one index on one worker; the "
        "fastest on one machine) or lsh (LSH blocking spread over the runner's workers; for clusters).")
    faiss_exact_max: int = Field(50_000, ge=0, le=100_000_000,
                                 description="faiss: up to this many facts the search is exact, above "
                                 "it an IVF index.")
    faiss_cell_size: int = Field(128, gt=0, le=1_000_000, description="faiss IVF: facts per cell.")
    faiss_nprobe: int = Field(8, gt=0, le=100_000,
                              description="faiss IVF: cells searched per fact (more: higher recall).")
    lsh_bands: int = Field(16, gt=0, le=256, description="LSH bands (more: higher recall, more work).")
    lsh_bits: int = Field(10, gt=0, le=30, description="Hyperplane bits per band (more: smaller buckets).")
    lsh_max_bucket: int = Field(200, gt=1, le=1_000_000, description="Buckets above this size are split further.")
    lsh_seed: int = Field(0, ge=0, lt=2**32, description="Seed of the random hyperplanes.")

    # --- policy ----------------------------------------------------------------------------------
    max_drift: float | None = Field(None, description="Drop facts whose drift is above this value.")
    max_drift_quantile: float | None = Field(
        None, gt=0.0, lt=1.0, description="Drop facts above this quantile of drift (e.g. 0.9).")
    max_interference: float | None = Field(None, description="Drop facts with interference above this.")
    max_interference_quantile: float | None = Field(
        None, gt=0.0, lt=1.0, description="Drop facts above this quantile of interference.")
    conflicts: ConflictAction = Field(
        "keep_first", description="keep_first: keep the earliest of conflicting facts; drop_all; keep_all.")
    weighting: Weighting = Field("none", description="Loss weight from drift: none, drift (harder = "
                                 "heavier) or inverse_drift (easier = heavier).")
    weight_strength: float = Field(1.0, ge=0.0, le=100.0, description="Exponent of the drift weighting.")
    weight_clip: tuple[float, float] = Field((0.2, 5.0), description="Raw weights are clipped to this.")

    @model_validator(mode="after")
    def _check_cross_fields(self) -> "CurateConfig":
        if self.max_drift is not None and self.max_drift_quantile is not None:
            raise ValueError("max_drift and max_drift_quantile are exclusive: give one of them")
        if self.max_interference is not None and self.max_interference_quantile is not None:
            raise ValueError("max_interference and max_interference_quantile are exclusive: give one")
        if self.conflict_threshold < self.neighbor_threshold:
            raise ValueError(f"conflict_threshold ({self.conflict_threshold}) must be >= "
                             f"neighbor_threshold ({self.neighbor_threshold})")
        lo, hi = self.weight_clip
        if not 0 < lo <= hi:
            raise ValueError(f"weight_clip must be 0 < low <= high, got {self.weight_clip}")
        return self

    def config_hash(self) -> str:
        """Hash of everything that changes a score or a decision."""
        unused = {k for index, knobs in _INDEX_KNOBS.items() if index != self.interference_index for k in knobs}
        data = {k: v for k, v in self.model_dump(mode="json").items() if k not in _NOT_HASHED | unused}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
