"""The HTTP API against a real `beacon serve` on 127.0.0.1 (no worker: jobs stay queued here)."""

from __future__ import annotations

import concurrent.futures
import os
import re
from pathlib import Path

import httpx
import pytest

from service.api.models import DatasetStats, Job, Page
from service_fixtures import MINI_FACTS, Service, seed_scored_dataset

UPLOAD_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Service:
    svc = Service(tmp_path_factory.mktemp("api"), max_upload_bytes=UPLOAD_LIMIT, query_timeout_seconds=1,
                  query_row_limit=50).start_server()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def scored_id(service: Service) -> str:
    return seed_scored_dataset(service.data_dir)


def test_health_and_openapi(client: httpx.Client):
    assert client.get("/healthz").json()["status"] == "ok"
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/cancel", "/jobs/{job_id}/events",
            "/jobs/{job_id}/artifacts", "/datasets", "/datasets/{dataset_id}/stats",
            "/datasets/{dataset_id}/query", "/healthz"} <= set(paths)
    assert "multipart/form-data" in paths["/datasets"]["post"]["requestBody"]["content"]


def test_the_server_refuses_to_start_without_a_token(tmp_path: Path):
    svc = Service(tmp_path)
    env = {k: v for k, v in svc.env.items() if k != "BEACON_API_TOKEN"}
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "service.cli", "serve"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "BEACON_API_TOKEN is not set" in done.stderr


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_nothing_starts_cancels_or_uploads_without_the_token(service: Service, raw_id: str, token):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=service.url, headers=headers) as anonymous:
        before = anonymous.get("/jobs").json()["count"]
        answers = [
            anonymous.post("/jobs", json={"dataset_id": raw_id, "train": {"max_steps": 2}}),
            anonymous.post("/jobs/job_0123456789abcdef/cancel"),
            anonymous.post("/datasets", files={"file": ("x.jsonl", b'{"prompt": "a", "target": "b"}\n')}),
        ]
        for r in answers:
            assert r.status_code == 401, (r.request.url, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
        assert anonymous.get("/jobs").json()["count"] == before  # reads stay open
    assert not list((service.data_dir / "uploads").glob("*x*"))


def test_upload_streams_to_a_server_chosen_name(service: Service, client: httpx.Client):
    r = client.post("/datasets", files={"file": ("../../../etc/evil.jsonl", MINI_FACTS.read_bytes())},
                    data={"format": "jsonl"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert re.fullmatch(r"dst_[0-9a-f]{16}", body["id"]) and r.headers["location"] == f"/datasets/{body['id']}"
    assert (body["kind"], body["name"], body["format"], body["bytes"]) == ("raw", "evil.jsonl", "jsonl", MINI_FACTS.stat().st_size)
    assert (service.data_dir / "uploads" / f"{body['id']}.jsonl").read_bytes() == MINI_FACTS.read_bytes()
    assert not (service.root / "etc").exists()
    listed = client.get("/datasets", params={"kind": "raw"}).json()
    assert body["id"] in [d["id"] for d in listed["data"]] and listed["count"] >= 1
    assert client.get(f"/datasets/{body['id']}").json()["sha256"] == body["sha256"]


def test_upload_limits_and_malformed_bodies(service: Service, client: httpx.Client):
    too_big = client.post("/datasets", files={"file": ("big.jsonl", b"x" * (UPLOAD_LIMIT + 1))})
    assert too_big.status_code == 413
    assert client.post("/datasets", files={"other": ("a.jsonl", b"{}")}).status_code == 422
    assert client.post("/datasets", files={"file": ("a.jsonl", b"")}).status_code == 422
    bad_format = client.post("/datasets", files={"file": ("a.jsonl", b"{}\n")}, data={"format": "xml"})
    assert bad_format.status_code == 422 and bad_format.json()["detail"][0]["loc"] == ["body", "format"]
    assert client.post("/datasets", json={"file": "x"}).status_code == 415
    assert not list((service.data_dir / "uploads").glob(".upload-*"))  # nothing half-written is left


@pytest.mark.parametrize("train, field", [
    ({"max_steps": 0}, ["body", "train", "max_steps"]),
    ({"max_steps": 2, "learning_rate": "fast"}, ["body", "train", "learning_rate"]),
    ({"max_steps": 2, "no_such_key": 1}, ["body", "train", "no_such_key"]),
    ({"max_steps": 2, "warmup_steps": 5}, ["body", "train"]),  # a cross-field rule: named in the message
])
def test_invalid_settings_are_422_naming_the_field(client: httpx.Client, raw_id: str, train, field):
    r = client.post("/jobs", json={"dataset_id": raw_id, "train": train})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == field
    if field == ["body", "train"]:
        assert "warmup_steps" in r.json()["detail"][0]["msg"]


def test_invalid_curate_settings_and_datasets_are_422(client: httpx.Client, raw_id: str, scored_id: str):
    r = client.post("/jobs", json={"dataset_id": raw_id, "curate": {"max_drift_quantile": 2}})
    assert r.json()["detail"][0]["loc"] == ["body", "curate", "max_drift_quantile"]
    r = client.post("/jobs", json={"dataset_id": "dst_ffffffffffffffff"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "dataset_id"]
    r = client.post("/jobs", json={"dataset_id": scored_id})
    assert r.status_code == 422 and "already scored" in r.json()["detail"][0]["msg"]
    assert client.post("/jobs", json={}).status_code == 422


def test_submit_answers_202_with_location_and_the_job(client: httpx.Client, raw_id: str):
    r = client.post("/jobs", json={"dataset_id": raw_id, "train": {"max_steps": 3}})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/jobs/{job['id']}"
    assert (job["status"], job["progress"], job["scored_dataset_id"]) == ("queued", 0.0, None)
    assert job["params"]["train"]["max_steps"] == 3 and job["params"]["train"]["epochs"] is None
    assert client.get(r.headers["location"]).json() == job
    # The store renders jobs as JSON itself; they must match the documented model.
    Job.model_validate(job)
    Page[Job].model_validate(client.get("/jobs", params={"limit": 200}).json())
    events = client.get(f"/jobs/{job['id']}/events").json()
    assert [e["kind"] for e in events["data"]] == ["queued"]


def test_the_same_idempotency_key_returns_the_same_job(client: httpx.Client, raw_id: str):
    body = {"dataset_id": raw_id, "train": {"max_steps": 2}}
    first = client.post("/jobs", json=body, headers={"Idempotency-Key": "same-key"})
    again = client.post("/jobs", json=body, headers={"Idempotency-Key": "same-key"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
    assert again.json()["idempotency_key"] == "same-key" and "idempotent-replayed" not in first.headers
    other = client.post("/jobs", json={**body, "train": {"max_steps": 5}}, headers={"Idempotency-Key": "same-key"})
    assert other.status_code == 422 and "different request" in other.json()["detail"]


def test_50_concurrent_submissions_with_10_keys_make_exactly_10_jobs(service: Service, raw_id: str):
    before = httpx.get(f"{service.url}/jobs").json()["count"]

    def submit(i: int) -> str:
        with service.client() as c:
            r = c.post("/jobs", json={"dataset_id": raw_id, "train": {"max_steps": 2}},
                       headers={"Idempotency-Key": f"burst-{i % 10}"})
            assert r.status_code == 202, r.text
            return r.json()["id"]
    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        ids = list(pool.map(submit, range(50)))
    assert len(set(ids)) == 10
    assert httpx.get(f"{service.url}/jobs").json()["count"] == before + 10


def test_list_filters_by_status_and_pages(client: httpx.Client, raw_id: str):
    ids = [client.post("/jobs", json={"dataset_id": raw_id, "train": {"max_steps": 2}}).json()["id"]
           for _ in range(3)]
    assert client.post(f"/jobs/{ids[0]}/cancel").json()["status"] == "cancelled"
    cancelled = client.get("/jobs", params={"status": "cancelled"}).json()
    assert ids[0] in [j["id"] for j in cancelled["data"]] and all(j["status"] == "cancelled" for j in cancelled["data"])
    page = client.get("/jobs", params={"limit": 2}).json()
    assert len(page["data"]) == 2 and page["count"] >= 3 and page["data"][0]["id"] == ids[2]
    assert client.get("/jobs", params={"limit": 2, "offset": 1}).json()["data"][0]["id"] == ids[1]
    assert client.get("/jobs", params={"status": "sleeping"}).status_code == 422
    assert client.get("/jobs", params={"limit": 0}).status_code == 422


def test_cancel_a_queued_job_then_again_is_409(client: httpx.Client, raw_id: str):
    job = client.post("/jobs", json={"dataset_id": raw_id, "train": {"max_steps": 2}}).json()
    r = client.post(f"/jobs/{job['id']}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    assert client.post(f"/jobs/{job['id']}/cancel").status_code == 409
    assert client.post("/jobs/job_ffffffffffffffff/cancel").status_code == 404
    assert client.get("/jobs/job_ffffffffffffffff").status_code == 404
    kinds = [e["kind"] for e in client.get(f"/jobs/{job['id']}/events").json()["data"]]
    assert kinds == ["queued", "cancel_requested", "cancelled"]


# --- paths ------------------------------------------------------------------------------------------

def test_dataset_paths_are_confined_to_the_imports_folder(service: Service, client: httpx.Client, tmp_path: Path):
    imports = service.data_dir / "imports"
    (imports / "facts.jsonl").write_bytes(MINI_FACTS.read_bytes())
    outside = tmp_path / "secret.jsonl"
    outside.write_text('{"prompt": "p", "target": "t"}\n')
    os.symlink(outside, imports / "link.jsonl")
    os.symlink(tmp_path, imports / "linkdir")
    for path, why in [("../beacon.db", "'..'"), ("sub/../../beacon.db", "'..'"), ("/etc/passwd", "absolute"),
                      (str(outside), "absolute"), ("link.jsonl", "outside"), ("linkdir/secret.jsonl", "outside"),
                      ("missing.jsonl", "does not exist"), ("", "empty")]:
        r = client.post("/jobs", json={"dataset_path": path})
        assert r.status_code == 422, (path, r.text)
        detail = r.json()["detail"][0]
        assert detail["loc"] == ["body", "dataset_path"] and why in detail["msg"], (path, detail)
    ok = client.post("/jobs", json={"dataset_path": "facts.jsonl", "train": {"max_steps": 2}})
    assert ok.status_code == 202, ok.text
    dataset = client.get(f"/datasets/{ok.json()['dataset_id']}").json()
    assert (dataset["kind"], dataset["name"]) == ("raw", "facts.jsonl")


def test_replay_files_are_confined_to_the_imports_folder(service: Service, client: httpx.Client, raw_id: str):
    imports = service.data_dir / "imports"
    (imports / "replay.txt").write_text("The weather today is\n")
    for path, why in [("/etc/passwd", "absolute"), ("../beacon.db", "'..'"), ("missing.txt", "does not exist")]:
        r = client.post("/jobs", json={"dataset_id": raw_id, "train": {"locality_weight": 1.0, "replay": path}})
        assert r.status_code == 422, (path, r.text)
        detail = r.json()["detail"][0]
        assert detail["loc"] == ["body", "train", "replay"] and why in detail["msg"], (path, detail)
    r = client.post("/jobs", json={"dataset_id": raw_id, "train": {"replay": "replay.txt"}})
    assert r.status_code == 422 and "locality_weight is 0" in r.text, r.text
    ok = client.post("/jobs", json={"dataset_id": raw_id, "train": {"locality_weight": 1.0, "replay": "replay.txt",
                                                                    "max_steps": 2}})
    assert ok.status_code == 202, ok.text


def test_artifact_paths_cannot_leave_the_job(service: Service, client: httpx.Client, raw_id: str, tmp_path: Path):
    job = client.post("/jobs", json={"dataset_id": raw_id, "train": {"max_steps": 2}}).json()
    run = service.data_dir / "jobs" / job["id"] / "run"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text('{"efficacy": 1}')
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    os.symlink(secret, run / "link.txt")
    assert client.get(f"/jobs/{job['id']}/artifacts/run/metrics.json").json() == {"efficacy": 1}
    listed = [a["path"] for a in client.get(f"/jobs/{job['id']}/artifacts").json()["data"]]
    assert listed == ["run/metrics.json"]
    for path in ["run/link.txt", "..%2F..%2Fbeacon.db", "run/..%2F..%2F..%2Fbeacon.db", "%2Fetc%2Fpasswd",
                 "run/%2E%2E/%2E%2E/%2E%2E/beacon.db", "run"]:
        r = client.get(f"/jobs/{job['id']}/artifacts/{path}")
        assert r.status_code == 404 and "secret" not in r.text and "SQLite" not in r.text, (path, r.text)


# --- stats and queries ------------------------------------------------------------------------------

def test_stats_of_a_scored_dataset(client: httpx.Client, scored_id: str, raw_id: str):
    stats = client.get(f"/datasets/{scored_id}/stats").json()
    assert stats["counts"] == {"scored": 6, "kept": 4, "rejected": 1, "with_conflicts": 2,
                               "by_reason": {"conflict": 1, "duplicate": 1, "kept": 4}}
    drift = stats["drift"]
    assert drift["min"] == 0.05 and drift["max"] == 1.2 and drift["quantiles"]["q0.5"] == pytest.approx(0.6)
    assert drift["definition"] == "expected"  # which drift the dataset's `drift` column holds
    assert len(drift["histogram"]) == 20 and sum(b["count"] for b in drift["histogram"]) == 6
    assert drift["histogram"][0]["low"] == 0.05 and drift["histogram"][-1]["high"] == pytest.approx(1.2)
    assert [b["count"] for b in drift["histogram"] if b["count"]] == [1, 1, 2, 1, 1]  # 0.05 .3 .6 .6 .9 1.2
    assert sum(b["count"] for b in stats["interference"]["histogram"]) == 6
    [pair] = stats["top_conflicts"]
    assert (pair["a"]["fact_id"], pair["b"]["fact_id"], pair["interference"]) == ("s1", "s4", 0.99)
    risk = stats["risk"]  # kept facts at risk: only s5 (s3 and s4 are at or above 0.5 but filtered)
    assert (risk["at_risk"], risk["threshold"]) == (1, 0.5) and risk["max"] == pytest.approx(0.85)
    assert sum(b["count"] for b in risk["histogram"]) == 6
    assert client.get(f"/datasets/{scored_id}/stats").json() == stats  # cached, the same
    DatasetStats.model_validate(stats)
    assert client.get(f"/datasets/{raw_id}/stats").status_code == 409
    assert client.get("/datasets/dst_ffffffffffffffff/stats").status_code == 404


def test_query_answers_columns_rows_truncated(client: httpx.Client, scored_id: str):
    r = client.post(f"/datasets/{scored_id}/query",
                    json={"sql": "select reason, count(*) as n from scored group by reason order by reason"})
    assert r.status_code == 200, r.text
    assert r.json()["columns"] == ["reason", "n"]
    assert r.json()["rows"] == [["conflict", 1], ["duplicate", 1], ["kept", 4]]
    assert r.json()["truncated"] is False
    r = client.post(f"/datasets/{scored_id}/query", json={"sql": "select * from range(100)"}).json()
    assert len(r["rows"]) == 50 and r["truncated"] is True  # the server's row limit
    r = client.post(f"/datasets/{scored_id}/query", json={"sql": "select * from scored", "limit": 2}).json()
    assert len(r["rows"]) == 2 and r["truncated"] is True
    r = client.post(f"/datasets/{scored_id}/query", json={"sql": "select error from rejected"}).json()
    assert r["rows"] == [["line is not valid JSON"]]
    r = client.post(f"/datasets/{scored_id}/query", json={"sql": "select count(*) from eval"}).json()
    assert r["rows"] == [[0]]  # no evaluation yet: an empty view of the right shape
    r = client.post(f"/datasets/{scored_id}/query", json={"sql": "select 'nan'::double, 'x'::blob, [1], {'a': 1}"})
    assert r.json()["rows"] == [[None, "eA==", [1], {"a": 1}]]


FORBIDDEN = [
    ("COPY scored TO '{out}'", "only SELECT"),
    ("COPY (SELECT 1) TO '{out}'", "only SELECT"),
    ("ATTACH '{out}.db' AS x", "only SELECT"),
    ("ATTACH ':memory:' AS x", "only SELECT"),
    ("SELECT * FROM read_csv('/etc/passwd')", "calls read_csv()"),
    ("SELECT * FROM read_text('/etc/passwd')", "calls read_text()"),
    ("SELECT * FROM read_parquet('{db}')", "calls read_parquet()"),
    ("SELECT * FROM '/etc/passwd'", "directly"),  # no replacement scan of files at all
    ("SELECT * FROM glob('/*')", "calls glob()"),
    ("INSTALL httpfs", "only SELECT"),
    ("LOAD httpfs", "only SELECT"),
    ("SELECT * FROM read_json('https://example.com/x.json')", "calls read_json()"),
    ("SET enable_external_access = true", "only SELECT"),
    ("SET threads = 64", "only SELECT"),
    ("RESET lock_configuration", "only SELECT"),
    ("PRAGMA threads = 64", "only SELECT"),
    ("PRAGMA database_list", "only SELECT"),
    ("CALL pragma_version()", "only SELECT"),
    ("SELECT 1; SELECT 2", "exactly one statement"),
    ("SELECT 1; COPY (SELECT 1) TO '{out}'", "exactly one statement"),
    ("CREATE TABLE t AS SELECT 1", "only SELECT"),
    ("EXPORT DATABASE '{out}'", "only SELECT"),
    ("SELECT * FROM query('ATTACH ''x.db''')", "calls query()"),
    ("selec 1", "does not parse"),
]


@pytest.mark.parametrize("sql, why", FORBIDDEN)
def test_query_cannot_touch_files_settings_or_extensions(service: Service, client: httpx.Client, scored_id: str,
                                                         tmp_path: Path, sql: str, why: str):
    out = tmp_path / "leak.csv"
    sql = sql.format(out=out, db=service.data_dir / "beacon.db")
    r = client.post(f"/datasets/{scored_id}/query", json={"sql": sql})
    assert r.status_code == 400, r.text
    assert why in r.json()["detail"], r.json()["detail"]
    assert not list(tmp_path.iterdir())


def test_a_query_past_the_time_limit_is_stopped(client: httpx.Client, scored_id: str):
    r = client.post(f"/datasets/{scored_id}/query", json={"sql": "select count(*) from range(1000000000000)"})
    assert r.status_code == 400 and "ran longer than the limit of 1 s" in r.json()["detail"]
    assert r.elapsed.total_seconds() < 10
    # the server is fine afterwards
    assert client.post(f"/datasets/{scored_id}/query", json={"sql": "select 1"}).json()["rows"] == [[1]]


def test_query_of_raw_or_unknown_datasets(client: httpx.Client, raw_id: str):
    assert client.post(f"/datasets/{raw_id}/query", json={"sql": "select 1"}).status_code == 409
    assert client.post("/datasets/dst_ffffffffffffffff/query", json={"sql": "select 1"}).status_code == 404
    assert client.post("/datasets/..%2F..%2Fetc/query", json={"sql": "select 1"}).status_code in (404, 422)
