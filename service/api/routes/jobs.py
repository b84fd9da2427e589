"""``/jobs``: submit (202, idempotent), list, get, cancel, events, artifacts."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Response
from fastapi.responses import FileResponse

from schemas import storage
from schemas.config_file import first_line
from service.api.deps import JobDep, LayoutDep, Reader, SettingsDep, StoreDep, Writer
from service.api.models import Artifact, Curve, CurvePoint, Event, Job, JobCreate, JobStatus, Page
from service.datasets import Layout, PathError, confined, list_artifacts
from service.model_specs import ModelNotAllowed, check_job_model
from service.settings import Settings
from service.store import Conflict, JobStore, NotFound

router = APIRouter(prefix="/jobs", tags=["jobs"])
# Jobs go out as the store renders them (the ``Job`` model is their documented shape): no Python
# decoding and re-encoding of params and metrics on the hottest read.
Limit = Annotated[int, Query(ge=1, le=200, description="Page size.")]
Offset = Annotated[int, Query(ge=0, le=2**62, description="Rows to skip.")]
IdempotencyKey = Annotated[str | None, Header(
    min_length=1, max_length=255,
    description="A key of the client's choosing: the same key answers the same job, never a second one.")]


def invalid(field: str, message: str, value: Any = None) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors, naming the body field (dotted: 'curate.model')."""
    return HTTPException(status_code=422, detail=[
        {"type": "value_error", "loc": ["body", *field.split(".")], "msg": message, "input": value}])


@router.post("", status_code=202, response_model=Job, dependencies=[Writer],
             responses={202: {"description": "Queued (or, with a known Idempotency-Key, the earlier job)."},
                        401: {"description": "Missing or wrong bearer token."},
                        422: {"description": "Invalid settings or dataset; the detail names the field."}})
