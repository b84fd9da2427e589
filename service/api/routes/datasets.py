"""``/datasets``: upload (streamed), list, get, stats and read-only SQL of scored datasets."""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, get_args

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from pipeline.config import InputFormat
from service.api.deps import (DatasetDep, LayoutDep, QuerySlotsDep, Reader, ScoredDatasetDep, SettingsDep,
                              StoreDep, Writer)
from service.api.models import Dataset, DatasetKind, DatasetStats, Page, QueryAnswer, QueryRequest
from service.api.upload import UploadError, receive_upload, safe_suffix
from service.datasets import DatasetUnreadable, Layout, PathError, cached_stats, dataset_stats, scored_files
from service.query import QueryError, QueryLimits, QueryTooLarge, run_query
from service.store import JobStore, new_id

router = APIRouter(prefix="/datasets", tags=["datasets"])
FORMATS = list(get_args(InputFormat))
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {
        "file": {"type": "string", "format": "binary",
                 "description": "Facts: JSONL, JSON, Parquet, CSV, CounterFact, ROME or zsRE."},
        "format": {"type": "string", "enum": FORMATS, "description": "Input layout (default: auto)."},
    }}}}}}


@router.post("", status_code=201, response_model=Dataset, dependencies=[Writer], openapi_extra=UPLOAD_BODY,
             responses={401: {"description": "Missing or wrong bearer token."},
                        413: {"description": "Larger than BEACON_MAX_UPLOAD_BYTES."},
                        415: {"description": "Not multipart/form-data."},
                        422: {"description": "No file, an empty one, or an unknown format."}})
