"""The job store in PostgreSQL: the same semantics as ``service.store.Store`` (SQLite), for workers on
several hosts.

psycopg 3 with its connection pool. Every method is one transaction (``with pool.connection()``:
committed on success, rolled back on an exception). The claim is one ``UPDATE … WHERE id = (SELECT …
FOR UPDATE SKIP LOCKED)``, so concurrent workers never wait on, nor take, the same job; idempotent
submission rests on the unique key (``INSERT … ON CONFLICT DO NOTHING``); a worker's writes carry
its lease token. Migrations run under a transaction-scoped advisory lock, so processes starting
together apply each one once. JSON columns have PostgreSQL's JSON type (psycopg returns them
decoded), and the API's JSON of a job is rendered in SQL, as in SQLite.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from service.jsonsafe import dumps
from service.store import TERMINAL, Claim, Conflict, LeaseLost, NotFound, new_id
from service.store_schema import PG_JOB_JSON, PG_MIGRATIONS, SCHEMA_VERSION

_RUNNING = "('curating', 'training', 'evaluating')"
_MIGRATION_LOCK = 0x6265_6163_6F6E  # "beacon": one advisory lock id for every Beacon process


def describe(url: str) -> str:
    """``host:port/db`` of a URL, without user or password (for messages and logs)."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or ''}"


