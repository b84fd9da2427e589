"""``create_app()``: the FastAPI application of ``beacon serve``.

Light on purpose: nothing here imports torch, transformers or Beam, so the API starts in a second and
``GET /jobs`` costs a SQLite read. Long work never runs in a request: a worker process does it.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from scoring.models import beacon_version
from service.api.routes import datasets, health, jobs, pages
from service.api.upload import remove_stale_uploads
from service.query import remove_stale_spill
from service.datasets import Layout
from service.settings import Settings, get_settings
from service.store import open_store

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
    store = open_store(settings.database_url)
    store.migrate()
    # /docs from the package's own Swagger UI assets (FastAPI's default loads them from a CDN).
    app = FastAPI(title="Beacon", version=beacon_version(), description=DESCRIPTION, docs_url=None,
                  redoc_url=None)
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_assets()), name="docs-assets")
    app.add_api_route("/docs", api_docs, include_in_schema=False)
    app.state.settings = settings
    app.state.store = store
    app.state.layout = Layout.at(settings.data_dir)
    removed = remove_stale_uploads(app.state.layout.uploads, settings.stale_upload_seconds)
    removed_spill = remove_stale_spill(app.state.layout.root, settings.stale_upload_seconds)
    if removed or removed_spill:
        log.info("removed %d upload temp file(s) and %d query spill folder(s) left by a killed server",
                 removed, removed_spill)
    app.state.query_slots = threading.BoundedSemaphore(settings.query_concurrency)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(RecursionError, too_deep)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(datasets.router)
    app.mount("/static", StaticFiles(directory=pages.static_folder()), name="static")
    app.include_router(pages.router)
    return app


DOCS_ASSETS = "/docs-assets"


def swagger_ui_assets() -> str:
    """The Swagger UI files (5.x, which renders OpenAPI 3.1) that the `swagger-ui-py` package ships."""
    import importlib.util
    import os

    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is missing; reinstall Beacon (make setup)")
    return os.path.join(spec.submodule_search_locations[0], "static")


async def api_docs(request: Request) -> HTMLResponse:
    """The OpenAPI UI, every asset served by this server: it works with no network."""
    return get_swagger_ui_html(openapi_url=request.app.openapi_url, title="Beacon API",
                               swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                               swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                               swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png")


SHOWN_CHARS = 200  # of a refused string value echoed in a 422: a 10 MB field is not sent back whole


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, with the offending value shown even when JSON cannot hold it (NaN, Infinity),
    and a long string shown by its start and length."""
    return JSONResponse(status_code=422, content={"detail": _showable(jsonable_encoder(exc.errors()))})


async def too_deep(request: Request, exc: RecursionError) -> JSONResponse:
    """A body nested past Python's recursion limit is the client's error, not the server's."""
    return JSONResponse(status_code=422, content={"detail": [
        {"type": "json_invalid", "loc": ["body"], "msg": "the JSON body is nested too deeply", "input": None}]})


def _showable(value: Any) -> Any:
    if isinstance(value, str) and len(value) > SHOWN_CHARS:
        return f"{value[:SHOWN_CHARS]}… ({len(value):,} characters)"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _showable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_showable(v) for v in value]
    return value
