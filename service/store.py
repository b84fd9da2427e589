"""The job store: jobs, their events and the dataset registry; SQLite here (WAL, one host),
PostgreSQL in ``service.store_pg`` (several hosts). ``open_store`` picks one from BEACON_DATABASE.

The API and any number of workers on the same host share one database file. Every write that reads
before it writes runs in ``BEGIN IMMEDIATE``, so two processes never decide on the same stale row; a
worker's writes to a job it runs carry its lease token, so a worker that lost its lease cannot touch
the job any more. The schema (``service.store_schema``) is created and migrated by whichever
process opens the store first.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from schemas import storage
from service.jsonsafe import dumps
from service.store_schema import JOB_JSON, MIGRATIONS, SCHEMA_VERSION, UNREADABLE

TERMINAL = ("succeeded", "failed", "cancelled")
_JSON_COLUMNS = ("params", "metrics", "artifacts", "data")


class NotFound(LookupError):
    """No row with that id."""


class Conflict(ValueError):
    """The request contradicts the row's state (cancel a finished job, reuse an idempotency key)."""


class LeaseLost(RuntimeError):
    """The worker's lease on a job expired and the job moved on without it."""


@dataclass(frozen=True)
class Claim:
    """A job a worker holds: the row as claimed, and the token its writes must carry."""

    job: dict[str, Any]
    token: str

    @property
    def job_id(self) -> str:
        return self.job["id"]


class JobStore(Protocol):
    """What the API and the workers use of a job store; ``Store`` (SQLite) and
    ``service.store_pg.PostgresStore`` implement it with the same semantics (tests/service/test_job_store.py
    runs against both)."""

    def migrate(self) -> int: ...
    def ping(self) -> None: ...
    def insert_dataset(self, **fields: Any) -> dict[str, Any]: ...
    def get_dataset(self, *, dataset_id: str) -> dict[str, Any]: ...
    def list_datasets(self, *, kind: str | None, limit: int, offset: int) -> tuple[list[dict], int]: ...
    def job_of_dataset(self, *, scored_dataset_id: str, job_id: str | None = None) -> str | None: ...
    def create_job(self, *, dataset_id: str, params: dict[str, Any], request_hash: str,
                   idempotency_key: str | None) -> tuple[dict[str, Any], bool]: ...
    def get_job(self, *, job_id: str) -> dict[str, Any]: ...
    def job_json(self, *, job_id: str) -> bytes: ...
    def list_jobs_json(self, *, status: str | None, limit: int, offset: int) -> bytes: ...
    def request_cancel(self, *, job_id: str) -> dict[str, Any]: ...
    def list_events(self, *, job_id: str, after: int, limit: int) -> tuple[list[dict], int]: ...
    def claim_job(self, *, worker_id: str, lease_seconds: float, max_attempts: int) -> Claim | None: ...
    def heartbeat(self, claim: Claim, *, lease_seconds: float, progress: float | None = None) -> bool: ...
    def cancel_requested(self, claim: Claim) -> bool: ...
    def update_job(self, claim: Claim, *, event: tuple[str, str] | None = None,
                   event_data: dict | None = None, **fields: Any) -> None: ...
    def finish_job(self, claim: Claim, *, status: str, message: str, error: str | None = None,
                   metrics: dict | None = None, artifacts: list | None = None) -> None: ...
    def release_job(self, claim: Claim, *, reason: str) -> None: ...
    def add_event(self, *, job_id: str, kind: str, message: str, data: dict | None = None) -> None: ...


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def decode_row(row: dict[str, Any]) -> dict[str, Any]:
    """A SQLite row with its JSON columns (stored as text) decoded. (PostgreSQL's are typed JSON, which
    psycopg decodes itself.)"""
    for name in _JSON_COLUMNS:
        value = row.get(name)
        if value is not None and isinstance(value, str):
            try:  # NaN / Infinity (which Python's json would take) read as null: no answer can hold them
                row[name] = json.loads(value, parse_constant=lambda _: None)
            except ValueError:  # written by hand or an older Beacon: readable, and flagged
                row[name] = {"unreadable": UNREADABLE}
    return row


