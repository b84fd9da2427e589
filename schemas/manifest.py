"""Manifest: what a curated dataset holds and how it was made (``D/manifest.json``).

``Manifest.read`` is the only way code reads a manifest: the trainer, the evaluation, the service and
the commands all go through it, so a missing or damaged file reads the same everywhere.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.scoring_spec import ScoringSpec

MANIFEST_FILE = "manifest.json"


def local_folder(path: str | Path, role: str) -> Path:
    """``path`` as a local folder, or an error for a URL: a ``pathlib.Path`` collapses ``s3://b/x`` into
    the local folder ``s3:/b/x``, which would silently write (or look for) a dataset in the wrong place.

    Raises:
        ValueError: ``path`` is a URL (the message names it and what to do instead).
    """
    text = str(path)
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise ValueError(f"{role} {text}: datasets on {scheme}:// are not supported yet (inputs are: "
                         "`beacon curate s3://…/facts.jsonl` reads through Beam's filesystems); use a local "
                         "folder, and copy it to or from the object store with its own tool")
    return Path(path)
# The points at which every score's distribution is summarised (manifest and dataset stats alike).
QUANTILES: tuple[float, ...] = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)


def quantile_label(q: float) -> str:
    """The key of a quantile in ``Manifest.quantiles``: ``q0.5`` for the median."""
    return f"q{q:g}"


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
    at_risk: int = Field(0, ge=0, description="Kept facts whose ``risk`` is at least scoring.risk.AT_RISK "
                                              "(likely not learned at the mid budget).")


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
        default_factory=dict, description="score -> {'q0.5': value, ...} over scored rows, at QUANTILES.")
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="Absolute thresholds the policy applied (quantiles resolved).")
    config: dict[str, Any] = Field(description="The curate config, every key resolved.")
    config_hash: str
    models: dict[str, ModelRef]
    runner: str
    timings: dict[str, float] = Field(default_factory=dict, description="Stage -> seconds.")

    @property
    def scoring(self) -> ScoringSpec:
        """The scoring choices (model, encoder, drift definition, ...) training and evaluation must share."""
        return ScoringSpec.of(self.config)

    @classmethod
    def path_in(cls, dataset_dir: str | Path) -> Path:
        return local_folder(dataset_dir, "dataset") / MANIFEST_FILE

    @classmethod
    def exists_in(cls, dataset_dir: str | Path) -> bool:
        return cls.path_in(dataset_dir).is_file()

    @classmethod
    def locate(cls, path: str | Path) -> Path:
        """The dataset folder a user means by ``path``: itself, or a `beacon run` folder's ``dataset/``.

        Raises:
            FileNotFoundError: neither holds a manifest (the message names ``path``).
            ValueError: the manifest is damaged.
        """
        path = local_folder(path, "dataset")
        if cls.exists_in(path / "dataset"):
            if cls.exists_in(path):
                raise ValueError(f"{path} holds a dataset (manifest.json) and a `beacon run` "
                                 f"(dataset/manifest.json); name the one you mean: {path / 'dataset'} for the run's")
            path = path / "dataset"
        cls.read(path)
        return path

    @classmethod
    def read(cls, dataset_dir: str | Path) -> "Manifest":
        """The manifest of the dataset in ``dataset_dir``.

        Strict: a manifest with a missing or unknown field is an error naming it, the same for the
        trainer, the service and the commands (curate again to write a current one).

        Raises:
            FileNotFoundError: there is no manifest (the folder is not a curated dataset).
            ValueError: the manifest is not valid JSON or not a manifest; the message names the field.
        """
        return cls.read_with_digest(dataset_dir)[0]

    @classmethod
    def read_with_digest(cls, dataset_dir: str | Path) -> "tuple[Manifest, str]":
        """The manifest and the sha256 of its bytes (what a training run records to detect a re-curation)."""
        path = cls.path_in(dataset_dir)
        try:
            raw = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise FileNotFoundError(f"{path} not found: is {Path(dataset_dir)} a dataset written by "
                                    "`beacon curate`?") from None
        try:
            manifest = cls.model_validate_json(raw)
        except ValidationError as e:
            from schemas.config_file import explain

            raise ValueError(f"{path} is not a valid manifest ({explain(e)}); re-run `beacon curate`") from None
        return manifest, hashlib.sha256(raw).hexdigest()

    def write(self, dataset_dir: str | Path) -> Path:
        """Writes ``dataset_dir/manifest.json``; returns its path."""
        path = self.path_in(dataset_dir)
        path.write_text(self.model_dump_json(indent=2))
        return path
