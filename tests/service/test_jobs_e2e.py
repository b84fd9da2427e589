"""Real jobs: `beacon serve` + `beacon worker` processes, the bundled models, tiny settings.

One tiny job goes end to end, and its worker is killed with SIGKILL halfway through training on the
way: a restarted worker takes it over and it still finishes. (A second, undisturbed job would double
the cost: on 2 busy cores each job is ~2 minutes, most of it evaluation.) Then a second job, which
reuses the curation, is cancelled while it trains.
"""

from __future__ import annotations

import json
import os
import signal

import httpx
import pytest

from service_fixtures import Service, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(tmp_path_factory, job_store_url: str) -> Service:
    # Once with SQLite, once with PostgreSQL (job_store_url, conftest.py): the same jobs, the same checks.
    settings = {"database": job_store_url} if job_store_url else {}
    svc = Service(tmp_path_factory.mktemp("jobs"), **settings).start_server()
    svc.start_worker()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def job_id(client: httpx.Client, raw_id: str) -> str:
    r = client.post("/jobs", json={"dataset_id": raw_id, "train": {"max_steps": 3, "save_steps": 1}},
                    headers={"Idempotency-Key": "e2e"})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def wait_status(client: httpx.Client, service: Service, job_id: str, statuses: set[str], timeout: float) -> dict:
    def done():
        job = client.get(f"/jobs/{job_id}").json()
        return job if job["status"] in statuses else None
    try:
        return wait_for(done, timeout=timeout, interval=0.5, what=f"job {job_id} to reach {statuses}")
    except AssertionError:
        logs = service.data_dir / "jobs" / job_id / "logs"
        tails = {p.name: p.read_text(errors="replace")[-1500:] for p in logs.glob("*.log")} if logs.is_dir() else {}
        raise AssertionError(f"{client.get(f'/jobs/{job_id}').json()}\n{tails}\n"
                             f"{[service.log(f'worker-{i}') for i in range(len(service.workers))]}") from None


def events(client: httpx.Client, job_id: str) -> list[dict]:
    return client.get(f"/jobs/{job_id}/events").json()["data"]


def stage_pid(client: httpx.Client, job_id: str, stage: str) -> int | None:
    for e in reversed(events(client, job_id)):
        if e["kind"] == "stage" and e["data"]["stage"] == stage:
            return e["data"]["pid"]
    return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has ended; only its parent has not reaped it yet
        return f.read().split(")")[-1].split()[0] != "Z"


def test_a_worker_killed_mid_job_does_not_lose_the_job(service: Service, client: httpx.Client, job_id: str):
    run = service.data_dir / "jobs" / job_id / "run"
    wait_for(lambda: (run / "checkpoints" / "checkpoint-1" / "beacon_run.json").is_file(), timeout=300,
             interval=0.2, what="the first checkpoint")
    pid = stage_pid(client, job_id, "training")
    worker_pid = int(client.get(f"/jobs/{job_id}").json()["worker_id"].split(":")[1])
    [worker] = [w for w in service.workers if w.pid == worker_pid]
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    wait_for(lambda: not alive(pid), timeout=10, what="the stage process to die with its worker")
    assert client.get(f"/jobs/{job_id}").json()["status"] == "training"  # nobody finished it
    before = events(client, job_id)
    service.restart_server()  # the API killed (SIGKILL) and restarted mid-job loses nothing
    assert events(client, job_id) == before

    service.start_worker()  # a restarted worker takes the job over once the lease (3 s) expires
    job = wait_status(client, service, job_id, {"succeeded", "failed", "cancelled"}, timeout=400)
    assert job["status"] == "succeeded" and job["attempts"] == 2, job
    claims = [e for e in events(client, job_id) if e["kind"] == "claimed"]
    assert len(claims) == 2 and "lease expired" in claims[1]["message"]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["resumed_from"].endswith(("checkpoint-1", "checkpoint-2")) and summary["global_step"] == 3
    stages = [e["data"]["stage"] for e in events(client, job_id) if e["kind"] == "stage"]
    assert stages == ["curating", "training", "training", "evaluating"]  # curated once, trained on from step 1