class PostgresStore:
    """PostgreSQL access for one process: a small pool of connections shared by its threads."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 8, connect_timeout_s: float = 10.0):
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

        self.url = url
        self.where = describe(url)
        # Pages of jobs as rendered, kept while no change to jobs was notified (see _listen).
        self._pages: dict[tuple, bytes] = {}
        self._version = 0
        self._listening = False
        self._lock = threading.Lock()
        self._listener: threading.Thread | None = None
        self._closed = False
        self._connect_timeout_s = connect_timeout_s
        self._pool = ConnectionPool(url, min_size=min_size, max_size=max_size, open=False,
                                    kwargs={"row_factory": dict_row, "connect_timeout": int(connect_timeout_s)})

    # --- connections and schema ----------------------------------------------------------------
    def _open(self) -> None:
        """Opens the pool on first use, after one plain connection says whether the server is there:
        an unreachable database is one sentence naming it, not a pool retrying in the log."""
        import psycopg

        if not self._pool.closed:
            return
        try:
            psycopg.connect(self.url, connect_timeout=int(self._connect_timeout_s)).close()
        except psycopg.Error as e:
            reason = " ".join(str(e).split()) or type(e).__name__
            raise RuntimeError(f"cannot reach the job store at {self.where} ({reason}); check BEACON_DATABASE "
                               "(host, port, database, user, password) and that PostgreSQL runs and accepts "
                               "connections from this host") from None
        self._pool.open(wait=True, timeout=self._connect_timeout_s)

    @contextmanager
    def _connection(self, *, write: bool = True) -> Iterator[Any]:
        """One transaction on a pooled connection; a write ends this process's cached pages at once
        (other processes' writes end them through the trigger's notification)."""
        self._open()
        with self._pool.connection() as con:
            yield con
        if write:
            self._changed()

    def _changed(self) -> None:
        with self._lock:
            self._version += 1
            self._pages.clear()

    def _ensure_listener(self) -> None:
        with self._lock:
            if self._listener is None or not self._listener.is_alive():
                self._listener = threading.Thread(target=self._listen, name="beacon-jobs-listener", daemon=True)
                self._listener.start()

    def _listen(self) -> None:
        """Hears the jobs trigger's notifications; while not listening, pages are not kept at all."""
        import psycopg

        while not self._closed:
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=int(self._connect_timeout_s)) as con:
                    con.execute("LISTEN beacon_jobs")
                    with self._lock:
                        self._listening = True
                        self._version += 1
                        self._pages.clear()
                    for _ in con.notifies():
                        self._changed()
            except psycopg.Error:
                pass
            with self._lock:
                self._listening = False
                self._pages.clear()
            time.sleep(1.0)

    def close(self) -> None:
        self._closed = True
        self._pool.close()

    def migrate(self) -> int:
        """Create or upgrade the schema; returns its version. Safe to race from several processes.

        Raises:
            RuntimeError: the database cannot be reached, or was written by a newer Beacon.
        """
        with self._connection() as con:
            con.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            con.execute("CREATE TABLE IF NOT EXISTS beacon_schema (version INTEGER NOT NULL)")
            row = con.execute("SELECT version FROM beacon_schema").fetchone()
            version = row["version"] if row else 0
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"job store {self.where} has schema version {version}, newer than this "
                                   f"Beacon's {SCHEMA_VERSION}; upgrade Beacon")
            for script in PG_MIGRATIONS[version:]:
                con.execute(script)
            if row is None:
                con.execute("INSERT INTO beacon_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
            else:
                con.execute("UPDATE beacon_schema SET version = %s", (SCHEMA_VERSION,))
        return SCHEMA_VERSION

    def ping(self) -> None:
        with self._connection(write=False) as con:
            con.execute("SELECT 1").fetchone()

    # --- datasets --------------------------------------------------------------------------------
    def insert_dataset(self, **fields: Any) -> dict[str, Any]:
        """Registers a dataset; a scored dataset already registered under the same id is kept as is."""
        fields.setdefault("created_at", time.time())
        columns = ", ".join(fields)
        marks = ", ".join(f"%({k})s" for k in fields)
        with self._connection() as con:
            con.execute(f"INSERT INTO datasets ({columns}) VALUES ({marks}) ON CONFLICT (id) DO NOTHING", fields)
            return con.execute("SELECT * FROM datasets WHERE id = %s", (fields["id"],)).fetchone()

    def get_dataset(self, *, dataset_id: str) -> dict[str, Any]:
        with self._connection(write=False) as con:
            row = con.execute("SELECT * FROM datasets WHERE id = %s", (dataset_id,)).fetchone()
        if row is None:
            raise NotFound(f"dataset {dataset_id} not found")
        return row

    def list_datasets(self, *, kind: str | None, limit: int, offset: int) -> tuple[list[dict], int]:
        where, args = ("WHERE kind = %s", [kind]) if kind else ("", [])
        with self._connection(write=False) as con:
            count = con.execute(f"SELECT count(*) AS n FROM datasets {where}", args).fetchone()["n"]
            rows = con.execute(f"SELECT * FROM datasets {where} ORDER BY created_at DESC, id DESC "
                               "LIMIT %s OFFSET %s", [*args, limit, offset]).fetchall()
        return rows, count

    def job_of_dataset(self, *, scored_dataset_id: str, job_id: str | None = None) -> str | None:
        """``job_id`` if that job used the scored dataset, else (no job_id) the latest succeeded one."""
        with self._connection(write=False) as con:
            if job_id is not None:
                row = con.execute("SELECT id FROM jobs WHERE id = %s AND scored_dataset_id = %s",
                                  (job_id, scored_dataset_id)).fetchone()
            else:
                row = con.execute("SELECT id FROM jobs WHERE scored_dataset_id = %s AND status = 'succeeded' "
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
        job_id = new_id("job")
        with self._connection() as con:
            # A concurrent insert with the same key waits for the other transaction, then does nothing.
            row = con.execute(
                "INSERT INTO jobs (id, idempotency_key, request_hash, status, dataset_id, params, created_at, "
                "updated_at) VALUES (%s, %s, %s, 'queued', %s, %s, %s, %s) "
                "ON CONFLICT (idempotency_key) DO NOTHING RETURNING *",
                (job_id, idempotency_key, request_hash, dataset_id, dumps(params), now, now)).fetchone()
            if row is not None:
                self._event(con, job_id, "queued", "job queued", at=now)
                return row, True
            existing = con.execute("SELECT * FROM jobs WHERE idempotency_key = %s",
                                   (idempotency_key,)).fetchone()
        if existing["request_hash"] != request_hash:
            raise Conflict(f"Idempotency-Key {idempotency_key!r} was already used with a different request; "
                           "use a new key for a new job")
        return existing, False

    def get_job(self, *, job_id: str) -> dict[str, Any]:
        with self._connection(write=False) as con:
            row = con.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"job {job_id} not found")
        return row

    def job_json(self, *, job_id: str) -> bytes:
        """The job as the API's JSON.

        Raises:
            NotFound: no such job.
        """
        with self._connection(write=False) as con:
            row = con.execute(f"SELECT ({PG_JOB_JSON})::text AS job FROM jobs WHERE id = %s", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"job {job_id} not found")
        return row["job"].encode()

    def list_jobs_json(self, *, status: str | None, limit: int, offset: int) -> bytes:
        """A page of jobs, newest first, as the API's ``{"data": [...], "count": n}`` JSON, rendered
        by PostgreSQL in one statement.

        Pages are kept until a change to jobs is notified (a trigger's ``pg_notify``, heard by a
        listening connection; this process's own writes end them at once), so a crowd polling the same
        page costs one render per change, as SQLite's ``data_version`` does there.
        """
        self._ensure_listener()
        key = (status, limit, offset)
        with self._lock:
            version, listening = self._version, self._listening
            cached = self._pages.get(key) if listening else None
        if cached is not None:
            return cached
        page = self._render_page(status, limit, offset)
        with self._lock:
            if listening and self._listening and version == self._version:
                if len(self._pages) >= 256:
                    self._pages.clear()
                self._pages[key] = page
        return page

    def _render_page(self, status: str | None, limit: int, offset: int) -> bytes:
        where, args = ("WHERE status = %s", [status]) if status else ("", [])
        with self._connection(write=False) as con:
            row = con.execute(
                f"SELECT json_build_object('data', coalesce((SELECT json_agg(job) FROM (SELECT {PG_JOB_JSON} AS job "
                f"FROM jobs {where} ORDER BY created_at DESC, id DESC LIMIT %s OFFSET %s) page), '[]'::json), "
                f"'count', (SELECT count(*) FROM jobs {where}))::text AS page",
                [*args, limit, offset, *args]).fetchone()
        return row["page"].encode()

    def request_cancel(self, *, job_id: str) -> dict[str, Any]:
        """Cancels a queued job at once; asks the worker of a running job to stop it.

        Raises:
            NotFound: no such job. Conflict: the job already ended.
        """
        now = time.time()
        with self._connection() as con:
            job = con.execute("SELECT * FROM jobs WHERE id = %s FOR UPDATE", (job_id,)).fetchone()
            if job is None:
                raise NotFound(f"job {job_id} not found")
            if job["status"] in TERMINAL:
                raise Conflict(f"job {job_id} already {job['status']}; only a queued or running job "
                               "can be cancelled")
            if not job["cancel_requested"]:
                self._event(con, job_id, "cancel_requested", "cancel requested", at=now)
            if job["status"] == "queued" or (job["lease_expires_at"] or 0) < now:
                self._finish(con, job_id, "cancelled", at=now)
                self._event(con, job_id, "cancelled", "job cancelled", at=now)
            else:
                con.execute("UPDATE jobs SET cancel_requested = 1, updated_at = %s WHERE id = %s", (now, job_id))
            return con.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()

    def list_events(self, *, job_id: str, after: int, limit: int) -> tuple[list[dict], int]:
        with self._connection(write=False) as con:
            count = con.execute("SELECT count(*) AS n FROM events WHERE job_id = %s AND id > %s",
                                (job_id, after)).fetchone()["n"]
            rows = con.execute("SELECT * FROM events WHERE job_id = %s AND id > %s ORDER BY id LIMIT %s",
                               (job_id, after, limit)).fetchall()
        return rows, count

    # --- jobs: the worker's side -----------------------------------------------------------------
    def claim_job(self, *, worker_id: str, lease_seconds: float, max_attempts: int) -> Claim | None:
        """Takes the oldest queued job, or a running one whose lease expired, in one UPDATE; a row
        another worker is claiming is skipped, not waited for."""
        now = time.time()
        token = uuid.uuid4().hex
        with self._connection() as con:
            self._sweep(con, now, max_attempts)
            job = con.execute(
                f"""
                UPDATE jobs SET
                    status = CASE WHEN status = 'queued' THEN 'curating' ELSE status END,
                    stage = CASE WHEN status = 'queued' THEN 'curating' ELSE stage END,
                    worker_id = %(worker)s, lease_token = %(token)s, lease_expires_at = %(now)s + %(lease)s,
                    attempts = attempts + 1, started_at = coalesce(started_at, %(now)s), updated_at = %(now)s
                WHERE id = (
                    SELECT id FROM jobs
                    WHERE cancel_requested = 0 AND attempts < %(max_attempts)s
                      AND (status = 'queued' OR (status IN {_RUNNING} AND lease_expires_at < %(now)s))
                    ORDER BY created_at, id LIMIT 1
                    FOR UPDATE SKIP LOCKED)
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
        with self._connection() as con:
            row = con.execute(
                "UPDATE jobs SET lease_expires_at = %s, progress = coalesce(%s, progress), updated_at = %s "
                f"WHERE id = %s AND lease_token = %s AND status IN {_RUNNING} RETURNING cancel_requested",
                (now + lease_seconds, progress, now, claim.job_id, claim.token)).fetchone()
        if row is None:
            raise LeaseLost(f"lost the lease on job {claim.job_id}")
        return bool(row["cancel_requested"])

    def cancel_requested(self, claim: Claim) -> bool:
        with self._connection(write=False) as con:
            row = con.execute("SELECT cancel_requested FROM jobs WHERE id = %s", (claim.job_id,)).fetchone()
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
        sets = ", ".join(f"{k} = %({k})s" for k in fields)
        with self._connection() as con:
            cur = con.execute(
                f"UPDATE jobs SET {sets + ', ' if sets else ''}updated_at = %(now)s "
                f"WHERE id = %(id)s AND lease_token = %(token)s AND status IN {_RUNNING}",
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
        with self._connection() as con:
            cur = con.execute(
                "UPDATE jobs SET error = %s, metrics = coalesce(%s, metrics), artifacts = coalesce(%s, artifacts), "
                "progress = CASE WHEN %s = 'succeeded' THEN 1.0 ELSE progress END "
                f"WHERE id = %s AND lease_token = %s AND status IN {_RUNNING}",
                (error, dumps(metrics) if metrics is not None else None,
                 dumps(artifacts) if artifacts is not None else None, status, claim.job_id, claim.token))
            if cur.rowcount != 1:
                raise LeaseLost(f"lost the lease on job {claim.job_id}")
            self._finish(con, claim.job_id, status, at=now)
            self._event(con, claim.job_id, status, message, {"error": error} if error else None, at=now)

    def release_job(self, claim: Claim, *, reason: str) -> None:
        """Gives a running job back (the worker stops): the next claim takes it over at once."""
        now = time.time()
        with self._connection() as con:
            cur = con.execute("UPDATE jobs SET lease_expires_at = 0, worker_id = NULL, updated_at = %s, "
                              "attempts = greatest(attempts - 1, 0) WHERE id = %s AND lease_token = %s",
                              (now, claim.job_id, claim.token))
            if cur.rowcount == 1:
                self._event(con, claim.job_id, "released", reason, at=now)

    def add_event(self, *, job_id: str, kind: str, message: str, data: dict | None = None) -> None:
        with self._connection() as con:
            self._event(con, job_id, kind, message, data, at=time.time())

    # --- internals -------------------------------------------------------------------------------
    @staticmethod
    def _event(con: Any, job_id: str, kind: str, message: str, data: dict | None = None, *, at: float) -> None:
        con.execute("INSERT INTO events (job_id, at, kind, message, data) VALUES (%s, %s, %s, %s, %s)",
                    (job_id, at, kind, message, dumps(data) if data is not None else None))

    @staticmethod
    def _finish(con: Any, job_id: str, status: str, *, at: float) -> None:
        con.execute("UPDATE jobs SET status = %s, finished_at = %s, updated_at = %s, lease_token = NULL, "
                    "lease_expires_at = NULL WHERE id = %s", (status, at, at, job_id))

    def _sweep(self, con: Any, now: float, max_attempts: int) -> None:
        """Ends running jobs nobody holds: a cancel whose worker died, a job that killed its workers."""
        stale = con.execute(
            f"SELECT id, cancel_requested, attempts FROM jobs WHERE status IN {_RUNNING} "
            "AND lease_expires_at < %s AND (cancel_requested = 1 OR attempts >= %s) FOR UPDATE SKIP LOCKED",
            (now, max_attempts)).fetchall()
        for job in stale:
            if job["cancel_requested"]:
                self._finish(con, job["id"], "cancelled", at=now)
                self._event(con, job["id"], "cancelled", "job cancelled (its worker had stopped)", at=now)
            else:
                error = (f"abandoned after {job['attempts']} attempts: each worker that ran it stopped "
                         "without finishing (killed, or out of memory?)")
                con.execute("UPDATE jobs SET error = %s WHERE id = %s", (error, job["id"]))
                self._finish(con, job["id"], "failed", at=now)
                self._event(con, job["id"], "failed", error, at=now)
