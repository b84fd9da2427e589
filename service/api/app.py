"""``create_app()``: the FastAPI application of ``beacon serve``.

Light on purpose: nothing here imports torch, transformers or Beam, so the API starts in a second and
``GET /jobs`` costs a SQLite read. Long work never runs in a request: a worker process does it.
"""

from __future__ import annotations

import logging
import threading

from fastapi import FastAPI

from scoring.models import beacon_version
from service.api.routes import datasets, health, jobs
from service.datasets import Layout
from service.settings import Settings, get_settings
from service.store import Store

log = logging.getLogger(__name__)

DESCRIPTION = """Curate fact datasets, train LoRA adapters on them and see what was learned.

`POST /datasets` an upload, `POST /jobs` with its id and settings, follow `GET /jobs/{id}` (status,
stage, progress) and `/events`, fetch `/artifacts`; every scored dataset has `/stats` and a read-only
SQL `/query`. Requests that start, cancel or upload anything need `Authorization: Bearer <token>`."""


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API over ``settings`` (default: from the environment); the job store is migrated here.

    Raises:
        ValueError: no API token outside dev mode.
    """
    settings = settings or get_settings()
    settings.check_serving()
    if settings.token() is None:
        log.warning("dev mode without BEACON_API_TOKEN: anyone who reaches this server can start jobs")
    store = Store(settings.database_path)
    store.migrate()
    app = FastAPI(title="Beacon", version=beacon_version(), description=DESCRIPTION)
    app.state.settings = settings
    app.state.store = store
    app.state.layout = Layout.at(settings.data_dir)
    app.state.query_slots = threading.BoundedSemaphore(settings.query_concurrency)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(datasets.router)
    return app