def submit_job(body: JobCreate, store: StoreDep, layout: LayoutDep, settings: SettingsDep,
               idempotency_key: IdempotencyKey = None) -> Response:
    """Queues a job: curate the dataset, train on its kept facts, evaluate. A worker runs it."""
    _check_models(body, layout, settings)
    _check_replay(body, layout)
    if body.output_url is not None:
        check_url("output_url", body.output_url, settings, "the job's output", writes=True)
    dataset = _source_dataset(body, store, layout, settings)
    params = body.params()
    if "format" not in body.curate.model_fields_set and dataset.get("format"):
        params["curate"]["format"] = dataset["format"]  # the format given at upload
    request_hash = hashlib.sha256(json.dumps({"dataset_id": dataset["id"], "params": params},
                                             sort_keys=True).encode()).hexdigest()
    try:
        row, created = store.create_job(dataset_id=dataset["id"], params=params, request_hash=request_hash,
                                        idempotency_key=idempotency_key)
    except Conflict as e:
        raise HTTPException(status_code=422, detail=str(e)) from None
    headers = {"Location": f"/jobs/{row['id']}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return _json(store.job_json(job_id=row["id"]), status_code=202, headers=headers)


def _check_replay(body: JobCreate, layout: Layout) -> None:
    """A job's replay file is one an operator placed under imports/, named relative to it (as
    ``dataset_path``): a job never reads an arbitrary server path."""
    if body.train.replay is None:
        return
    try:
        path = confined(layout.imports, body.train.replay)
    except PathError as e:
        raise invalid("train.replay", f"{e} (paths are relative to the data root's imports/ folder)",
                      body.train.replay) from None
    if not path.is_file():
        raise invalid("train.replay", f"{body.train.replay!r} is not a file under imports/", body.train.replay)


def _check_models(body: JobCreate, layout: Layout, settings: Settings) -> None:
    specs = [("curate", "model", body.curate.model, "lm"), ("curate", "encoder", body.curate.encoder, "encoder"),
             ("train", "model", body.train.model, "lm")]
    for section, key, spec, kind in specs:
        if spec is None:
            continue
        try:
            check_job_model(spec, kind=kind, layout=layout, allow_hub=settings.allow_hub_models)
        except ModelNotAllowed as e:
            raise invalid(f"{section}.{key}", str(e), spec) from None


def check_url(field: str, url: str, settings: Settings, role: str, *, writes: bool = False) -> None:
    """A 422 naming ``field`` unless the operator allows jobs at ``url`` and its store answers."""
    if storage.has_parent_segment(url):
        raise invalid(field, f"{url!r} holds a '..' segment; name the location without it", url)
    if not settings.allows_url(url):
        allowed = ", ".join(settings.object_store_prefixes) or "none are set"
        raise invalid(field, f"{url!r} is not under an object-store prefix this service allows jobs to use "
                             f"(BEACON_OBJECT_STORE_PREFIXES: {allowed})", url)
    try:
        storage.check_location(url, role)
        if writes:  # a job that cannot publish would find out only after hours of training
            storage.check_writable(storage.check_prefix(url, role), role)
    except ValueError as e:
        raise invalid(field, str(e), url) from None


def _source_dataset(body: JobCreate, store: JobStore, layout: Layout, settings: Settings) -> dict[str, Any]:
    if body.dataset_id is not None:
        try:
            dataset = store.get_dataset(dataset_id=body.dataset_id)
        except NotFound:
            raise invalid("dataset_id", f"dataset {body.dataset_id} does not exist; upload it with POST "
                                        "/datasets first", body.dataset_id) from None
        if dataset["kind"] != "raw":
            raise invalid("dataset_id", f"dataset {body.dataset_id} is already scored; a job starts from an "
                                        "uploaded (raw) dataset", body.dataset_id)
        return dataset
    if storage.is_url(body.dataset_path):
        return _url_dataset(body.dataset_path, store, settings)
    try:
        path = confined(layout.imports, body.dataset_path)
    except PathError as e:
        raise invalid("dataset_path", f"{e} (paths are relative to the data root's imports/ folder)",
                      body.dataset_path) from None
    if not path.is_file():
        raise invalid("dataset_path", f"{body.dataset_path!r} is not a file", body.dataset_path)
    st = path.stat()
    relative = path.relative_to(layout.root).as_posix()
    # The same file (path, size, mtime) is the same dataset, so replays do not pile up rows.
    digest = hashlib.sha256(f"import:{relative}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
    return store.insert_dataset(id=f"dst_{digest[:16]}", kind="raw", name=path.name, format=None,
                                path=relative, bytes=st.st_size)


def _url_dataset(url: str, store: JobStore, settings: Settings) -> dict[str, Any]:
    """The raw dataset of the object-store file ``url`` (read by the worker where it is)."""
    check_url("dataset_path", url, settings, "the job's dataset")
    try:
        size, mtime = storage.stat(url)
    except FileNotFoundError:
        raise invalid("dataset_path", f"{url!r} is not a file", url) from None
    except Exception as e:  # noqa: BLE001 - the store's own errors (permissions, a listing it refused)
        raise invalid("dataset_path", f"{url!r} cannot be read: {first_line(e)}", url) from None
    digest = hashlib.sha256(f"url:{url}:{size}:{mtime}".encode()).hexdigest()  # as an import: path, size, time
    return store.insert_dataset(id=f"dst_{digest[:16]}", kind="raw", name=url.rsplit("/", 1)[-1], format=None,
                                path=url, bytes=size)


@router.get("", response_model=Page[Job], dependencies=[Reader])
async def list_jobs(store: StoreDep, status: JobStatus | None = None, limit: Limit = 20,
                    offset: Offset = 0) -> Response:
    """Jobs, newest first; ``count`` is the number matching ``status``."""
    # A read on a WAL database never waits for writers: cheap enough for the event loop.
    return _json(store.list_jobs_json(status=status, limit=limit, offset=offset))


@router.get("/{job_id}", response_model=Job, dependencies=[Reader], responses={404: {"description": "No such job."}})
async def get_job(job: JobDep, store: StoreDep) -> Response:
    try:
        return _json(store.job_json(job_id=job["id"]))
    except NotFound as e:  # deleted between the two reads
        raise HTTPException(status_code=404, detail=str(e)) from None


@router.post("/{job_id}/cancel", status_code=202, response_model=Job, dependencies=[Writer],
             responses={404: {"description": "No such job."}, 409: {"description": "The job already ended."}})
def cancel_job(job: JobDep, store: StoreDep) -> Response:
    """Cancels a queued job at once; a running one stops within a second or two (watch its status)."""
    try:
        store.request_cancel(job_id=job["id"])
        return _json(store.job_json(job_id=job["id"]), status_code=202)
    except NotFound as e:
        raise HTTPException(status_code=404, detail=str(e)) from None
    except Conflict as e:
        raise HTTPException(status_code=409, detail=str(e)) from None


@router.get("/{job_id}/events", response_model=Page[Event], dependencies=[Reader],
            responses={404: {"description": "No such job."}})
async def job_events(job: JobDep, store: StoreDep, after: Annotated[int, Query(ge=0, le=2**62)] = 0,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> Page[Event]:
    """What happened to the job, oldest first; ``after`` = the last event id seen (for polling)."""
    rows, count = store.list_events(job_id=job["id"], after=after, limit=limit)
    return Page[Event](data=[Event.of(r) for r in rows], count=count)


@router.get("/{job_id}/artifacts", response_model=Page[Artifact], dependencies=[Reader],
            responses={404: {"description": "No such job."}})
def job_artifacts(job: JobDep, layout: LayoutDep) -> Page[Artifact]:
    """The files the job wrote so far (adapter, metrics, eval.parquet, logs)."""
    found = list_artifacts(layout.job_dir(job["id"]))
    return Page[Artifact](data=[Artifact(**a) for a in found], count=len(found))


@router.get("/{job_id}/artifacts/{path:path}", dependencies=[Reader], response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}}},
                       404: {"description": "No such job or file (or a path outside the job)."}})