def test_a_tiny_job_end_to_end(service: Service, client: httpx.Client, raw_id: str, job_id: str):
    job = wait_status(client, service, job_id, {"succeeded", "failed", "cancelled"}, timeout=400)
    assert job["status"] == "succeeded", job
    assert job["progress"] == 1.0 and job["error"] is None

    history = events(client, job_id)
    assert [e["kind"] for e in history][:3] == ["queued", "claimed", "stage"] and history[-1]["kind"] == "succeeded"
    assert [e["data"]["stage"] for e in history if e["kind"] == "stage_done"] == ["curating", "training", "evaluating"]
    checkpoints = [e["data"] for e in history if e["kind"] == "checkpoint"]
    assert checkpoints[-1]["step"] == checkpoints[-1]["max_steps"] == 3
    progress = [c["progress"] for c in checkpoints]
    assert progress == sorted(progress) and 0.3 < progress[0] and progress[-1] == 0.9  # training: 0.3-0.9

    # metrics and artifacts
    assert job["metrics"]["kept"]["n"] == 6 and "by_drift_quartile" in job["metrics"]
    paths = {a["path"] for a in client.get(f"/jobs/{job_id}/artifacts").json()["data"]}
    assert {"run/adapter/adapter_model.safetensors", "run/metrics.json", "run/eval.parquet",
            "logs/training.log"} <= paths
    assert paths == {a["path"] for a in job["artifacts"]}
    assert client.get(f"/jobs/{job_id}/artifacts/run/metrics.json").json() == job["metrics"]
    assert "answer with the target" in job["metrics"]["summary"]
    # The job lives in the store the service was given, and only there.
    database = service.env.get("BEACON_DATABASE", "")
    if database.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(database) as con:
            assert con.execute("SELECT status FROM jobs WHERE id = %s", (job_id,)).fetchone() == ("succeeded",)
        assert not (service.data_dir / "beacon.db").exists()
    else:
        assert (service.data_dir / "beacon.db").is_file()
    # A stage log is a file, not a terminal: progress there is whole lines, never carriage-return frames.
    for log in sorted(p for p in paths if p.startswith("logs/")):
        text = client.get(f"/jobs/{job_id}/artifacts/{log}").text
        assert text and "\r" not in text, log

    # the curated output is a dataset with stats and queries
    scored = job["scored_dataset_id"]
    dataset = client.get(f"/datasets/{scored}").json()
    assert (dataset["kind"], dataset["rows"], dataset["source_dataset_id"]) == ("scored", 8, raw_id)
    stats = client.get(f"/datasets/{scored}/stats").json()
    assert stats["counts"]["by_reason"] == {"kept": 6, "duplicate": 1, "conflict": 1}
    assert stats["counts"]["rejected"] == 4
    assert {(p["a"]["fact_id"], p["b"]["fact_id"]) for p in stats["top_conflicts"]} == {("m02", "m04")}
    q = client.post(f"/datasets/{scored}/query", params={"job_id": job_id}, json={
        "sql": "select s.fact_id, s.reason, e.efficacy from scored s join eval e using (fact_id) order by 1"})
    assert q.status_code == 200, q.text
    assert [row[0] for row in q.json()["rows"]] == [f"m0{i}" for i in range(1, 9)]
    # the same key still answers the same job
    again = client.post("/jobs", json={"dataset_id": raw_id, "train": {"max_steps": 3, "save_steps": 1}},
                        headers={"Idempotency-Key": "e2e"})
    assert again.json()["id"] == job_id and again.json()["status"] == "succeeded"


def test_cancel_stops_the_running_stage(service: Service, client: httpx.Client, raw_id: str):
    # After the first job (one worker): the dataset is curated already, so training starts at once.
    job_id = client.post("/jobs", json={"dataset_id": raw_id, "train": {"max_steps": 500}}).json()["id"]
    wait_status(client, service, job_id, {"training"}, timeout=120)
    pid = wait_for(lambda: stage_pid(client, job_id, "training"), timeout=30, what="the training process")
    r = client.post(f"/jobs/{job_id}/cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"]
    job = wait_status(client, service, job_id, {"cancelled", "succeeded", "failed"}, timeout=30)
    assert job["status"] == "cancelled" and job["stage"] == "training" and job["error"] is None
    assert not alive(pid)
    assert [e["kind"] for e in events(client, job_id)][-2:] == ["cancel_requested", "cancelled"]
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 409


def test_a_stopped_worker_hands_its_job_back(service: Service, client: httpx.Client, raw_id: str):
    job_id = client.post("/jobs", json={"dataset_id": raw_id, "train": {"max_steps": 500}}).json()["id"]
    wait_status(client, service, job_id, {"training"}, timeout=120)
    pid = wait_for(lambda: stage_pid(client, job_id, "training"), timeout=30, what="the training process")
    worker_pid = int(client.get(f"/jobs/{job_id}").json()["worker_id"].split(":")[1])
    others = [w for w in service.workers if w.poll() is None and w.pid != worker_pid]
    for other in others:  # nobody may take the job over while we look
        other.send_signal(signal.SIGSTOP)
    try:
        [worker] = [w for w in service.workers if w.pid == worker_pid]
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        assert not alive(pid)
        job = client.get(f"/jobs/{job_id}").json()
        assert job["status"] == "training" and job["worker_id"] is None
        assert events(client, job_id)[-1]["kind"] == "released"
        # Its lease is over: a cancel now ends it at once, no worker needed.
        assert client.post(f"/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    finally:
        for other in others:
            other.send_signal(signal.SIGCONT)