async def upload_dataset(request: Request, response: Response, settings: SettingsDep, store: StoreDep,
                         layout: LayoutDep) -> Dataset:
    """Uploads a fact file (multipart field ``file``, optional ``format``); it becomes a raw dataset."""
    try:
        upload = await receive_upload(request, tmp_dir=layout.uploads, limit=settings.max_upload_bytes)
    except UploadError as e:
        raise HTTPException(status_code=e.status, detail=e.detail) from None
    try:
        fmt = upload.fields.get("format") or None
        if fmt is not None and fmt not in FORMATS:
            raise HTTPException(status_code=422, detail=[{
                "type": "enum", "loc": ["body", "format"], "input": fmt,
                "msg": f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}"}])
        dataset_id = new_id("dst")
        final = layout.uploads / f"{dataset_id}{safe_suffix(upload.filename)}"
        os.replace(upload.path, final)
    except BaseException:
        upload.path.unlink(missing_ok=True)
        raise
    row = await run_in_threadpool(
        store.insert_dataset, id=dataset_id, kind="raw", name=_display_name(upload.filename, dataset_id),
        format=None if fmt == "auto" else fmt, path=final.relative_to(layout.root).as_posix(),
        bytes=upload.bytes, sha256=upload.sha256)
    response.headers["Location"] = f"/datasets/{dataset_id}"
    return Dataset.of(row)


def _display_name(filename: str | None, fallback: str) -> str:
    """The client's file name, for display only (never used as a path)."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = re.sub(r"[\x00-\x1f\x7f]", "", name).strip()[:200]
    return name or fallback


@router.get("", response_model=Page[Dataset], dependencies=[Reader])
async def list_datasets(store: StoreDep, kind: DatasetKind | None = None,
                        limit: Annotated[int, Query(ge=1, le=200)] = 20,
                        offset: Annotated[int, Query(ge=0, le=2**62)] = 0) -> Page[Dataset]:
    """Datasets, newest first: uploads (raw) and curated outputs of jobs (scored)."""
    rows, count = store.list_datasets(kind=kind, limit=limit, offset=offset)
    return Page[Dataset](data=[Dataset.of(r) for r in rows], count=count)


@router.get("/{dataset_id}", response_model=Dataset, dependencies=[Reader],
            responses={404: {"description": "No such dataset."}})
async def get_dataset(dataset: DatasetDep) -> Dataset:
    return Dataset.of(dataset)


@router.get("/{dataset_id}/stats", response_model=DatasetStats, dependencies=[Reader],
            responses={404: {"description": "No such dataset."},
                       409: {"description": "A raw dataset, or its files cannot be read."}})
async def get_stats(dataset: ScoredDatasetDep, layout: LayoutDep, settings: SettingsDep) -> Response:
    """Counts by reason, drift (and which definition) and interference quantiles and histograms, the
    closest conflict pairs."""
    try:
        files = scored_files(layout, dataset, None)
        # Computed once per dataset (it never changes): from memory on the event loop, else in a thread.
        stats = cached_stats(dataset, files) if settings.stats_cache else None
        if stats is None:
            stats = await run_in_threadpool(dataset_stats, layout, dataset, files, threads=settings.query_threads,
                                            use_cache=settings.stats_cache)
    except PathError as e:
        raise HTTPException(status_code=404, detail=f"dataset {dataset['id']} has no data on disk: {e}") from None
    except DatasetUnreadable as e:
        raise HTTPException(status_code=409, detail=f"dataset {dataset['id']}: {e}") from None
    return Response(content=stats, media_type="application/json")


@router.post("/{dataset_id}/query", response_model=QueryAnswer, dependencies=[Reader],
             responses={400: {"description": "Not one read-only SELECT, or it failed or timed out."},
                        404: {"description": "No such dataset."}, 409: {"description": "A raw dataset."},
                        413: {"description": "The answer is larger than BEACON_QUERY_MAX_BYTES."},
                        429: {"description": "Too many queries running; retry."}})
def query_dataset(dataset: ScoredDatasetDep, body: QueryRequest, store: StoreDep, layout: LayoutDep,
                  settings: SettingsDep, slots: QuerySlotsDep, job_id: Annotated[str | None, Query(
                      pattern=r"^job_[0-9a-f]{16}$", description="Whose evaluation `eval` shows "
                                                             "(default: the latest succeeded job)")] = None
                  ) -> QueryAnswer:
    """One SELECT over views ``scored``, ``rejected`` and ``eval`` (and the dataset's own Parquet files);
    functions that read the server's files, settings or catalog are refused."""
    files = _files(store, layout, dataset, job_id)
    if not slots.acquire(blocking=False):
        raise HTTPException(status_code=429, detail=f"{settings.query_concurrency} queries are running; retry "
                                                    "in a moment", headers={"Retry-After": "1"})
    try:
        limits = QueryLimits(row_limit=min(body.limit or settings.query_row_limit, settings.query_row_limit),
                             timeout_s=settings.query_timeout_seconds, memory_limit=settings.query_memory_limit,
                             threads=settings.query_threads, max_bytes=settings.query_max_bytes,
                             spill_bytes=settings.query_spill_bytes)
        result = run_query(body.sql, files, root=layout.root, limits=limits)
    except QueryTooLarge as e:
        raise HTTPException(status_code=413, detail=str(e)) from None
    except QueryError as e:
        raise HTTPException(status_code=400, detail=str(e)) from None
    finally:
        slots.release()
    return QueryAnswer(columns=result.columns, types=result.types, rows=result.rows,
                       truncated=result.truncated, elapsed_ms=result.elapsed_ms)


def _files(store: JobStore, layout: Layout, dataset: dict[str, Any], job_id: str | None):
    found = store.job_of_dataset(scored_dataset_id=dataset["id"], job_id=job_id)
    if job_id is not None and found is None:
        raise HTTPException(status_code=404, detail=f"job {job_id} did not use dataset {dataset['id']}")
    job_id = found
    try:
        return scored_files(layout, dataset, layout.run_dir(job_id) if job_id else None)
    except PathError as e:
        raise HTTPException(status_code=404, detail=f"dataset {dataset['id']} has no data on disk: {e}") from None
