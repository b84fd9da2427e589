"""``/healthz``: the process answers and the job store opens."""

from __future__ import annotations

import sqlite3

from fastapi import APIRouter, HTTPException

from service.api.deps import StoreDep
from scoring.models import beacon_version
from service.api.models import Health
from service.store import SCHEMA_VERSION

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, responses={503: {"description": "The job store is unavailable."}})
async def healthz(store: StoreDep) -> Health:
    try:
        store.ping()
    except sqlite3.Error as e:
        raise HTTPException(status_code=503, detail=f"job store unavailable: {e}") from None
    return Health(status="ok", version=beacon_version(), schema_version=SCHEMA_VERSION)
