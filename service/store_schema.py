"""The job store's SQL: the schema migrations, and a job rendered as the API's JSON.

``PRAGMA user_version`` holds how many migrations a database has had; ``Store.migrate`` applies the rest.
"""

from __future__ import annotations

# Each entry moves the schema one version up; never edit one that shipped, append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE datasets (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('raw', 'scored')),
        name TEXT NOT NULL,
        format TEXT,
        path TEXT NOT NULL,
        bytes INTEGER,
        sha256 TEXT,
        rows INTEGER,
        source_dataset_id TEXT,
        config_hash TEXT,
        job_id TEXT,
        created_at REAL NOT NULL
    );
    CREATE INDEX datasets_created ON datasets (created_at);
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        idempotency_key TEXT UNIQUE,
        request_hash TEXT NOT NULL,
        status TEXT NOT NULL,
        stage TEXT,
        progress REAL NOT NULL DEFAULT 0,
        dataset_id TEXT NOT NULL REFERENCES datasets (id),
        scored_dataset_id TEXT,
        params TEXT NOT NULL,
        error TEXT,
        metrics TEXT,
        artifacts TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        worker_id TEXT,
        lease_token TEXT,
        lease_expires_at REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL
    );
    CREATE INDEX jobs_created ON jobs (created_at, id);
    CREATE INDEX jobs_status ON jobs (status, created_at, id);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL REFERENCES jobs (id),
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        message TEXT NOT NULL,
        data TEXT
    );
    CREATE INDEX events_job ON events (job_id, id);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

# The same schema in PostgreSQL, one entry per SQLite migration (the version counts the same). Times
# are epoch seconds in both; JSON columns are of type JSON here, so PostgreSQL refuses invalid JSON (the
# "unreadable" rows SQLite must tolerate cannot exist) and renders the API's JSON itself (PG_JOB_JSON).
PG_MIGRATIONS: list[str] = [
    """
    CREATE TABLE datasets (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('raw', 'scored')),
        name TEXT NOT NULL,
        format TEXT,
        path TEXT NOT NULL,
        bytes BIGINT,
        sha256 TEXT,
        rows BIGINT,
        source_dataset_id TEXT,
        config_hash TEXT,
        job_id TEXT,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX datasets_created ON datasets (created_at);
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        idempotency_key TEXT UNIQUE,
        request_hash TEXT NOT NULL,
        status TEXT NOT NULL,
        stage TEXT,
        progress DOUBLE PRECISION NOT NULL DEFAULT 0,
        dataset_id TEXT NOT NULL REFERENCES datasets (id),
        scored_dataset_id TEXT,
        params JSON NOT NULL,
        error TEXT,
        metrics JSON,
        artifacts JSON,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        worker_id TEXT,
        lease_token TEXT,
        lease_expires_at DOUBLE PRECISION,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION
    );
    CREATE INDEX jobs_created ON jobs (created_at, id);
    CREATE INDEX jobs_status ON jobs (status, created_at, id);
    CREATE TABLE events (
        id BIGSERIAL PRIMARY KEY,
        job_id TEXT NOT NULL REFERENCES jobs (id),
        at DOUBLE PRECISION NOT NULL,
        kind TEXT NOT NULL,
        message TEXT NOT NULL,
        data JSON
    );
    CREATE INDEX events_job ON events (job_id, id);
    -- Every committed change to a job notifies the API processes, whose cached pages of jobs it ends
    -- (an UPDATE that matches no row, as an idle worker's claim, notifies nothing).
    CREATE FUNCTION beacon_jobs_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('beacon_jobs', '');
        RETURN NULL;
    END $$;
    CREATE TRIGGER jobs_changed AFTER INSERT OR UPDATE OR DELETE ON jobs
        FOR EACH ROW EXECUTE FUNCTION beacon_jobs_changed();  -- rows changed, not statements run
    """,
]
assert len(PG_MIGRATIONS) == len(MIGRATIONS), "every migration needs its PostgreSQL twin"


def _pg_iso(column: str) -> str:
    # As SQLite's strftime('%Y-%m-%dT%H:%M:%fZ'): milliseconds, UTC, 'Z'.
    return f"to_char(to_timestamp({column}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"


# A job as the API shows it, rendered by PostgreSQL (as JOB_JSON by SQLite): the hottest read skips
# decoding and re-encoding every JSON column in Python.
PG_JOB_JSON = f"""json_build_object(
    'id', id, 'idempotency_key', idempotency_key, 'status', status, 'stage', stage, 'progress', progress,
    'dataset_id', dataset_id, 'scored_dataset_id', scored_dataset_id, 'params', params, 'error', error,
    'metrics', metrics, 'artifacts', coalesce(artifacts, '[]'::json), 'cancel_requested', cancel_requested <> 0,
    'attempts', attempts, 'worker_id', worker_id, 'created_at', {_pg_iso('created_at')},
    'updated_at', {_pg_iso('updated_at')}, 'started_at', {_pg_iso('started_at')},
    'finished_at', {_pg_iso('finished_at')})"""


def _iso(column: str) -> str:
    return f"strftime('%Y-%m-%dT%H:%M:%fZ', {column}, 'unixepoch')"


# A job as the API shows it (``service.api.models.Job``), rendered by SQLite itself: listing jobs is
# the hottest read, and this skips decoding and re-encoding every JSON column in Python.
UNREADABLE = "stored value is not valid JSON"


def _json_or(column: str, fallback: str) -> str:
    # A row written by an older Beacon (or by hand) that holds no valid JSON must not break every
    # list that includes it: it renders with the fallback, and says so in ``error``.
    return f"CASE WHEN {column} IS NULL THEN NULL WHEN json_valid({column}) THEN json({column}) ELSE {fallback} END"


JOB_JSON = f"""json_object(
    'id', id, 'idempotency_key', idempotency_key, 'status', status, 'stage', stage, 'progress', progress,
    'dataset_id', dataset_id, 'scored_dataset_id', scored_dataset_id,
    'params', {_json_or('params', f"json_object('unreadable', '{UNREADABLE}')")},
    'error', CASE WHEN json_valid(params) AND (metrics IS NULL OR json_valid(metrics))
                  AND (artifacts IS NULL OR json_valid(artifacts)) THEN error
                  ELSE coalesce(error || '; ', '') || 'this job has a {UNREADABLE}' END,
    'metrics', {_json_or('metrics', 'NULL')}, 'artifacts', {_json_or("coalesce(artifacts, '[]')", "json('[]')")},
    'cancel_requested', json(iif(cancel_requested, 'true', 'false')), 'attempts', attempts,
    'worker_id', worker_id, 'created_at', {_iso('created_at')}, 'updated_at', {_iso('updated_at')},
    'started_at', {_iso('started_at')}, 'finished_at', {_iso('finished_at')})"""
