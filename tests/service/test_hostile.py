"""Hostile and careless input against a real `beacon serve`: every case the adversarial pass found.

Non-finite numbers, runaway and huge queries, spill, leaked server paths, settings a worker cannot
honour, models outside the operator's folder, a damaged job row, stale upload files. Each request
must get a 4xx (never a 5xx), and the job list must keep answering after it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from service_fixtures import Service, seed_scored_dataset

MAX_BYTES = 200_000


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Service:
    root = tmp_path_factory.mktemp("hostile")
    uploads = root / "data" / "uploads"
    uploads.mkdir(parents=True)
    # Left by an upload whose server was killed: older than the longest upload, so removed at start.
    stale, fresh = uploads / ".upload-0123456789abcdef", uploads / ".upload-fedcba9876543210"
    stale.write_bytes(b"half an upload")
    fresh.write_bytes(b"an upload in progress")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    svc = Service(root, query_timeout_seconds=1, query_max_bytes=MAX_BYTES, query_concurrency=4,
                  query_memory_limit="64MB", query_spill_bytes=50_000_000, stale_upload_seconds=3600)
    svc.start_server()
    (svc.data_dir / "models" / "my-lm").mkdir(parents=True)
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def scored_id(service: Service) -> str:
    return seed_scored_dataset(service.data_dir)


def jobs_still_answer(client: httpx.Client) -> None:
    for url in ("/jobs", "/jobs?status=queued"):
        r = client.get(url)
        assert r.status_code == 200, r.text
        assert isinstance(r.json()["data"], list)


def post_raw(client: httpx.Client, url: str, text: str) -> httpx.Response:
    return client.post(url, content=text.encode(), headers={"Content-Type": "application/json"})


# --- non-finite numbers -------------------------------------------------------------------------------

NON_FINITE = ["Infinity", "-Infinity", "NaN"]
JOB_FIELDS = [("train", "learning_rate"), ("train", "epochs"), ("train", "lora_alpha"), ("curate", "max_drift"),
              ("curate", "max_interference"), ("curate", "weight_strength"), ("train", "max_steps"),
              ("curate", "max_drift_quantile"), ("eval", "pushed_away_epsilon")]


@pytest.mark.parametrize("section, field", JOB_FIELDS)
@pytest.mark.parametrize("value", NON_FINITE)
def test_a_non_finite_number_in_a_job_is_422_naming_the_field(client, raw_id, section, field, value):
    r = post_raw(client, "/jobs", f'{{"dataset_id": "{raw_id}", "{section}": {{"{field}": {value}}}}}')
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][-2:] == [section, field]
    jobs_still_answer(client)


@pytest.mark.parametrize("body", [
    '{"dataset_id": NaN}', '{"dataset_path": Infinity}', '{"curate": {"weight_clip": [0.2, Infinity]}}',
    '{"dataset_id": "dst_0000000000000001", "train": NaN}'])
def test_non_finite_numbers_anywhere_in_a_job_are_422(client, body):
    r = post_raw(client, "/jobs", body)
    assert r.status_code == 422, r.text
    json.dumps(r.json(), allow_nan=False)  # the answer itself is strict JSON
    jobs_still_answer(client)


def test_a_huge_refused_string_is_named_by_its_start_and_length_not_echoed(client, raw_id):
    r = client.post("/jobs", json={"dataset_id": raw_id, "curate": {"interference_index": "x" * 10_000_000}})
    assert r.status_code == 422, r.text[:300]
    [detail] = r.json()["detail"]
    assert detail["loc"][-2:] == ["curate", "interference_index"]
    assert detail["input"] == "x" * 200 + "… (10,000,000 characters)" and len(r.content) < 5_000
    jobs_still_answer(client)


@pytest.mark.parametrize("limit", ["NaN", "Infinity", "1e400", "99999999999999999999999999"])
def test_a_non_finite_or_huge_query_limit_is_422(client, scored_id, limit):
    r = post_raw(client, f"/datasets/{scored_id}/query", f'{{"sql": "select 1", "limit": {limit}}}')
    assert r.status_code == 422, r.text


# --- settings a worker cannot honour -------------------------------------------------------------------

@pytest.mark.parametrize("section, field, value", [
    ("train", "max_steps", 2**63), ("train", "max_steps", 10**30), ("train", "epochs", 1e308),
    ("train", "seed", 2**64), ("train", "seed", -1), ("train", "lora_rank", 10**6), ("train", "batch_size", 10**9),
    ("train", "max_seq_len", 10**9), ("train", "gradient_accumulation_steps", 10**9), ("train", "warmup_steps", 2**40),
    ("curate", "lsh_bands", 10**6), ("curate", "probe_batch_size", 10**7), ("curate", "max_prompt_chars", 10**12),
    ("curate", "lsh_seed", 2**64), ("eval", "batch_size", 10**9), ("eval", "extra_new_tokens", 10**6),
])
def test_settings_past_their_bounds_are_refused_at_submit(client, raw_id, section, field, value):
    r = client.post("/jobs", json={"dataset_id": raw_id, section: {field: value}})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][-2:] == [section, field]
    jobs_still_answer(client)


@pytest.mark.parametrize("section, key, spec", [
    ("curate", "model", "/etc"), ("curate", "model", "../../etc"), ("curate", "model", "gpt2"),
    ("curate", "model", "models/../../etc"), ("curate", "model", "models/missing"),
    ("curate", "model", "bundled:nope"), ("curate", "encoder", "/root"),
    ("curate", "encoder", "sentence-transformers/all-MiniLM-L6-v2"), ("train", "model", "/tmp"),
])
def test_models_outside_the_operators_folder_are_refused(client, raw_id, section, key, spec):
    r = client.post("/jobs", json={"dataset_id": raw_id, section: {key: spec}})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", section, key]
    assert any(w in r.json()["detail"][0]["msg"] for w in ("BEACON_ALLOW_HUB_MODELS", "bundled", "models/ folder"))


def test_bundled_names_and_the_operators_models_are_allowed(client, raw_id):
    for body in ({"curate": {"model": "bundled:gemma3-270m"}}, {"curate": {"model": "models/my-lm"}},
                 {"train": {"model": "models/my-lm"}, "curate": {"encoder": "bundled:all-minilm-l6-v2"}}):
        r = client.post("/jobs", json={"dataset_id": raw_id, **body})
        assert r.status_code == 202, r.text
        assert client.post(f"/jobs/{r.json()['id']}/cancel").status_code == 202


# --- one damaged row never takes a list down -----------------------------------------------------------

def test_a_row_that_cannot_be_rendered_is_reported_and_the_rest_is_served(service, client, raw_id):
    good = client.post("/jobs", json={"dataset_id": raw_id}).json()["id"]
    client.post(f"/jobs/{good}/cancel")
    bad = client.post("/jobs", json={"dataset_id": raw_id}).json()["id"]
    client.post(f"/jobs/{bad}/cancel")
    with sqlite3.connect(service.data_dir / "beacon.db") as con:  # as an older Beacon could have written it
        con.execute("UPDATE jobs SET params = ?, metrics = ? WHERE id = ?",
                    ('{"train": {"learning_rate": Infinity}}', "{NaN", bad))
    listed = {j["id"]: j for j in client.get("/jobs", params={"limit": 200}).json()["data"]}
    assert good in listed and bad in listed
    assert listed[good]["params"]["train"]["learning_rate"] == 0.001 and listed[good]["error"] is None
    assert listed[bad]["params"] == {"unreadable": "stored value is not valid JSON"}
    assert "not valid JSON" in listed[bad]["error"] and listed[bad]["metrics"] is None
    assert client.get(f"/jobs/{bad}").status_code == 200
    with sqlite3.connect(service.data_dir / "beacon.db") as con:
        con.execute("UPDATE events SET data = ? WHERE job_id = ? AND id = (SELECT min(id) FROM events "
                    "WHERE job_id = ?)", ("NaN", bad, bad))
        con.execute("INSERT INTO events (job_id, at, kind, message, data) VALUES (?, 0, 'x', 'by hand', '[1, 2]')",
                    (bad,))
    r = client.get(f"/jobs/{bad}/events")
    assert r.status_code == 200, r.text
    assert r.json()["data"][-1]["data"] == {"value": [1, 2]}
    jobs_still_answer(client)


# --- queries --------------------------------------------------------------------------------------------

RUNAWAY = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r, range(2)) SELECT count(*) FROM r"

# sql -> expected status, and words of the answer (the detail, or a value in the rows)
SQL_CASES = [
    (RUNAWAY, 400, "ran longer than the limit of 1 s|Out of Memory"),  # time or spill cap: either stops it
    ("select count(*) from range(1000000000000)", 400, "ran longer than the limit"),
    # DuckDB builds 1,000 rows of 1 MB at once: on a loaded machine the time limit may come first.
    ("SELECT repeat('x', 1000000) FROM range(1000)", "413|400", "BEACON_QUERY_MAX_BYTES|ran longer"),
    ("SELECT repeat('x', 1000) FROM range(1000)", 413, "larger than the limit"),
    ("select current_setting('allowed_paths')", 400, "calls current_setting()"),
    ("select reverse(current_setting('temp_directory'))", 400, "calls current_setting()"),
    ('select "current_setting"(\'home_directory\')', 400, "calls current_setting()"),
    ("select * from duckdb_views()", 400, "calls duckdb_views()"),
    ("select * from duckdb_settings()", 400, "calls duckdb_settings()"),
    ("select sql from duckdb_views", 400, "calls duckdb_views()"),
    ("select getenv('HOME')", 400, "calls getenv()"),
    ("select * from json_execute_serialized_sql('{}')", 400, "calls json_execute_serialized_sql()"),
    ("select sql from sqlite_master", 400, "calls sqlite_master()"),
    ("select source from 'datasets/dst_5eed000000000001/scored/part-0.parquet'", 400, "directly"),
    ('select source from "datasets/dst_5eed000000000001/scored/part-0.parquet"', 400, "directly"),
    ("select * from part-0.parquet", 400, "parse|directly"),
    ("SUMMARIZE 'datasets/dst_5eed000000000001/scored/part-0.parquet'", 400, "directly"),
    ("PIVOT 'datasets/dst_5eed000000000001/scored/part-0.parquet' ON reason USING count(*)", 400, "name a file"),
    ("select * from pg_catalog.pg_settings", 400, "calls pg_"),
    ("select * from information_schema.tables", 400, "calls information_schema()"),
    ("select * from parquet_metadata('x')", 400, "calls parquet_metadata()"),
    ("PIVOT scored ON reason USING count(*)", 200, "conflict"),
    ("SELECT * FROM scored PIVOT (count(*) FOR reason IN ('kept', 'duplicate'))", 200, "kept"),
    ("select distinct source from rejected", 200, "facts.jsonl"),
    ("select 1", 200, "1"),
]


@pytest.mark.parametrize("sql, status, words", SQL_CASES)
def test_hostile_sql_gets_its_status_and_frees_its_slot(service, client, scored_id, sql, status, words):
    started = time.monotonic()
    r = client.post(f"/datasets/{scored_id}/query", json={"sql": sql})
    assert str(r.status_code) in str(status).split("|"), r.text
    shown = r.json()["detail"] if r.status_code != 200 else json.dumps([r.json()["columns"], r.json()["rows"]])
    assert any(w in shown for w in words.split("|")), shown
    assert str(service.data_dir) not in r.text and str(Path.home()) + "/" not in r.text
    assert time.monotonic() - started < 10  # the deadline held (generous: this is not a speed test)
    assert client.post(f"/datasets/{scored_id}/query", json={"sql": "select 42"}).json()["rows"] == [[42]]


def test_runaway_queries_never_keep_a_slot(client, scored_id):
    # More runaways in a row than there are slots: each must free its own, or the last would get 429.
    for _ in range(6):
        r = client.post(f"/datasets/{scored_id}/query", json={"sql": RUNAWAY})
        assert r.status_code == 400, r.text
    assert client.post(f"/datasets/{scored_id}/query", json={"sql": "select 1"}).status_code == 200
    jobs_still_answer(client)


def test_spill_stays_under_the_data_root_and_is_removed(service, client, scored_id):
    r = client.post(f"/datasets/{scored_id}/query", json={
        "sql": "select count(*) from (select i, md5(i::varchar) as h from range(3000000) t(i) order by h)"})
    assert r.status_code in (200, 400), r.text  # done, or over the time or spill limit: never a 5xx
    assert not (Path(service.root) / ".tmp").exists() and not Path(".tmp").exists()
    tmp = service.data_dir / "tmp"
    assert not tmp.exists() or not list(tmp.iterdir())


def test_source_paths_are_shown_as_file_names(service, client, scored_id):
    rows = client.post(f"/datasets/{scored_id}/query", json={"sql": "select source from scored"}).json()["rows"]
    assert rows and all("/" not in row[0] for row in rows)


# --- uploads --------------------------------------------------------------------------------------------

def test_startup_removes_only_stale_upload_temp_files(service):
    uploads = service.data_dir / "uploads"
    assert not (uploads / ".upload-0123456789abcdef").exists()
    assert (uploads / ".upload-fedcba9876543210").exists()


def test_stats_of_a_dataset_curated_before_drift_definition_was_a_column(service, client, scored_id):
    import pyarrow.parquet as pq

    from service.store import Store

    old_id = "dst_01d0000000000001"
    src, dst = service.data_dir / "datasets" / scored_id, service.data_dir / "datasets" / old_id
    (dst / "scored").mkdir(parents=True)
    table = pq.read_table(src / "scored" / "part-0.parquet")
    pq.write_table(table.drop_columns(["drift_definition", "risk"]), dst / "scored" / "part-0.parquet")
    (dst / "manifest.json").write_bytes((src / "manifest.json").read_bytes())
    Store(service.data_dir / "beacon.db").insert_dataset(id=old_id, kind="scored", name="old", format="parquet",
                                                         path=f"datasets/{old_id}", rows=table.num_rows)
    r = client.get(f"/datasets/{old_id}/stats")
    assert r.status_code == 200, r.text
    assert r.json()["drift"]["definition"] == "expected"  # from the manifest
    assert r.json()["risk"] is None  # curated before the risk column: said, not a 500


def test_stats_of_a_dataset_whose_parquet_is_damaged_is_409(service, client):
    from service.store import Store

    bad_id = "dst_bad0000000000001"
    folder = service.data_dir / "datasets" / bad_id
    (folder / "scored").mkdir(parents=True)
    (folder / "scored" / "part-0.parquet").write_bytes(b"PAR1 not really parquet PAR1")
    Store(service.data_dir / "beacon.db").insert_dataset(id=bad_id, kind="scored", name="bad", format="parquet",
                                                         path=f"datasets/{bad_id}", rows=1)
    r = client.get(f"/datasets/{bad_id}/stats")
    assert r.status_code == 409 and "cannot be read" in r.json()["detail"], r.text
    jobs_still_answer(client)
