"""Request and response bodies of the HTTP API (the OpenAPI schema is generated from these)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.config import CurateConfig
from schemas import DriftDefinition
from trainer.config import EvalConfig, TrainConfig

JobStatus = Literal["queued", "curating", "training", "evaluating", "succeeded", "failed", "cancelled"]
DatasetKind = Literal["raw", "scored"]
T = TypeVar("T")
JOB_ID = r"^job_[0-9a-f]{16}$"
DATASET_ID = r"^dst_[0-9a-f]{16}$"


class Page(BaseModel, Generic[T]):
    """A page of a list: ``count`` is the total number of matches, ``data`` this page of them."""

    data: list[T]
    count: int


# --- jobs ------------------------------------------------------------------------------------------

class CurvePoint(BaseModel):
    step: int
    learned: float = Field(description="Share of the kept facts whose latest visit had them learned.")
    loss: float = Field(description="Mean training loss of the step's visits.")


class Curve(BaseModel):
    """What ``GET /jobs/{id}/curve`` answers."""

    points: list[CurvePoint]


class JobCreate(BaseModel):
    """A job: curate a dataset, train a LoRA adapter on its kept facts, evaluate it."""

    model_config = ConfigDict(extra="forbid")
    dataset_id: str | None = Field(None, pattern=DATASET_ID, description="An uploaded (raw) dataset.")
    dataset_path: str | None = Field(
        None, max_length=1024, description="Or a file under the data root's imports/ folder, relative to it "
                                           "(e.g. 'facts.jsonl'; never absolute, never '..'), or an "
                                           "object-store URL under one of the service's "
                                           "BEACON_OBJECT_STORE_PREFIXES (e.g. 's3://team/in/facts.jsonl').")
    output_url: str | None = Field(
        None, max_length=1024, description="Also publish the job's results under OUTPUT_URL/<job id>/: the "
                                           "curated dataset (dataset/, committed as `beacon curate --out URL` "
                                           "commits) and the run without its checkpoints (run/, its "
                                           "files.json written last). A URL under BEACON_OBJECT_STORE_PREFIXES.")
    curate: CurateConfig = Field(default_factory=CurateConfig, description="As `beacon curate` flags.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="As `beacon train` flags.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="As `beacon eval` flags.")

    @model_validator(mode="after")
    def _one_dataset(self) -> "JobCreate":
        if (self.dataset_id is None) == (self.dataset_path is None):
            raise ValueError("give exactly one of dataset_id and dataset_path")
        return self

    def params(self) -> dict[str, Any]:
        """The settings as stored with the job: every default resolved now, so a resume sees the same."""
        train = self.train.model_copy(update={"progress": False})
        evaluation = self.eval.model_copy(update={"progress": False})
        params = {"curate": self.curate.model_dump(mode="json"), "train": train.model_dump(mode="json"),
                  "eval": evaluation.model_dump(mode="json")}
        if self.output_url is not None:
            params["output_url"] = self.output_url.rstrip("/")
        return params


class Artifact(BaseModel):
    path: str = Field(description="Relative to the job; GET /jobs/{id}/artifacts/{path} fetches it.")
    bytes: int


class Job(BaseModel):
    """A job as every /jobs endpoint answers it (rendered by the store: ``service.store.JOB_JSON``)."""

    id: str
    idempotency_key: str | None
    status: JobStatus
    stage: str | None = Field(description="The stage running, or the last one reached.")
    progress: float = Field(ge=0, le=1)
    dataset_id: str
    scored_dataset_id: str | None = Field(description="The curated dataset, once curation finished.")
    params: dict[str, Any]
    error: str | None
    metrics: dict[str, Any] | None
    artifacts: list[Artifact]
    cancel_requested: bool
    attempts: int
    worker_id: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class Event(BaseModel):
    id: int
    at: datetime
    kind: str
    message: str
    data: dict[str, Any] | None

    @classmethod
    def of(cls, row: dict[str, Any]) -> "Event":
        data = row["data"]
        if data is not None and not isinstance(data, dict):  # a row written by hand or an older Beacon
            data = {"value": data}
        return cls(id=row["id"], at=_time(row["at"]), kind=row["kind"], message=row["message"], data=data)


# --- datasets --------------------------------------------------------------------------------------

class Dataset(BaseModel):
    id: str
    kind: DatasetKind = Field(description="raw: an upload; scored: a curated dataset (stats and query).")
    name: str
    format: str | None
    bytes: int | None
    sha256: str | None
    rows: int | None
    source_dataset_id: str | None
    job_id: str | None
    created_at: datetime

    @classmethod
    def of(cls, row: dict[str, Any]) -> "Dataset":
        return cls(id=row["id"], kind=row["kind"], name=row["name"], format=row["format"], bytes=row["bytes"],
                   sha256=row["sha256"], rows=row["rows"], source_dataset_id=row["source_dataset_id"],
                   job_id=row["job_id"], created_at=_time(row["created_at"]))


class HistogramBin(BaseModel):
    low: float
    high: float
    count: int


class ScoreSummary(BaseModel):
    min: float | None
    max: float | None
    mean: float | None
    quantiles: dict[str, float | None] = Field(
        description="'q0.5' -> the median, ... (q0 to q1), as the manifest recorded them.")
    histogram: list[HistogramBin] = Field(description="20 equal-width bins from min to max (1 if all equal).")


class DriftSummary(ScoreSummary):
    definition: DriftDefinition = Field(description="Which drift definition the dataset's `drift` holds.")


class RiskSummary(ScoreSummary):
    threshold: float = Field(description="risk at or above this counts as at risk (scoring.risk.AT_RISK).")
    at_risk: int = Field(description="Kept facts at risk of not being learned by the mid budget.")


class ConflictEnd(BaseModel):
    fact_id: str
    prompt: str | None
    target: str | None
    interference: float | None


class ConflictPair(BaseModel):
    a: ConflictEnd
    b: ConflictEnd
    interference: float | None = Field(description="The lower of the two facts' interference.")


class DatasetStats(BaseModel):
    """What ``GET /datasets/{id}/stats`` answers: DuckDB over the scored Parquet, computed once."""

    rows: int
    counts: dict[str, Any] = Field(description="scored, kept, rejected, with_conflicts, by_reason {reason: n}.")
    by_reason: dict[str, dict[str, float | int | None]] = Field(
        description="reason -> n, drift_mean, interference_mean.")
    drift: DriftSummary
    interference: ScoreSummary
    risk: RiskSummary | None = Field(description="The risk column (None: curated before it existed).")
    top_conflicts: list[ConflictPair] = Field(description="The 20 conflict pairs with the closest prompts.")
    manifest: dict[str, Any] | None = Field(description="Counts, thresholds and ids from manifest.json.")
    signature: str = Field(description="Changes when the dataset's files change.")


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sql: str = Field(min_length=1, max_length=100_000,
                     description="One SELECT over the views scored, rejected and eval.",
                     examples=["select reason, count(*) from scored group by reason"])
    limit: int | None = Field(None, gt=0, le=10_000_000,
                              description="Row limit, at most the server's (default: it).")


class QueryAnswer(BaseModel):
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    truncated: bool = Field(description="True when the query had more rows than the limit.")
    elapsed_ms: float


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    schema_version: int


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=timezone.utc)
