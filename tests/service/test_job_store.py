"""The job store on its own: migrations, idempotent submission, claims, leases, cancel; every test of
the interface runs against SQLite and against a real PostgreSQL (conftest.py starts one)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from service.store import SCHEMA_VERSION, Conflict, JobStore, LeaseLost, NotFound, Store, open_store

PARAMS = {"curate": {}, "train": {"max_steps": 2}, "eval": {}}


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path: Path) -> str:
    """Where a fresh job store lives: an SQLite file, or a new database on the test PostgreSQL."""
    if request.param == "sqlite":
        return str(tmp_path / "beacon.db")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(store_url: str) -> JobStore:
    s = open_store(store_url)
    s.migrate()
    s.insert_dataset(id="dst_0000000000000001", kind="raw", name="facts.jsonl", path="uploads/x.jsonl")
    return s


def submit(store: Store, key: str | None = None, request_hash: str = "h") -> dict:
    job, _ = store.create_job(dataset_id="dst_0000000000000001", params=PARAMS, request_hash=request_hash,
                              idempotency_key=key)
    return job


def test_sqlite_schema_is_created_once_and_in_wal_mode(tmp_path: Path):
    path = tmp_path / "beacon.db"
    assert Store(path).migrate() == SCHEMA_VERSION
    assert Store(path).migrate() == SCHEMA_VERSION  # a second process finds it done
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_newer_sqlite_schema_is_refused(tmp_path: Path):
    path = tmp_path / "beacon.db"
    Store(path).migrate()
    sqlite3.connect(path).execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="newer"):
        Store(path).migrate()


def test_idempotency_key_returns_the_same_job_and_refuses_another_body(store: JobStore):
    first, created = store.create_job(dataset_id="dst_0000000000000001", params=PARAMS, request_hash="a",
                                      idempotency_key="k")
    again, created_again = store.create_job(dataset_id="dst_0000000000000001", params=PARAMS,
                                            request_hash="a", idempotency_key="k")
    assert created and not created_again and again["id"] == first["id"]
    with pytest.raises(Conflict, match="different request"):
        submit(store, key="k", request_hash="b")
    assert submit(store)["id"] != submit(store)["id"]  # no key: always a new job


def test_concurrent_submissions_from_threads_make_one_job_per_key(store_url: str, store: JobStore):
    ids: list[str] = []
    barrier = threading.Barrier(50)

    def go(i: int) -> None:
        local = open_store(store_url)  # its own connection(s), as another API process would have
        barrier.wait()
        ids.append(submit(local, key=f"key-{i % 10}")["id"])
    threads = [threading.Thread(target=go, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 50 and len(set(ids)) == 10
    assert page(store, limit=100)["count"] == 10


def test_concurrent_claims_take_each_job_exactly_once(store_url: str, store: JobStore):
    jobs = {submit(store)["id"] for _ in range(12)}
    claimed: list[str] = []
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        local = open_store(store_url)
        barrier.wait()
        while (claim := local.claim_job(worker_id=f"w{i}", lease_seconds=60, max_attempts=3)) is not None:
            claimed.append(claim.job_id)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(jobs)


def test_claim_takes_the_oldest_queued_job_once(store: JobStore):
    a, b = submit(store), submit(store)
    first = store.claim_job(worker_id="w1", lease_seconds=30, max_attempts=3)
    second = store.claim_job(worker_id="w2", lease_seconds=30, max_attempts=3)
    assert (first.job_id, second.job_id) == (a["id"], b["id"])
    assert first.job["status"] == "curating" and first.job["attempts"] == 1
    assert store.claim_job(worker_id="w3", lease_seconds=30, max_attempts=3) is None


def test_an_expired_lease_is_taken_over_and_the_old_worker_is_fenced_off(store: JobStore):
    job = submit(store)
    old = store.claim_job(worker_id="w1", lease_seconds=0.2, max_attempts=3)
    store.update_job(old, status="training", stage="training", progress=0.4)
    assert store.claim_job(worker_id="w2", lease_seconds=30, max_attempts=3) is None  # still held
    time.sleep(0.3)
    new = store.claim_job(worker_id="w2", lease_seconds=30, max_attempts=3)
    assert new.job_id == job["id"] and new.job["status"] == "training" and new.job["attempts"] == 2
    with pytest.raises(LeaseLost):
        store.heartbeat(old, lease_seconds=30)
    with pytest.raises(LeaseLost):
        store.finish_job(old, status="succeeded", message="done")
    store.finish_job(new, status="succeeded", message="done", metrics={"efficacy": 1.0})
    row = store.get_job(job_id=job["id"])
    assert row["status"] == "succeeded" and row["progress"] == 1.0 and row["metrics"] == {"efficacy": 1.0}
    kinds = [e["kind"] for e in store.list_events(job_id=job["id"], after=0, limit=100)[0]]
    assert kinds == ["queued", "claimed", "claimed", "succeeded"]


def test_heartbeat_keeps_the_lease_and_reports_a_cancel(store: JobStore):
    job = submit(store)
    claim = store.claim_job(worker_id="w1", lease_seconds=0.5, max_attempts=3)
    for _ in range(3):
        time.sleep(0.2)
        assert store.heartbeat(claim, lease_seconds=0.5, progress=0.1) is False
    assert store.claim_job(worker_id="w2", lease_seconds=30, max_attempts=3) is None
    store.request_cancel(job_id=job["id"])
    assert store.get_job(job_id=job["id"])["status"] == "curating"  # the worker ends it
    assert store.heartbeat(claim, lease_seconds=0.5) is True
    store.finish_job(claim, status="cancelled", message="job cancelled")
    assert store.get_job(job_id=job["id"])["status"] == "cancelled"


def test_cancel_of_a_queued_job_is_immediate_and_of_a_finished_one_a_conflict(store: JobStore):
    job = submit(store)
    assert store.request_cancel(job_id=job["id"])["status"] == "cancelled"
    assert store.claim_job(worker_id="w1", lease_seconds=30, max_attempts=3) is None
    with pytest.raises(Conflict, match="already cancelled"):
        store.request_cancel(job_id=job["id"])
    with pytest.raises(NotFound):
        store.request_cancel(job_id="job_ffffffffffffffff")


def test_cancel_of_a_job_whose_worker_died_ends_it(store: JobStore):
    job = submit(store)
    store.claim_job(worker_id="w1", lease_seconds=0.1, max_attempts=3)
    time.sleep(0.2)
    assert store.request_cancel(job_id=job["id"])["status"] == "cancelled"


def test_a_job_that_keeps_killing_its_workers_fails_after_max_attempts(store: JobStore):
    job = submit(store)
    for _ in range(2):
        assert store.claim_job(worker_id="w", lease_seconds=0.05, max_attempts=2) is not None
        time.sleep(0.1)
    assert store.claim_job(worker_id="w", lease_seconds=0.05, max_attempts=2) is None
    row = store.get_job(job_id=job["id"])
    assert row["status"] == "failed" and "abandoned after 2 attempts" in row["error"]


def test_release_hands_the_job_to_the_next_worker_at_once(store: JobStore):
    job = submit(store)
    claim = store.claim_job(worker_id="w1", lease_seconds=300, max_attempts=3)
    store.release_job(claim, reason="stopping")
    again = store.claim_job(worker_id="w2", lease_seconds=30, max_attempts=3)
    assert again.job_id == job["id"] and again.job["attempts"] == 1  # a release is not a failed attempt


def page(store: Store, *, status: str | None = None, limit: int = 20, offset: int = 0) -> dict:
    return json.loads(store.list_jobs_json(status=status, limit=limit, offset=offset))


def test_list_jobs_pages_and_filters(store: JobStore):
    ids = [submit(store)["id"] for _ in range(5)]
    store.request_cancel(job_id=ids[0])
    first = page(store, limit=2)
    assert first["count"] == 5 and [j["id"] for j in first["data"]] == ids[::-1][:2]
    cancelled = page(store, status="cancelled")
    assert cancelled["count"] == 1 and cancelled["data"][0]["id"] == ids[0]
    assert page(store, status="queued", offset=3)["data"][0]["id"] == ids[1]
    assert json.loads(store.job_json(job_id=ids[0]))["status"] == "cancelled"
    with pytest.raises(NotFound):
        store.job_json(job_id="job_ffffffffffffffff")


def test_a_page_of_jobs_follows_every_change(store_url: str, store: JobStore):
    """The API keeps rendered pages; a write by another process must end them. SQLite sees it at the
    next read (data_version), PostgreSQL within moments (the trigger's notification)."""
    reader = open_store(store_url)  # the API's read connection; writes come from others

    def soon(check) -> None:
        deadline = time.monotonic() + 2.0
        while not check(page(reader)):
            assert time.monotonic() < deadline, page(reader)
            time.sleep(0.01)

    for _ in range(3):  # the same page, asked again and again, is served from the cache
        assert page(reader)["count"] == 0
    job = submit(store)
    soon(lambda p: p["count"] == 1)
    claim = store.claim_job(worker_id="w1", lease_seconds=30, max_attempts=3)
    store.heartbeat(claim, lease_seconds=30, progress=0.25)
    soon(lambda p: p["data"][0]["progress"] == 0.25)
    submit(reader)  # a write through the reading store itself: seen at once
    assert page(reader)["count"] == 2
    assert [j["id"] for j in page(reader, status="curating")["data"]] == [job["id"]]


def test_postgres_schema_is_created_once_even_by_processes_racing(postgres_url: str):
    results: list[int] = []
    barrier = threading.Barrier(6)

    def go() -> None:
        barrier.wait()
        results.append(open_store(postgres_url).migrate())
    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [SCHEMA_VERSION] * 6
    import psycopg

    with psycopg.connect(postgres_url) as con:
        assert con.execute("SELECT version FROM beacon_schema").fetchall() == [(SCHEMA_VERSION,)]


def test_a_newer_postgres_schema_is_refused_and_left_alone(postgres_url: str):
    import psycopg

    open_store(postgres_url).migrate()
    with psycopg.connect(postgres_url) as con:
        con.execute("UPDATE beacon_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(RuntimeError, match="newer than this Beacon"):
        open_store(postgres_url).migrate()
    with psycopg.connect(postgres_url) as con:
        assert con.execute("SELECT version FROM beacon_schema").fetchone() == (SCHEMA_VERSION + 1,)


def test_an_unreachable_postgres_is_one_sentence_naming_it():
    with pytest.raises(RuntimeError) as e:
        open_store("postgresql://beacon:s3cret@127.0.0.1:1/jobs").migrate()
    message = str(e.value)
    assert "cannot reach the job store at 127.0.0.1:1/jobs" in message and "check BEACON_DATABASE" in message
    assert "s3cret" not in message


def test_open_store_picks_the_store_by_url(tmp_path: Path):
    assert isinstance(open_store(tmp_path / "a.db"), Store)
    assert isinstance(open_store(f"sqlite:{tmp_path / 'b.db'}"), Store)
    from service.store_pg import PostgresStore

    assert isinstance(open_store("postgresql://u@h/db"), PostgresStore)
    with pytest.raises(ValueError, match="mysql://"):
        open_store("mysql://u@h/db")


def test_both_stores_render_a_job_the_same(tmp_path: Path, postgres_url: str):
    """The API's JSON of a job: SQLite renders it in SQL, PostgresStore in Python; they must agree."""
    rendered = []
    for url in (str(tmp_path / "beacon.db"), postgres_url):
        s = open_store(url)
        s.migrate()
        s.insert_dataset(id="dst_0000000000000001", kind="raw", name="facts.jsonl", path="uploads/x.jsonl")
        job = submit(s, key="k")
        claim = s.claim_job(worker_id="w1", lease_seconds=30, max_attempts=3)
        s.finish_job(claim, status="failed", message="no", error="boom", metrics={"x": 1.5},
                     artifacts=[{"path": "run/a"}])
        doc = json.loads(s.job_json(job_id=job["id"]))
        listed = json.loads(s.list_jobs_json(status=None, limit=5, offset=0))["data"][0]
        assert doc == listed
        rendered.append(doc)
    sqlite_doc, pg_doc = rendered
    ignored = {"id", "created_at", "updated_at", "started_at", "finished_at", "worker_id"}
    assert {k: v for k, v in sqlite_doc.items() if k not in ignored} == \
        {k: v for k, v in pg_doc.items() if k not in ignored}
    assert set(sqlite_doc) == set(pg_doc)
    assert pg_doc["created_at"].endswith("Z") and len(pg_doc["created_at"]) == len(sqlite_doc["created_at"])
