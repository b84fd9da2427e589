"""What routes are given: settings, the store, the data layout, the bearer-token checks, and the job or
dataset a path names (resolved here, or a 404: routes never repeat the lookup).

All are ``async``: a sync dependency costs a thread-pool hop on every request, even a cheap read.
"""

from __future__ import annotations

import hmac
import threading
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.api.models import DATASET_ID, JOB_ID
from service.datasets import Layout
from service.settings import Settings
from service.store import JobStore, NotFound

_bearer = HTTPBearer(auto_error=False, description="BEACON_API_TOKEN")


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> JobStore:
    return request.app.state.store


async def get_layout(request: Request) -> Layout:
    return request.app.state.layout


async def get_query_slots(request: Request) -> threading.BoundedSemaphore:
    return request.app.state.query_slots


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
LayoutDep = Annotated[Layout, Depends(get_layout)]
QuerySlotsDep = Annotated[threading.BoundedSemaphore, Depends(get_query_slots)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _check(settings: Settings, credentials: HTTPAuthorizationCredentials | None) -> None:
    expected = settings.token()
    if expected is None:  # dev mode without a token: the server said so loudly at start
        return
    given = credentials.credentials if credentials else ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong bearer token: send 'Authorization: Bearer <BEACON_API_TOKEN>'",
            headers={"WWW-Authenticate": "Bearer"})


async def require_token(settings: SettingsDep, credentials: Credentials) -> None:
    """Every request that starts, cancels or uploads anything."""
    _check(settings, credentials)


async def require_read(settings: SettingsDep, credentials: Credentials) -> None:
    """Reads: open unless BEACON_PROTECT_READS is set."""
    if settings.protect_reads:
        _check(settings, credentials)


Writer = Depends(require_token)
Reader = Depends(require_read)


# --- the job or dataset a path names --------------------------------------------------------------

JobId = Annotated[str, Path(pattern=JOB_ID, description="A job id (job_ + 16 hex digits).")]
DatasetId = Annotated[str, Path(pattern=DATASET_ID, description="A dataset id (dst_ + 16 hex digits).")]


async def existing_job(job_id: JobId, store: StoreDep) -> dict[str, Any]:
    try:
        return store.get_job(job_id=job_id)
    except NotFound as e:
        raise HTTPException(status_code=404, detail=str(e)) from None


async def existing_dataset(dataset_id: DatasetId, store: StoreDep) -> dict[str, Any]:
    try:
        return store.get_dataset(dataset_id=dataset_id)
    except NotFound as e:
        raise HTTPException(status_code=404, detail=str(e)) from None


async def scored_dataset(dataset: Annotated[dict[str, Any], Depends(existing_dataset)]) -> dict[str, Any]:
    if dataset["kind"] != "scored":
        raise HTTPException(status_code=409, detail=f"dataset {dataset['id']} is a raw upload; stats and queries "
                                                    "need a scored dataset (a job's scored_dataset_id)")
    return dataset


JobDep = Annotated[dict[str, Any], Depends(existing_job)]
DatasetDep = Annotated[dict[str, Any], Depends(existing_dataset)]
ScoredDatasetDep = Annotated[dict[str, Any], Depends(scored_dataset)]
