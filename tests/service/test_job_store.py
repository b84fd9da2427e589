"""The job store on its own: migrations, idempotent submission, claims, leases, cancel."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from service.store import SCHEMA_VERSION, Conflict, LeaseLost, NotFound, Store

PARAMS = {"curate": {}, "train": {"max_steps": 2}, "eval": {}}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "beacon.db")
    s.migrate()
    s.insert_dataset(id="dst_0000000000000001", kind="raw", name="facts.jsonl", path="uploads/x.jsonl")
    return s


def submit(store: Store, key: str | None = None, request_hash: str = "h") -> dict:
    job, _ = store.create_job(dataset_id="dst_0000000000000001", params=PARAMS, request_hash=request_hash,
                              idempotency_key=key)
    return job


def test_schema_is_created_once_and_in_wal_mode(tmp_path: Path):
    path = tmp_path / "beacon.db"
    assert Store(path).migrate() == SCHEMA_VERSION
    assert Store(path).migrate() == SCHEMA_VERSION  # a second process finds it done
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_newer_schema_is_refused(tmp_path: Path):
    path = tmp_path / "beacon.db"
    Store(path).migrate()
    sqlite3.connect(path).execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="newer"):
        Store(path).migrate()


def test_idempotency_key_returns_the_same_job_and_refuses_another_body(store: Store):
    first, created = store.create_job(dataset_id="dst_0000000000000001", params=PARAMS, request_hash="a",
                                      idempotency_key="k")
    again, created_again = store.create_job(dataset_id="dst_0000000000000001", params=PARAMS,
                                            request_hash="a", idempotency_key="k")
    assert created and not created_again and again["id"] == first["id"]
    with pytest.raises(Conflict, match="different request"):
        submit(store, key="k", request_hash="b")
    assert submit(store)["id"] != submit(store)["id"]  # no key: always a new job


def test_concurrent_submissions_from_threads_make_one_job_per_key(tmp_path: Path, store: Store):
    ids: list[str] = []

    def go(i: int) -> None:
        local = Store(tmp_path / "beacon.db")  # one connection per thread, as in the API
        ids.append(submit(local, key=f"key-{i % 5}")["id"])
    threads = [threading.Thread(target=go, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 20 and len(set(ids)) == 5
    assert page(store, limit=100)["count"] == 5


def test_claim_takes_the_oldest_queued_job_once(store: Store):
    a, b = submit(store), submit(store)
    first = store.claim_job(worker_id="w1", lease_seconds=30, max_attempts=3)
    second = store.claim_job(worker_id="w2", lease_seconds=30, max_attempts=3)
    assert (first.job_id, second.job_id) == (a["id"], b["id"])
    assert first.job["status"] == "curating" and first.job["attempts"] == 1
    assert store.claim_job(worker_id="w3", lease_seconds=30, max_attempts=3) is None


def test_an_expired_lease_is_taken_over_and_the_old_worker_is_fenced_off(store: Store):
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


def test_heartbeat_keeps_the_lease_and_reports_a_cancel(store: Store):
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


def test_cancel_of_a_queued_job_is_immediate_and_of_a_finished_one_a_conflict(store: Store):
    job = submit(store)
    assert store.request_cancel(job_id=job["id"])["status"] == "cancelled"
    assert store.claim_job(worker_id="w1", lease_seconds=30, max_attempts=3) is None
    with pytest.raises(Conflict, match="already cancelled"):
        store.request_cancel(job_id=job["id"])
    with pytest.raises(NotFound):
        store.request_cancel(job_id="job_ffffffffffffffff")


def test_cancel_of_a_job_whose_worker_died_ends_it(store: Store):
    job = submit(store)
    store.claim_job(worker_id="w1", lease_seconds=0.1, max_attempts=3)
    time.sleep(0.2)
    assert store.request_cancel(job_id=job["id"])["status"] == "cancelled"


def test_a_job_that_keeps_killing_its_workers_fails_after_max_attempts(store: Store):
    job = submit(store)
    for _ in range(2):
        assert store.claim_job(worker_id="w", lease_seconds=0.05, max_attempts=2) is not None
        time.sleep(0.1)
    assert store.claim_job(worker_id="w", lease_seconds=0.05, max_attempts=2) is None
    row = store.get_job(job_id=job["id"])
    assert row["status"] == "failed" and "abandoned after 2 attempts" in row["error"]


def test_release_hands_the_job_to_the_next_worker_at_once(store: Store):
    job = submit(store)
    claim = store.claim_job(worker_id="w1", lease_seconds=300, max_attempts=3)
    store.release_job(claim, reason="stopping")
    again = store.claim_job(worker_id="w2", lease_seconds=30, max_attempts=3)
    assert again.job_id == job["id"] and again.job["attempts"] == 1  # a release is not a failed attempt


def page(store: Store, *, status: str | None = None, limit: int = 20, offset: int = 0) -> dict:
    return json.loads(store.list_jobs_json(status=status, limit=limit, offset=offset))


def test_list_jobs_pages_and_filters(store: Store):
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


def test_a_cached_page_of_jobs_follows_every_change(tmp_path: Path, store: Store):
    reader = Store(tmp_path / "beacon.db")  # the API's read connection; writes come from others
    assert b'"count":0' in reader.list_jobs_json(status=None, limit=20, offset=0)
    job = submit(store)
    assert b'"count":1' in reader.list_jobs_json(status=None, limit=20, offset=0)
    claim = store.claim_job(worker_id="w1", lease_seconds=30, max_attempts=3)
    store.heartbeat(claim, lease_seconds=30, progress=0.25)
    assert b'"progress":0.25' in reader.list_jobs_json(status=None, limit=20, offset=0)
    submit(reader)  # a write on the reading connection itself
    assert b'"count":2' in reader.list_jobs_json(status=None, limit=20, offset=0)
    assert job["id"].encode() in reader.list_jobs_json(status="curating", limit=20, offset=0)
