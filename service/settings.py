"""Settings of the service (API, worker): read once from ``BEACON_*`` environment variables.

Nothing else in ``service/`` reads the environment: the API, the worker and the stage processes take
a ``Settings`` (or plain paths derived from it).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from schemas import storage


class Settings(BaseSettings):
    """Every knob of ``beacon serve`` and ``beacon worker``; env var = ``BEACON_`` + the upper-case name."""

    model_config = SettingsConfigDict(env_prefix="BEACON_", extra="ignore")

    # --- where things live -----------------------------------------------------------------------
    data_dir: Path = Field(Path("beacon-data"), description="Root of uploads/, datasets/, jobs/, imports/ "
                                                            "and the job store (shared by API and workers).")
    database: str | None = Field(None, description="Job store: a postgresql://user:password@host:port/db URL "
                                                   "(workers on several hosts), or an SQLite file (a path or "
                                                   "sqlite:PATH; one host); default DATA_DIR/beacon.db.")

    # --- HTTP ------------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address `beacon serve` binds.")
    port: int = Field(8000, ge=0, le=65535, description="Port `beacon serve` binds.")
    api_token: SecretStr | None = Field(None, description="Bearer token every mutating request must carry.")
    dev_mode: bool = Field(False, description="Allow a server without a token (local development only).")
    protect_reads: bool = Field(False, description="Require the token on read endpoints too.")
    max_upload_bytes: int = Field(512 * 2**20, gt=0, description="Largest accepted dataset upload.")
    stale_upload_seconds: float = Field(3600.0, gt=0, description="At start, upload temp files untouched "
                                                                   "this long (a killed upload) are removed.")
    allow_hub_models: bool = Field(False, description="Let jobs name Hugging Face hub models (the worker "
                                                      "downloads them); bundled: and models/ always work.")
    object_store_prefixes: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Object-store URLs (comma-separated, e.g. s3://team/beacon/) under "
                                          "which a job may read its dataset_path and publish to its output_url; "
                                          "empty: jobs use the data root only. Credentials and endpoint come "
                                          "from the API's and workers' environment (for S3: AWS_*).")

    # --- worker ----------------------------------------------------------------------------------
    lease_seconds: float = Field(30.0, ge=1.0, description="A claimed job is the worker's this long "
                                                           "without a heartbeat; then another may take it.")
    heartbeat_seconds: float | None = Field(None, gt=0, description="Lease renewal period; default lease/3.")
    poll_seconds: float = Field(1.0, gt=0, description="How often an idle worker looks for queued jobs.")
    cancel_check_seconds: float = Field(0.5, gt=0, description="How often a running job checks for cancel.")
    cancel_grace_seconds: float = Field(5.0, ge=0, description="SIGTERM to SIGKILL delay of a cancelled stage.")
    max_attempts: int = Field(3, ge=1, description="Claims of one job (worker deaths) before it fails.")

    # --- queries ---------------------------------------------------------------------------------
    query_row_limit: int = Field(1000, gt=0, description="Most rows a query answers (more: truncated).")
    query_timeout_seconds: float = Field(5.0, gt=0, description="A query running longer is interrupted.")
    query_memory_limit: str = Field("512MB", description="DuckDB memory_limit of one query.")
    query_threads: int = Field(2, gt=0, description="DuckDB threads of one query or stats computation.")
    query_concurrency: int = Field(4, gt=0, description="Queries run at once; more get 429.")
    query_max_bytes: int = Field(8 * 2**20, gt=0, description="Largest query answer in bytes (more: 413).")
    query_spill_bytes: int = Field(2**30, gt=0, description="Disk a query may spill to, under DATA_DIR/tmp/.")
    stats_cache: bool = Field(True, description="Keep computed dataset stats (datasets are immutable).")

    @field_validator("object_store_prefixes", mode="before")
    @classmethod
    def _split_prefixes(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("object_store_prefixes")
    @classmethod
    def _check_prefixes(cls, prefixes: list[str]) -> list[str]:
        checked = []
        for prefix in prefixes:
            head, _, rest = prefix.partition("://")
            if not head or not rest.split("/", 1)[0]:
                raise ValueError(f"object_store_prefixes: {prefix!r} is not an object-store URL with a bucket "
                                 "(e.g. s3://bucket/beacon/)")
            checked.append(prefix.rstrip("/") + "/")  # s3://b/team allows s3://b/team/x, not s3://b/team-x
        return checked

    def allows_url(self, url: str) -> bool:
        """Whether a job may read or write ``url`` (a file, or a folder with or without its trailing
        slash): at or under a configured prefix, with no ``..`` segment."""
        folder = url.rstrip("/") + "/"
        return not storage.has_parent_segment(url) and any(
            folder.startswith(prefix) for prefix in self.object_store_prefixes)

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        if self.heartbeat_seconds is not None and self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError(f"heartbeat_seconds ({self.heartbeat_seconds}) must be below "
                             f"lease_seconds ({self.lease_seconds})")
        return self

    @property
    def database_url(self) -> str:
        """What ``service.store.open_store`` takes: the configured store, or SQLite in the data dir."""
        return self.database or str(self.data_dir / "beacon.db")

    @property
    def heartbeat_every(self) -> float:
        return self.heartbeat_seconds or self.lease_seconds / 3

    def token(self) -> str | None:
        """The API token, or None when none is configured."""
        value = self.api_token.get_secret_value() if self.api_token else ""
        return value or None

    def check_serving(self) -> None:
        """Raises ValueError when the API would start unprotected outside dev mode."""
        if self.token() is None and not self.dev_mode:
            raise ValueError("BEACON_API_TOKEN is not set: set it (e.g. to `openssl rand -hex 32`) or "
                             "start a local, unprotected server with --dev (BEACON_DEV_MODE=1)")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings()