def job_artifact(job: JobDep, path: str, layout: LayoutDep) -> FileResponse:
    """One file of the job, by the path ``/artifacts`` lists."""
    try:
        file = confined(layout.job_dir(job["id"]), path)
    except PathError as e:
        raise HTTPException(status_code=404, detail=f"no artifact {path!r}: {e}") from None
    if not file.is_file():
        raise HTTPException(status_code=404, detail=f"no artifact {path!r}: not a file")
    return FileResponse(file, filename=file.name)


@router.get("/{job_id}/curve", response_model=Curve, dependencies=[Reader],
            responses={404: {"description": "No such job."}})
def job_curve(job: JobDep, layout: LayoutDep) -> Curve:
    """The learning curve so far, from the run's per-fact training trace: per optimizer step, the share
    of the kept facts whose latest visit had them learned, and the step's mean loss (empty before the
    first checkpoint, or for a run with ``trace: false``)."""
    from schemas import Manifest

    trace = layout.run_dir(job["id"]) / "trace.parquet"
    kept = None
    if job.get("scored_dataset_id"):
        try:
            kept = Manifest.read(layout.dataset_dir(job["scored_dataset_id"])).counts.kept
        except (OSError, ValueError):
            kept = None
    try:
        st = trace.stat()
        points = _curve_points(str(trace), st.st_size, st.st_mtime_ns, kept)
    except OSError:  # none yet, being replaced or unreadable this instant: nothing to show yet
        points = ()
    return Curve(points=[CurvePoint(step=s, learned=f, loss=loss) for s, f, loss in points])


@functools.lru_cache(maxsize=64)
def _curve_points(trace: str, size: int, mtime_ns: int, kept: int | None) -> tuple:
    """``curve_points`` of the trace file as it is (size, mtime): the job page polls every 1.5 s, and
    the trace changes only at a checkpoint."""
    from service.report import curve_points

    return tuple(curve_points(Path(trace), kept))


def _json(content: bytes, *, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(content=content, status_code=status_code, headers=headers, media_type="application/json")
