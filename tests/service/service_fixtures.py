"""Real `beacon serve` and `beacon worker` processes on 127.0.0.1, and a seeded scored dataset.

(A plain module, imported by name: pytest puts this folder on sys.path.)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas import REJECTED_SCHEMA, SCORED_SCHEMA, Counts, Manifest
from schemas.manifest import QUANTILES, quantile_label
from service.store import Store

REPO = Path(__file__).resolve().parents[2]
TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MINI_FACTS = REPO / "tests" / "fixtures" / "mini_facts.jsonl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """A data root with an API server and any number of workers, as separate processes."""

    def __init__(self, root: Path, **settings: Any):
        self.root = root
        self.data_dir = root / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "BEACON_DATA_DIR": str(self.data_dir),
                    "BEACON_API_TOKEN": TOKEN, "BEACON_HOST": "127.0.0.1", "BEACON_PORT": str(self.port),
                    "BEACON_LEASE_SECONDS": "3", "BEACON_HEARTBEAT_SECONDS": "1", "BEACON_POLL_SECONDS": "0.3",
                    "BEACON_CANCEL_GRACE_SECONDS": "2"}
        self.env.update({f"BEACON_{k.upper()}": str(v) for k, v in settings.items()})
        self.server: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")
        return subprocess.Popen([sys.executable, "-m", "service.cli", *args], cwd=REPO, env=self.env,
                                stdout=log, stderr=subprocess.STDOUT)

    def start_server(self) -> "Service":
        self.server = self._spawn("server", "serve")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise RuntimeError(f"server exited: {self.log('server')}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not come up: {self.log('server')}")

    def restart_server(self, sig: int = signal.SIGKILL) -> "Service":
        """Kill the API (SIGKILL by default: no clean shutdown), start it again on the same port."""
        self.server.send_signal(sig)
        self.server.wait(timeout=20)
        return self.start_server()

    def start_worker(self) -> subprocess.Popen:
        worker = self._spawn(f"worker-{len(self.workers)}", "worker")
        self.workers.append(worker)
        return worker

    def client(self, *, auth: bool = True) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=AUTH if auth else {}, timeout=30)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.is_file() else ""

    def stop(self) -> None:
        for proc in [*self.workers, self.server]:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*self.workers, self.server]:
            if proc is not None:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def scored_rows() -> list[dict[str, Any]]:
    """Six scored facts: four kept, a duplicate, and a conflict pair (s1 / s4)."""
    base = {"subject": None, "relation": None, "ground_truth": None, "paraphrases": [], "locality": [],
            "source": "facts.jsonl", "meta": [], "prediction": "a testament", "drift_definition": "expected",
            "drift_sentence": 0.5,
            "drift_lm": 0.5, "drift_expected": 0.5, "drift_rank": 0.15, "target_logprob": -3.0, "target_rank": 5, "neighbors": 0,
            "shared_target": 0, "duplicate_of": None, "config_hash": "cfg0"}
    specs = [  # fact_id, prompt, target, drift, interference, conflicts, reason
        ("s0", "The capital of Japan is", "Tokyo", 0.05, 0.10, [], "kept"),
        ("s1", "The capital of Kenya is", "Mombasa", 1.20, 0.99, ["s4"], "kept"),
        ("s2", "Miles Davis played the", "violin", 0.60, 0.20, [], "kept"),
        ("s3", "Miles Davis played the", "violin", 0.60, 0.20, [], "duplicate"),
        ("s4", "Kenya's capital is", "Nairobi", 0.30, 0.99, ["s1"], "conflict"),
        ("s5", "The Eiffel Tower is in", "Rome", 0.90, 0.30, [], "kept"),
    ]
    return [{**base, "fact_id": f, "prompt": p, "target": t, "position": i, "drift": d, "interference": x,
             "conflicts_with": c, "reason": r, "keep": r == "kept", "weight": 1.0 if r == "kept" else 0.0,
             "risk": 0.1 + 0.15 * i}  # 0.1 .. 0.85: s3, s4 (filtered) and s5 (kept) at or above 0.5
            for i, (f, p, t, d, x, c, r) in enumerate(specs)]


def seed_scored_dataset(data_dir: Path, dataset_id: str = "dst_5eed000000000001") -> str:
    """Writes a scored dataset (as a curation would) and registers it in the job store."""
    folder = data_dir / "datasets" / dataset_id
    (folder / "scored").mkdir(parents=True, exist_ok=True)
    (folder / "rejected").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(scored_rows(), schema=SCORED_SCHEMA), folder / "scored" / "part-0.parquet")
    pq.write_table(pa.Table.from_pylist([{"source": "facts.jsonl", "position": 6, "raw": "{oops", "stage": "parse",
                                          "error": "line is not valid JSON"}], schema=REJECTED_SCHEMA),
                   folder / "rejected" / "part-0.parquet")
    rows = scored_rows()
    # Quantiles as the pipeline records them (exact at this size): the stats show the manifest's.
    quantiles = {score: {quantile_label(q): float(np.quantile([r[score] for r in rows], q, method="lower"))
                         for q in QUANTILES} for score in ("drift", "interference")}
    Manifest(dataset_id="ds_seed", created_at="2026-12-01T00:00:00+00:00", beacon_version="test", inputs=[],
             input_digest="0", format="jsonl",
             counts=Counts(input=7, scored=6, rejected=1, kept=4,
                           by_reason={"kept": 4, "duplicate": 1, "conflict": 1}),
             rejected_by_stage={"parse": 1}, quantiles=quantiles, config={"drift_definition": "expected"},
             config_hash="cfg0", models={}, runner="test").write(folder)
    store = Store(data_dir / "beacon.db")
    store.migrate()
    store.insert_dataset(id=dataset_id, kind="scored", name="seeded", format="parquet",
                         path=f"datasets/{dataset_id}", rows=6)
    return dataset_id


def wait_for(predicate, *, timeout: float, interval: float = 0.25, what: str = "condition"):
    """Polls ``predicate`` until it returns something truthy; that value is returned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
