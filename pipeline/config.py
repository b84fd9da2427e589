"""CurateConfig: every knob of ``beacon curate``, as a CLI flag and as a key of a config file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

InputFormat = Literal["auto", "jsonl", "json", "parquet", "csv", "counterfact", "rome", "zsre"]
DriftDefinition = Literal["sentence", "lm", "expected", "rank"]
Weighting = Literal["none", "drift", "inverse_drift"]
ConflictAction = Literal["keep_first", "drop_all", "keep_all"]

# Fields that change no score: they are left out of the hash so that, say, a bigger batch or another
# runner reuses the same dataset identity.
_NOT_HASHED = {"probe_batch_size", "embed_batch_size"}


class CurateConfig(BaseModel):
    """How facts are read, scored and kept. Defaults run offline on a laptop."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- input -----------------------------------------------------------------------------------
    format: InputFormat = Field("auto", description="Input layout; 'auto' detects it per file.")
    max_prompt_chars: int = Field(2000, gt=0, description="Longer prompts are rejected.")
    max_target_chars: int = Field(300, gt=0, description="Longer targets are rejected.")

    # --- models ----------------------------------------------------------------------------------
    model: str = Field("bundled:smollm2-135m-instruct",
                       description="Base LM: 'bundled:<name>', a Hugging Face id or a local path.")
    encoder: str = Field("bundled:all-minilm-l6-v2",
                         description="Sentence encoder: 'bundled:<name>', a HF id or a local path.")
    probe_batch_size: int = Field(16, gt=0, description="Prompts per LM batch.")
    probe_max_new_tokens: int = Field(8, gt=0, le=64, description="Greedy answer length in tokens.")
    chat_template: bool = Field(False, description="Wrap prompts in the LM's chat template.")
    embed_batch_size: int = Field(64, gt=0, description="Texts per sentence-encoder batch.")

    # --- scores ----------------------------------------------------------------------------------
    drift_definition: DriftDefinition = Field(
        "rank", description="Which drift variant fills the `drift` column (all are written); rank "
                            "predicts best what LoRA fails to learn (BENCHMARKS.md).")
    neighbor_threshold: float = Field(0.9, ge=-1.0, le=1.0,
                                      description="Prompt cosine above which two facts are neighbours.")
    conflict_threshold: float = Field(0.95, ge=-1.0, le=1.0,
                                      description="Prompt cosine above which different targets conflict.")
    lsh_bands: int = Field(16, gt=0, description="LSH bands (more: higher recall, more work).")
    lsh_bits: int = Field(10, gt=0, le=30, description="Hyperplane bits per band (more: smaller buckets).")
    lsh_max_bucket: int = Field(200, gt=1, description="Buckets above this size are split further.")
    lsh_seed: int = Field(0, description="Seed of the random hyperplanes.")

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
    weight_strength: float = Field(1.0, ge=0.0, description="Exponent of the drift weighting.")
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
        data = {k: v for k, v in self.model_dump(mode="json").items() if k not in _NOT_HASHED}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> CurateConfig:
    """Read a JSON/YAML config file (or none), then apply CLI overrides.

    Raises:
        ValueError: the file is missing, unreadable, or a key/value is invalid (named in the message).
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = read_config_file(path)
        data = data.get("curate", data)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return CurateConfig(**data)
    except ValidationError as e:
        raise ValueError(f"invalid curate config: {_explain(e)}") from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A config file as a dict: JSON, or YAML when the name ends in .yaml/.yml."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file not found: {p}")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse error is the user's file
        raise ValueError(f"config file {p} is not valid {'YAML' if p.suffix in ('.yaml', '.yml') else 'JSON'}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {p} must hold a mapping of keys, got {type(data).__name__}")
    return data


def _explain(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "config"
        parts.append(f"{loc}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(parts)
