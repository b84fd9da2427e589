"""A job whose dataset is an object in S3 and whose results are published back to S3, against a real
S3 API server (moto's, on loopback: conftest ``s3_env``), a real ``beacon serve`` and ``beacon worker``;
and what the API refuses before a job is queued (a URL outside the allowed prefixes, a missing object or
bucket, a ``..`` segment)."""

from __future__ import annotations

import json

import httpx
import pytest

from service_fixtures import Service
from test_jobs_e2e import events, wait_status

pytestmark = pytest.mark.slow
BUCKET = "beacon-test"  # the root conftest's BUCKET, which s3_env creates (tests/service/conftest.py shadows it)

INPUT = f"s3://{BUCKET}/in/mini_facts.jsonl"
PREFIXES = f"s3://{BUCKET}/in/,s3://{BUCKET}/published"


@pytest.fixture(scope="module")
def service(tmp_path_factory, s3_env) -> Service:
    svc = Service(tmp_path_factory.mktemp("s3jobs"), object_store_prefixes=PREFIXES).start_server()
    svc.start_worker()  # both inherit s3_env's AWS_* variables: the store's own environment
    yield svc
    svc.stop()


def _keys(prefix: str) -> dict[str, int]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


def _json(key: str) -> dict:
    import boto3

    return json.loads(boto3.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read())


def _refused(client: httpx.Client, body: dict, field: str) -> str:
    r = client.post("/jobs", json=body)
    assert r.status_code == 422, r.text
    [detail] = r.json()["detail"]
    assert detail["loc"] == ["body", field], detail
    return detail["msg"]


def test_the_api_refuses_urls_it_may_not_or_cannot_use(client: httpx.Client):
    msg = _refused(client, {"dataset_path": f"s3://{BUCKET}/elsewhere/facts.jsonl"}, "dataset_path")
    assert "BEACON_OBJECT_STORE_PREFIXES" in msg and f"s3://{BUCKET}/in/" in msg
    assert "is not a file" in _refused(client, {"dataset_path": f"s3://{BUCKET}/in/nothing.jsonl"}, "dataset_path")
    msg = _refused(client, {"dataset_path": INPUT, "output_url": f"s3://{BUCKET}/published/../in"}, "output_url")
    assert "'..' segment" in msg
    msg = _refused(client, {"dataset_path": INPUT, "output_url": f"s3://{BUCKET}/publishedx"}, "output_url")
    assert "BEACON_OBJECT_STORE_PREFIXES" in msg  # a prefix is a folder: publishedx is not under published/
    assert client.get("/jobs").json()["count"] == 0  # nothing was queued


def test_a_job_reads_from_and_publishes_to_s3(service: Service, client: httpx.Client, curated):
    from schemas import Manifest
    from trainer.data import read_scored

    r = client.post("/jobs", json={"dataset_path": INPUT, "output_url": f"s3://{BUCKET}/published/",
                                   "train": {"max_steps": 2, "save_steps": 1}})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    job = wait_status(client, service, job_id, {"succeeded", "failed", "cancelled"}, timeout=600)
    assert job["status"] == "succeeded", job
    history = events(client, job_id)
    assert [e["data"]["stage"] for e in history if e["kind"] == "stage_done"] == [
        "curating", "training", "evaluating", "publishing"]
    target = f"s3://{BUCKET}/published/{job_id}"
    assert [e["data"]["url"] for e in history if e["kind"] == "published"] == [target]
    assert client.get(f"/datasets/{job['dataset_id']}").json()["name"] == "mini_facts.jsonl"

    # The dataset: committed as `beacon curate --out s3://…` commits (manifest last, naming exactly its
    # files), the service's own copy row for row, and the decisions of a local curation of the same file
    # (its scores agree to float precision: that one ran with a smaller probe batch).
    local = service.data_dir / "datasets" / job["scored_dataset_id"]
    manifest = _json(f"published/{job_id}/dataset/manifest.json")
    assert manifest["dataset_id"] == Manifest.read(local).dataset_id == Manifest.read(curated).dataset_id
    named = {f"published/{job_id}/dataset/{n}" for names in manifest["files"].values() for n in names}
    assert set(_keys(f"published/{job_id}/dataset/")) == named | {f"published/{job_id}/dataset/manifest.json"}
    counts = manifest["counts"]
    assert counts["input"] == counts["scored"] + counts["rejected"] == 12

    def rows(dataset) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "source"} for row in read_scored(dataset).to_pylist()]
    published = rows(f"{target}/dataset")
    assert published == rows(local)
    decisions = ("fact_id", "keep", "reason", "weight")
    assert [[r[k] for k in decisions] for r in published] == [[r[k] for k in decisions] for r in rows(curated)]

    # The run: every file but the checkpoints, each the size the index says, the index written last.
    index = _json(f"published/{job_id}/run/files.json")
    assert index["job_id"] == job_id
    objects = _keys(f"published/{job_id}/run/")
    assert {f"published/{job_id}/run/{e['path']}": e["bytes"] for e in index["files"]} == {
        k: v for k, v in objects.items() if not k.endswith("/files.json")}
    paths = {e["path"] for e in index["files"]}
    assert {"adapter/adapter_model.safetensors", "metrics.json", "eval.parquet", "trace.parquet"} <= paths
    assert not any(p.startswith("checkpoints/") for p in paths)
    assert _json(f"published/{job_id}/run/metrics.json") == job["metrics"]
