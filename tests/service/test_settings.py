"""Settings from BEACON_* variables, the refusal to serve unprotected, and protected reads (in process)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.api.app import create_app
from service.settings import Settings


def test_settings_come_from_beacon_variables(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("BEACON_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BEACON_LEASE_SECONDS", "9")
    monkeypatch.setenv("BEACON_API_TOKEN", "t0k")
    settings = Settings()
    assert settings.data_dir == tmp_path and settings.database_url == str(tmp_path / "beacon.db")
    assert settings.lease_seconds == 9 and settings.heartbeat_every == 3 and settings.token() == "t0k"
    assert "t0k" not in repr(settings)  # the token never shows in logs


def test_inconsistent_settings_are_refused():
    with pytest.raises(ValidationError, match="heartbeat_seconds"):
        Settings(lease_seconds=3, heartbeat_seconds=5)


def test_object_store_prefixes_are_folders_of_a_bucket(monkeypatch):
    monkeypatch.setenv("BEACON_OBJECT_STORE_PREFIXES", "s3://team/beacon, gs://other")
    settings = Settings()
    assert settings.object_store_prefixes == ["s3://team/beacon/", "gs://other/"]
    assert settings.allows_url("s3://team/beacon/in/facts.jsonl") and settings.allows_url("gs://other/x")
    assert not settings.allows_url("s3://team/beacon-other/facts.jsonl")  # a prefix is a folder
    assert not settings.allows_url("s3://team/beacon/../secrets/facts.jsonl")
    assert not settings.allows_url("s3://team/facts.jsonl")
    assert not Settings(object_store_prefixes=[]).allows_url("s3://team/beacon/x")  # the default: none
    for bad in ("team/beacon", "s3:///beacon"):
        with pytest.raises(ValidationError, match="not an object-store URL with a bucket"):
            Settings(object_store_prefixes=[bad])


def test_a_job_on_an_object_store_needs_the_operator_to_allow_it(tmp_path: Path):
    app = create_app(Settings(data_dir=tmp_path, api_token="t"))
    with TestClient(app, headers={"Authorization": "Bearer t"}) as client:
        for field, body in (("dataset_path", {"dataset_path": "s3://team/facts.jsonl"}),
                            ("output_url", {"dataset_path": "facts.jsonl", "output_url": "s3://team/out"})):
            r = client.post("/jobs", json=body)
            assert r.status_code == 422, r.text
            [detail] = r.json()["detail"]
            assert detail["loc"] == ["body", field] and "BEACON_OBJECT_STORE_PREFIXES: none are set" in detail["msg"]
        assert client.get("/jobs").json()["count"] == 0


def test_no_token_means_no_server_unless_dev_mode(tmp_path: Path):
    with pytest.raises(ValueError, match="BEACON_API_TOKEN is not set"):
        create_app(Settings(data_dir=tmp_path))
    with TestClient(create_app(Settings(data_dir=tmp_path, dev_mode=True))) as open_dev:
        r = open_dev.post("/datasets", files={"file": ("a.jsonl", b'{"prompt": "p", "target": "t"}\n')})
        assert r.status_code == 201  # dev mode without a token: open, and the log says so


def test_protected_reads_need_the_token_too(tmp_path: Path):
    app = create_app(Settings(data_dir=tmp_path, api_token="secret", protect_reads=True))
    with TestClient(app) as client:
        assert client.get("/jobs").status_code == 401
        assert client.get("/jobs", headers={"Authorization": "Bearer secret"}).json() == {"data": [], "count": 0}
        assert client.get("/healthz").status_code == 200  # for load balancers and compose


def test_the_api_never_imports_torch_transformers_or_beam(tmp_path: Path):
    import subprocess
    import sys

    from service_fixtures import REPO, seed_scored_dataset

    seed_scored_dataset(tmp_path)
    script = f"""
import sys
from fastapi.testclient import TestClient
from service.api.app import create_app
from service.settings import Settings
with TestClient(create_app(Settings(data_dir={str(tmp_path)!r}, api_token="t"))) as c:
    auth = {{"Authorization": "Bearer t"}}
    raw = c.post("/datasets", headers=auth, files={{"file": ("a.jsonl", b'{{"prompt": "p", "target": "t"}}')}})
    assert c.post("/jobs", headers=auth, json={{"dataset_id": raw.json()["id"]}}).status_code == 202
    assert c.get("/jobs").status_code == 200
    assert c.get("/datasets/dst_5eed000000000001/stats").status_code == 200
    assert c.post("/datasets/dst_5eed000000000001/query", json={{"sql": "select * from eval"}}).status_code == 200
heavy = sorted(m for m in ("torch", "transformers", "apache_beam", "sentence_transformers", "peft") if m in sys.modules)
assert not heavy, heavy
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
