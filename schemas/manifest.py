"""Manifest: what a curated dataset holds and how it was made (``D/manifest.json``).

``Manifest.read`` is the only way code reads a manifest: the trainer, the evaluation, the service and
the commands all go through it, so a missing or damaged file reads the same everywhere. A dataset may
be a local folder or an object-store URL (``schemas.storage``); its manifest names its data files
(``files``), and readers take them from there (``Manifest.data_files``), which is what makes the
object-store commit safe: a reader never lists a prefix that a run may be writing into.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas import storage
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
        raise ValueError(f"{role} {text}: {scheme}:// is not supported here yet (object-store URLs are, by "
                         "`beacon curate`, `train`, `run`, `eval`, `export`, `stats` and `query`); use a local folder")
    return Path(path)
# The points at which every score's distribution is summarised (manifest and dataset stats alike).
QUANTILES: tuple[float, ...] = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)


def quantile_label(q: float) -> str:
    """The key of a quantile in ``Manifest.quantiles``: ``q0.5`` for the median."""
    return f"q{q:g}"


# The scores whose histograms the stats show, and how many equal-width bins over [min, max].
HISTOGRAM_SCORES: tuple[str, ...] = ("drift", "interference", "risk")
HISTOGRAM_BINS = 20


def histogram_edges(lo: float, hi: float, bins: int = HISTOGRAM_BINS) -> list[float]:
    """The upper edges of ``bins`` equal-width bins over [lo, hi]; one bin when lo == hi. A value
    belongs to the first bin whose upper edge is >= it (``histogram_bin``; DuckDB's ``histogram``
    with these boundaries counts the same way), so the pipeline and the service agree to the row."""
    if not hi > lo:
        return [hi]
    return [lo + (hi - lo) * (i + 1) / bins for i in range(bins - 1)] + [hi]


def histogram_bin(edges: list[float], value: float) -> int:
    """The index of ``value``'s bin among ``edges`` (values beyond the last edge: the last bin)."""
    import bisect

    return min(bisect.bisect_left(edges, value), len(edges) - 1)


class HistogramBin(BaseModel):
    model_config = ConfigDict(extra="forbid")
    low: float
    high: float
    count: int


def histogram(lo: float, edges: list[float], counts: list[int]) -> list[HistogramBin]:
    """Bins from their upper ``edges`` and ``counts``, the first starting at ``lo``."""
    return [HistogramBin(low=low, high=high, count=n) for low, high, n in zip([lo] + edges[:-1], edges, counts)]


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
    histograms: dict[str, list[HistogramBin]] = Field(
        default_factory=dict, description="score -> equal-width bins over [min, max] of the scored rows "
        "(HISTOGRAM_SCORES, HISTOGRAM_BINS); empty in datasets written before it existed.")
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="Absolute thresholds the policy applied (quantiles resolved).")
    config: dict[str, Any] = Field(description="The curate config, every key resolved.")
    config_hash: str
    models: dict[str, ModelRef]
    runner: str
    timings: dict[str, float] = Field(default_factory=dict, description="Stage -> seconds.")
    files: dict[str, list[str]] = Field(
        default_factory=dict, description="'scored' / 'rejected' -> the dataset's Parquet files, relative "
        "to its folder. Readers take the files from here; empty in datasets written before it existed, "
        "whose files are the folder's scored/*.parquet and rejected/*.parquet.")

    @property
    def scoring(self) -> ScoringSpec:
        """The scoring choices (model, encoder, drift definition, ...) training and evaluation must share."""
        return ScoringSpec.of(self.config)

    @classmethod
    def path_in(cls, dataset_dir: str | Path) -> str | Path:
        """``dataset_dir/manifest.json``: a Path for a local folder, a URL for an object-store one."""
        if storage.is_url(dataset_dir):
            return storage.join(str(dataset_dir), MANIFEST_FILE)
        return Path(dataset_dir) / MANIFEST_FILE

    @classmethod
    def exists_in(cls, dataset_dir: str | Path) -> bool:
        path = cls.path_in(dataset_dir)
        return storage.exists(path) if storage.is_url(path) else Path(path).is_file()

    @classmethod
    def locate(cls, path: str | Path) -> str | Path:
        """The dataset folder a user means by ``path``: itself, or a `beacon run` folder's ``dataset/``.

        Raises: as ``locate_read``.
        """
        return cls.locate_read(path)[0]

    @classmethod
    def locate_read(cls, path: str | Path) -> "tuple[str | Path, Manifest]":
        """``locate(path)`` and the manifest found there, read once.

        Raises:
            FileNotFoundError: neither holds a manifest (the message names ``path``).
            ValueError: the manifest is damaged, or ``path``'s URL scheme has no filesystem installed.
        """
        storage.check_location(path, "dataset")
        path = str(path).rstrip("/") if storage.is_url(path) else Path(path)
        run_dataset = storage.join(path, "dataset") if storage.is_url(path) else path / "dataset"
        if cls.exists_in(run_dataset):
            if cls.exists_in(path):
                raise ValueError(f"{path} holds a dataset (manifest.json) and a `beacon run` "
                                 f"(dataset/manifest.json); name the one you mean: {run_dataset} for the run's")
            path = run_dataset
        return path, cls.read(path)

    def data_files(self, dataset_dir: str | Path, role: str) -> list[str]:
        """The ``role`` ('scored' or 'rejected') Parquet files of the dataset in ``dataset_dir``, as
        paths or URLs: the ones this manifest names (a dataset written before ``files`` existed: the
        folder's ``role/*.parquet``)."""
        if self.files:
            return [storage.join(dataset_dir, name) for name in self.files.get(role, [])]
        folder = storage.join(dataset_dir, role)
        return [f for f in storage.list_files(folder)
                if f.endswith(".parquet") and "/" not in storage.relative(f, folder)]

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
        storage.check_location(dataset_dir, "dataset")
        path = cls.path_in(dataset_dir)
        try:
            raw = storage.read_bytes(path)
        except (FileNotFoundError, NotADirectoryError):
            raise FileNotFoundError(f"{path} not found: is {dataset_dir} a dataset written by "
                                    "`beacon curate`?") from None
        try:
            manifest = cls.model_validate_json(raw)
        except ValidationError as e:
            from schemas.config_file import explain

            raise ValueError(f"{path} is not a valid manifest ({explain(e)}); re-run `beacon curate`") from None
        return manifest, hashlib.sha256(raw).hexdigest()

    def write(self, dataset_dir: str | Path) -> str | Path:
        """Writes ``dataset_dir/manifest.json``; returns its path."""
        path = self.path_in(dataset_dir)
        storage.write_bytes(path, self.model_dump_json(indent=2).encode())
        return path