def _row(cursor: sqlite3.Cursor, values: tuple) -> dict[str, Any]:
    return decode_row({name: value for (name, *_), value in zip(cursor.description, values, strict=True)})


def open_store(database: str | Path) -> JobStore:
    """The job store ``database`` names: a ``postgresql://`` (or ``postgres://``) URL, else SQLite at
    a path (``sqlite:PATH`` or a plain path). Both have the same methods and semantics.

    Raises:
        ValueError: a URL of another scheme (the message names it).
    """
    text = str(database)
    scheme = storage.scheme(text)
    if scheme in ("postgresql", "postgres"):
        from service.store_pg import PostgresStore

        return PostgresStore(text)
    if scheme:
        raise ValueError(f"BEACON_DATABASE {scheme}://… is not a job store Beacon knows; use a path or "
                         "sqlite:PATH for SQLite, or postgresql://user:password@host:port/db")
    return Store(text[len("sqlite:"):] if text.startswith("sqlite:") else text)


class Store:
    """SQLite access for one process; one connection per thread."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0):
        self.path = Path(path)
        self._busy_ms = int(busy_timeout_s * 1000)
        self._local = threading.local()

    # --- connections and schema ----------------------------------------------------------------
    def connection(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                  timeout=self._busy_ms / 1000)
            con.row_factory = _row
            con.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            con.execute("PRAGMA synchronous = NORMAL")  # with WAL: durable at checkpoints, never corrupt
            con.execute("PRAGMA foreign_keys = ON")
            self._local.con = con
        return con

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds the write lock from its first statement."""
        con = self.connection()
        self._local.pages = None  # data_version does not see this connection's own writes
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def migrate(self) -> int:
        """Create or upgrade the schema; returns its version. Safe to race from several processes.

        Raises:
            RuntimeError: the database was written by a newer Beacon.
        """
        con = self.connection()
        con.execute("PRAGMA journal_mode = WAL")
        with self.transaction() as con:
            version = con.execute("PRAGMA user_version").fetchone()["user_version"]
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"job store {self.path} has schema version {version}, newer than this "
                                   f"Beacon's {SCHEMA_VERSION}; upgrade Beacon")
            for script in MIGRATIONS[version:]:
                for statement in filter(str.strip, script.split(";")):
                    con.execute(statement)
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return SCHEMA_VERSION

    def ping(self) -> None:
        self.connection().execute("SELECT 1").fetchone()

    # --- datasets --------------------------------------------------------------------------------
    def insert_dataset(self, **fields: Any) -> dict[str, Any]:
        """Registers a dataset; a scored dataset already registered under the same id is kept as is."""
        fields.setdefault("created_at", time.time())
        columns = ", ".join(fields)
        marks = ", ".join(f":{k}" for k in fields)
        with self.transaction() as con:
            con.execute(f"INSERT INTO datasets ({columns}) VALUES ({marks}) ON CONFLICT (id) DO NOTHING", fields)
            return con.execute("SELECT * FROM datasets WHERE id = ?", (fields["id"],)).fetchone()

    def get_dataset(self, *, dataset_id: str) -> dict[str, Any]:
        row = self.connection().execute("SELECT * FROM datasets WHERE id = ?", (dataset_id,)).fetchone()
        if row is None:
            raise NotFound(f"dataset {dataset_id} not found")
        return row

    def list_datasets(self, *, kind: str | None, limit: int, offset: int) -> tuple[list[dict], int]:
        where, args = ("WHERE kind = ?", [kind]) if kind else ("", [])
        con = self.connection()
        count = con.execute(f"SELECT count(*) AS n FROM datasets {where}", args).fetchone()["n"]
        rows = con.execute(f"SELECT * FROM datasets {where} ORDER BY created_at DESC, id DESC "
                           "LIMIT ? OFFSET ?", [*args, limit, offset]).fetchall()
        return rows, count

    def job_of_dataset(self, *, scored_dataset_id: str, job_id: str | None = None) -> str | None:
        """``job_id`` if that job used the scored dataset, else (no job_id) the latest succeeded one."""
        con = self.connection()
        if job_id is not None:
            row = con.execute("SELECT id FROM jobs WHERE id = ? AND scored_dataset_id = ?",
                              (job_id, scored_dataset_id)).fetchone()
        else:
            row = con.execute("SELECT id FROM jobs WHERE scored_dataset_id = ? AND status = 'succeeded' "
                              "ORDER BY finished_at DESC LIMIT 1", (scored_dataset_id,)).fetchone()
        return row["id"] if row else None

    # --- jobs: the API's side --------------------------------------------------------------------
    def create_job(self, *, dataset_id: str, params: dict[str, Any], request_hash: str,
                   idempotency_key: str | None) -> tuple[dict[str, Any], bool]:
        """The new queued job and True, or the job created earlier with the same key and False.

        Raises:
            Conflict: the key was used before with another request.
        """
        now = time.time()
        with self.transaction() as con:
            if idempotency_key is not None:
                existing = con.execute("SELECT * FROM jobs WHERE idempotency_key = ?",
                                       (idempotency_key,)).fetchone()
                if existing is not None:
                    if existing["request_hash"] != request_hash:
                        raise Conflict(f"Idempotency-Key {idempotency_key!r} was already used with a "
                                       "different request; use a new key for a new job")
                    return existing, False
            job_id = new_id("job")
            con.execute(
                "INSERT INTO jobs (id, idempotency_key, request_hash, status, dataset_id, params, "
                "created_at, updated_at) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)",
                (job_id, idempotency_key, request_hash, dataset_id, dumps(params), now, now))
            self._event(con, job_id, "queued", "job queued", at=now)
            return con.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone(), True

    def get_job(self, *, job_id: str) -> dict[str, Any]:
        row = self.connection().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"job {job_id} not found")
        return row

    def job_json(self, *, job_id: str) -> bytes:
        """The job as the API's JSON.

        Raises:
            NotFound: no such job.
        """
        row = self.connection().execute(f"SELECT {JOB_JSON} AS job FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"job {job_id} not found")
        return row["job"].encode()

    def list_jobs_json(self, *, status: str | None, limit: int, offset: int) -> bytes:
        """A page of jobs, newest first, as the API's ``{"data": [...], "count": n}`` JSON.

        Pages are kept until the database changes (``PRAGMA data_version`` moves on any other
        connection's commit), so a crowd polling the same page costs one render per change.
        """
        con = self.connection()
        version = con.execute("PRAGMA data_version").fetchone()["data_version"]
        pages = getattr(self._local, "pages", None)
        if pages is None or pages[0] != version:
            pages = self._local.pages = (version, {})
        key = (status, limit, offset)
        if key not in pages[1]:
            where, args = ("WHERE status = ?", [status]) if status else ("", [])
            count = con.execute(f"SELECT count(*) AS n FROM jobs {where}", args).fetchone()["n"]
            page = con.execute(
                f"SELECT coalesce(json_group_array(json(job)), '[]') AS page FROM (SELECT {JOB_JSON} AS job "
                f"FROM jobs {where} ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?)",
                [*args, limit, offset]).fetchone()["page"]
            if len(pages[1]) >= 256:
                pages[1].clear()
            pages[1][key] = f'{{"data":{page},"count":{count}}}'.encode()
        return pages[1][key]

    def request_cancel(self, *, job_id: str) -> dict[str, Any]:
        """Cancels a queued job at once; asks the worker of a running job to stop it.

        Raises:
            NotFound: no such job. Conflict: the job already ended.
        """
        now = time.time()
        with self.transaction() as con:
            job = con.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if job is None:
                raise NotFound(f"job {job_id} not found")
            if job["status"] in TERMINAL:
                raise Conflict(f"job {job_id} already {job['status']}; only a queued or running job "
                               "can be cancelled")
            if not job["cancel_requested"]:
                self._event(con, job_id, "cancel_requested", "cancel requested", at=now)
            # Nobody holds a queued job, nor one whose worker died: no one else will finish it.
            if job["status"] == "queued" or (job["lease_expires_at"] or 0) < now:
                self._finish(con, job_id, "cancelled", at=now)
                self._event(con, job_id, "cancelled", "job cancelled", at=now)
            else:
                con.execute("UPDATE jobs SET cancel_requested = 1, updated_at = ? WHERE id = ?", (now, job_id))
            return con.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()

    def list_events(self, *, job_id: str, after: int, limit: int) -> tuple[list[dict], int]:
        con = self.connection()
        count = con.execute("SELECT count(*) AS n FROM events WHERE job_id = ? AND id > ?",
                            (job_id, after)).fetchone()["n"]
        rows = con.execute("SELECT * FROM events WHERE job_id = ? AND id > ? ORDER BY id LIMIT ?",
                           (job_id, after, limit)).fetchall()
        return rows, count

    # --- jobs: the worker's side -----------------------------------------------------------------
    def claim_job(self, *, worker_id: str, lease_seconds: float, max_attempts: int) -> Claim | None:
        """Takes the oldest queued job, or a running one whose lease expired, in one UPDATE."""
        now = time.time()
        token = uuid.uuid4().hex
        with self.transaction() as con:
            self._sweep(con, now, max_attempts)
            job = con.execute(
                """
                UPDATE jobs SET
                    status = CASE WHEN status = 'queued' THEN 'curating' ELSE status END,
                    stage = CASE WHEN status = 'queued' THEN 'curating' ELSE stage END,
                    worker_id = :worker, lease_token = :token, lease_expires_at = :now + :lease,
                    attempts = attempts + 1, started_at = coalesce(started_at, :now), updated_at = :now
                WHERE id = (
                    SELECT id FROM jobs
                    WHERE cancel_requested = 0 AND attempts < :max_attempts
                      AND (status = 'queued'
                           OR (status IN ('curating', 'training', 'evaluating') AND lease_expires_at < :now))
                    ORDER BY created_at, id LIMIT 1)
                RETURNING *
                """,
                {"worker": worker_id, "token": token, "now": now, "lease": lease_seconds,
                 "max_attempts": max_attempts}).fetchone()
            if job is None:
                return None
            if job["attempts"] > 1:
                message = f"taken over by worker {worker_id} (attempt {job['attempts']}): the lease expired"
            else:
                message = f"claimed by worker {worker_id}"
            self._event(con, job["id"], "claimed", message, {"worker": worker_id, "attempt": job["attempts"]},
                        at=now)
        return Claim(job=job, token=token)

    def heartbeat(self, claim: Claim, *, lease_seconds: float, progress: float | None = None) -> bool:
        """Extends the lease (and records progress); returns whether a cancel was requested.

        Raises:
            LeaseLost: another worker holds the job now, or it ended.
        """
        now = time.time()
        row = self.connection().execute(
            "UPDATE jobs SET lease_expires_at = ?, progress = coalesce(?, progress), updated_at = ? "
            "WHERE id = ? AND lease_token = ? AND status IN ('curating', 'training', 'evaluating') "
            "RETURNING cancel_requested",
            (now + lease_seconds, progress, now, claim.job_id, claim.token)).fetchone()
        if row is None:
            raise LeaseLost(f"lost the lease on job {claim.job_id}")
        return bool(row["cancel_requested"])

    def cancel_requested(self, claim: Claim) -> bool:
        row = self.connection().execute("SELECT cancel_requested FROM jobs WHERE id = ?",
                                        (claim.job_id,)).fetchone()
        return bool(row and row["cancel_requested"])

    def update_job(self, claim: Claim, *, event: tuple[str, str] | None = None,
                   event_data: dict | None = None, **fields: Any) -> None:
        """Sets ``fields`` on the claimed job (and adds an event) if the claim still holds.

        Raises:
            LeaseLost: the claim no longer holds.
        """
        now = time.time()
        for key in ("metrics", "artifacts"):
            if key in fields and fields[key] is not None:
                fields[key] = dumps(fields[key])
        sets = ", ".join(f"{k} = :{k}" for k in fields)
        with self.transaction() as con:
            cur = con.execute(
                f"UPDATE jobs SET {sets + ', ' if sets else ''}updated_at = :now "
                "WHERE id = :id AND lease_token = :token AND status IN ('curating', 'training', 'evaluating')",
                {**fields, "now": now, "id": claim.job_id, "token": claim.token})
            if cur.rowcount != 1:
                raise LeaseLost(f"lost the lease on job {claim.job_id}")
            if event:
                self._event(con, claim.job_id, event[0], event[1], event_data, at=now)

    def finish_job(self, claim: Claim, *, status: str, message: str, error: str | None = None,
                   metrics: dict | None = None, artifacts: list | None = None) -> None:
        """Moves the claimed job to a terminal status (if the claim still holds).

        Raises:
            LeaseLost: the claim no longer holds.
        """
        if status not in TERMINAL:
            raise ValueError(f"finish_job needs a terminal status ({', '.join(TERMINAL)}), got {status!r}")
        now = time.time()
        with self.transaction() as con:
            cur = con.execute(
                "UPDATE jobs SET error = ?, metrics = coalesce(?, metrics), artifacts = coalesce(?, artifacts), "
                "progress = CASE WHEN ? = 'succeeded' THEN 1.0 ELSE progress END "
                "WHERE id = ? AND lease_token = ? AND status IN ('curating', 'training', 'evaluating')",
                (error, dumps(metrics) if metrics is not None else None,
                 dumps(artifacts) if artifacts is not None else None, status, claim.job_id, claim.token))
            if cur.rowcount != 1:
                raise LeaseLost(f"lost the lease on job {claim.job_id}")
            self._finish(con, claim.job_id, status, at=now)
            self._event(con, claim.job_id, status, message, {"error": error} if error else None, at=now)

    def release_job(self, claim: Claim, *, reason: str) -> None:
        """Gives a running job back (the worker stops): the next claim takes it over at once."""
        now = time.time()
        with self.transaction() as con:
            # A job handed back on purpose (a worker shutting down) has not used up an attempt.
            cur = con.execute("UPDATE jobs SET lease_expires_at = 0, worker_id = NULL, updated_at = ?, "
                              "attempts = max(attempts - 1, 0) WHERE id = ? AND lease_token = ?",
                              (now, claim.job_id, claim.token))
            if cur.rowcount == 1:
                self._event(con, claim.job_id, "released", reason, at=now)

    def add_event(self, *, job_id: str, kind: str, message: str, data: dict | None = None) -> None:
        with self.transaction() as con:
            self._event(con, job_id, kind, message, data, at=time.time())

    # --- internals -------------------------------------------------------------------------------
    @staticmethod
    def _event(con: sqlite3.Connection, job_id: str, kind: str, message: str, data: dict | None = None,
               *, at: float) -> None:
        con.execute("INSERT INTO events (job_id, at, kind, message, data) VALUES (?, ?, ?, ?, ?)",
                    (job_id, at, kind, message, dumps(data) if data is not None else None))

    @staticmethod
    def _finish(con: sqlite3.Connection, job_id: str, status: str, *, at: float) -> None:
        con.execute("UPDATE jobs SET status = ?, finished_at = ?, updated_at = ?, lease_token = NULL, "
                    "lease_expires_at = NULL WHERE id = ?", (status, at, at, job_id))

    def _sweep(self, con: sqlite3.Connection, now: float, max_attempts: int) -> None:
        """Ends running jobs nobody holds: a cancel whose worker died, a job that killed its workers."""
        stale = con.execute(
            "SELECT id, cancel_requested, attempts FROM jobs WHERE status IN ('curating', 'training', "
            "'evaluating') AND lease_expires_at < ? AND (cancel_requested = 1 OR attempts >= ?)",
            (now, max_attempts)).fetchall()
        for job in stale:
            if job["cancel_requested"]:
                self._finish(con, job["id"], "cancelled", at=now)
                self._event(con, job["id"], "cancelled", "job cancelled (its worker had stopped)", at=now)
            else:
                error = (f"abandoned after {job['attempts']} attempts: each worker that ran it stopped "
                         "without finishing (killed, or out of memory?)")
                con.execute("UPDATE jobs SET error = ? WHERE id = ?", (error, job["id"]))
                self._finish(con, job["id"], "failed", at=now)
                self._event(con, job["id"], "failed", error, at=now)
