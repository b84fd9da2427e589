"""Latency of the job service under concurrent load on loopback: `GET /jobs` and dataset stats.

    python bench/service_load.py                      # 1,000,000-row scored dataset, 32 clients
    python bench/service_load.py --rows 100000 --requests 500    # a quick look

Builds a synthetic scored dataset (``schemas.SCORED_SCHEMA``, written with pyarrow: drift ~ gamma,
interference ~ beta, 80% kept, ~1% of facts in conflict pairs) and a job store with ``--jobs`` jobs,
starts a real `beacon serve` on 127.0.0.1, and drives it with ``--clients`` concurrent clients
(async, one process, one keep-alive connection each, no pause between requests: a closed loop),
each request timed from send to full body. Scenarios:

- ``GET /jobs`` (a page of 20, newest first) at ``--clients`` clients; then again while a background
  writer updates jobs ``--heartbeats`` times a second, as running workers do (each change makes the
  API render the page anew: it keeps a rendered page only while the database is unchanged);
- ``GET /datasets/{id}/stats`` at ``--clients`` clients: served from the stats cache (a scored dataset
  is immutable, so its stats are computed once, by the worker right after curation or by the first
  request, and kept in memory and in ``.stats-v2.json`` beside the data);
- the same stats computed from scratch (cache off, one client): what the first request, or the worker
  after curation, pays.

Client and server share the machine's cores. The default client is a minimal asyncio HTTP/1.1 client
(~0.2 ms of CPU a request); ``--client httpx`` uses httpx.AsyncClient, which costs ~5 ms of CPU a
request here and so mostly measures itself.
Prints a markdown table and writes ``--out``/service.json (bench/results/, not committed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TOKEN = "bench-token"
DATASET_ID = "dst_be4c000000000001"
RAW_ID = "dst_be4c000000000000"


def build_scored(folder: Path, rows: int, seed: int = 0) -> float:
    """Writes ``rows`` synthetic scored facts to ``folder/scored/part-0.parquet``; returns seconds."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from schemas import SCORED_SCHEMA, Counts, Manifest
    from schemas.manifest import HISTOGRAM_SCORES, QUANTILES, histogram, histogram_edges, quantile_label

    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    index = np.arange(rows)
    ids = np.char.add("f_", index.astype(str))
    drift = rng.gamma(2.0, 0.3, rows)
    interference = rng.beta(5, 3, rows)
    reasons = np.array(["kept", "high_drift", "duplicate", "conflict", "high_interference"])
    reason = reasons[rng.choice(len(reasons), rows, p=[0.80, 0.08, 0.05, 0.04, 0.03])]
    conflicts: list[list[str]] = [[] for _ in range(rows)]
    pairs = rng.integers(0, rows, size=(rows // 200, 2))  # ~1% of facts in a conflict pair
    for a, b in pairs:
        if a != b:
            conflicts[a].append(f"f_{b}")
            conflicts[b].append(f"f_{a}")
            interference[a] = interference[b] = max(interference[a], interference[b], 0.95)
    keep = reason == "kept"
    columns = {
        "fact_id": ids, "prompt": np.char.add("The capital of place number ", index.astype(str)),
        "target": np.char.add("City ", (index % 5000).astype(str)), "subject": [None] * rows,
        "relation": [None] * rows, "ground_truth": [None] * rows, "paraphrases": [[]] * rows,
        "locality": [[]] * rows, "source": ["synthetic.jsonl"] * rows, "position": index, "meta": [[]] * rows,
        "prediction": ["a testament to the"] * rows, "drift": drift, "drift_definition": ["expected"] * rows,
        "drift_sentence": drift * 0.9, "drift_lm": drift * 1.1, "drift_expected": drift,
        "drift_rank": np.clip(drift / 2, 0, 1), "target_logprob": -3 * drift,
        "target_rank": rng.integers(1, 1000, rows), "interference": interference,
        "neighbors": rng.integers(0, 5, rows), "conflicts_with": conflicts,
        "shared_target": rng.integers(0, 10, rows), "risk": rng.random(rows), "duplicate_of": [None] * rows,
        "keep": keep,
        "reason": reason, "weight": keep.astype(float), "config_hash": ["0" * 16] * rows,
    }
    table = pa.Table.from_pydict({f.name: columns[f.name] for f in SCORED_SCHEMA}, schema=SCORED_SCHEMA)
    (folder / "scored").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "scored" / "part-0.parquet", row_group_size=128 * 1024)
    counts = {r: int((reason == r).sum()) for r in reasons}
    # As the pipeline writes it: the stats take their quantiles and drift definition from here.
    quantiles = {name: {quantile_label(q): float(np.quantile(values, q)) for q in QUANTILES}
                 for name, values in (("drift", drift), ("interference", interference))}
    # And the histograms, binned as the pipeline bins them (schemas.manifest.histogram_bin, vectorised).
    histograms = {}
    for name in HISTOGRAM_SCORES:
        values = np.asarray(columns[name], dtype=np.float64)
        lo, edges = float(values.min()), histogram_edges(float(values.min()), float(values.max()))
        bins = np.minimum(np.searchsorted(np.asarray(edges), values, side="left"), len(edges) - 1)
        histograms[name] = histogram(lo, edges, np.bincount(bins, minlength=len(edges)).tolist())
    Manifest(dataset_id="ds_bench", created_at=datetime.now(timezone.utc).isoformat(), beacon_version="bench",
             inputs=[], input_digest="0", format="jsonl",
             counts=Counts(input=rows, scored=rows, rejected=0, kept=counts["kept"], by_reason=counts),
             quantiles=quantiles, histograms=histograms, config={"drift_definition": "expected"}, config_hash="0" * 16, models={},
             runner="bench").write(folder)
    return time.perf_counter() - started


def seed_store(database: str, jobs: int, rows: int) -> None:
    """Registers the datasets and ``jobs`` jobs (most finished, with metrics) in the job store at
    ``database`` (an SQLite path or a postgresql:// URL): the same rows in either."""
    from service.store import open_store

    store = open_store(database)
    store.migrate()
    store.insert_dataset(id=RAW_ID, kind="raw", name="synthetic.jsonl", path="uploads/synthetic.jsonl")
    store.insert_dataset(id=DATASET_ID, kind="scored", name="synthetic (curated)", format="parquet",
                         path=f"datasets/{DATASET_ID}", rows=rows, source_dataset_id=RAW_ID)
    params = {"curate": {"format": "auto", "max_drift_quantile": 0.9}, "train": {"max_steps": 100},
              "eval": {"batch_size": 16}}
    # As large as a real metrics.json (~4 KB): the groups of trainer.metrics, 15 figures each.
    figures = ["n", "learned", "forgotten", "efficacy", "efficacy_before", "efficacy_prob", "paraphrase",
               "locality", "locality_bleed", "pushed_away", "drift_before", "drift_after", "drift_min",
               "drift_max", "target_logprob_after"]
    metrics = {group: {f: round(0.1 + 0.01 * i, 4) for i, f in enumerate(figures)}
               for group in ("all", "kept", "filtered")}
    metrics["by_drift_quartile"] = {f"q{q}": {f: round(0.2 + 0.01 * i, 4) for i, f in enumerate(figures)}
                                    for q in range(1, 5)}
    metrics["run"] = {"run_dir": "/data/jobs/job_0000000000000000/run", "dataset": "/data/datasets/x",
                      "drift_definition": "expected", "pushed_away_epsilon": 0.01}
    now = time.time()
    values = [(f"job_{i:016x}", "succeeded" if i % 10 else "queued", "evaluating" if i % 10 else None,
               1.0 if i % 10 else 0.0, RAW_ID, DATASET_ID if i % 10 else None, json.dumps(params),
               json.dumps(metrics) if i % 10 else None,
               json.dumps([{"path": "run/metrics.json", "bytes": 4096}] * 8 if i % 10 else []),
               now - jobs + i, now - jobs + i) for i in range(jobs)]
    insert = ("INSERT INTO jobs (id, request_hash, status, stage, progress, dataset_id, scored_dataset_id, "
              "params, metrics, artifacts, created_at, updated_at) VALUES (?, 'h', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
    if database.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(database) as con, con.cursor() as cur:
            cur.executemany(insert.replace("?", "%s"), values)
    else:
        with store.transaction() as con:
            con.executemany(insert, values)


class Heartbeats:
    """Background writes like running workers': a job's progress and lease, ``rate`` times a second.

    In a process of its own, so that it does not compete with the load generator for its GIL.
    """

    SCRIPT = """
import sys, time
database, rate, i = sys.argv[1], float(sys.argv[2]), 0
if database.startswith("postgresql://"):
    import psycopg
    con, mark = psycopg.connect(database, autocommit=True), "%s"
else:
    import sqlite3
    con, mark = sqlite3.connect(database, isolation_level=None, timeout=30), "?"
update = "UPDATE jobs SET progress = ?, updated_at = ?, lease_expires_at = ? WHERE id = ?".replace("?", mark)
while True:
    time.sleep(1 / rate)
    i += 1
    con.execute(update, (round((i % 100) / 100, 2), time.time(), time.time() + 30, f"job_{i % 50:016x}"))
"""

    def __init__(self, database: str, rate: float):
        self.args = [sys.executable, "-c", self.SCRIPT, database, str(rate)]
        self.rate = rate
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Heartbeats":
        if self.rate > 0:
            self.proc = subprocess.Popen(self.args)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, data_dir: Path, **settings: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "BEACON_DATA_DIR": str(data_dir), "BEACON_API_TOKEN": TOKEN,
               "BEACON_PORT": str(self.port), **{f"BEACON_{k.upper()}": v for k, v in settings.items()}}
        self.log = open(data_dir / f"server-{self.port}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], cwd=REPO, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the server did not come up")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def load(url: str, path: str, *, clients: int, requests: int, max_seconds: float,
               client: str = "raw") -> dict:
    """``requests`` GETs of ``path`` from ``clients`` concurrent keep-alive connections (closed loop).

    ``client="raw"``: a minimal asyncio HTTP/1.1 client (~0.1 ms of CPU a request), so the figures are
    the server's; ``client="httpx"``: httpx.AsyncClient (~5 ms of CPU a request on this machine, which
    then competes with the server for the same cores).
    """
    send = _raw_sender if client == "raw" else _httpx_sender
    latencies: list[float] = []
    state = {"remaining": requests, "errors": 0, "deadline": time.monotonic() + max_seconds}

    async def one_client(get) -> None:
        while state["remaining"] > 0 and time.monotonic() < state["deadline"]:
            state["remaining"] -= 1
            started = time.perf_counter()
            status = await get()
            latencies.append((time.perf_counter() - started) * 1000)
            state["errors"] += status != 200

    async with send(url, path, clients) as getters:
        await asyncio.gather(*[one_client(g) for g in getters])  # a warm-up round, then the measured one
        latencies.clear()
        state.update(remaining=requests, errors=0, deadline=time.monotonic() + max_seconds)
        started = time.perf_counter()
        await asyncio.gather(*[one_client(g) for g in getters])
        wall = time.perf_counter() - started
    return summarize(latencies, errors=state["errors"], clients=clients, wall=wall)


class _raw_sender:
    """One keep-alive connection per client; GET, read the headers, read Content-Length bytes."""

    def __init__(self, url: str, path: str, clients: int):
        host_port = url.split("://", 1)[1]
        self.host, port = host_port.split(":")
        self.port, self.clients = int(port), clients
        self.request = f"GET {path} HTTP/1.1\r\nHost: {host_port}\r\n\r\n".encode()
        self.connections = []

    async def __aenter__(self):
        for _ in range(self.clients):
            self.connections.append(await asyncio.open_connection(self.host, self.port))
        return [self._getter(reader, writer) for reader, writer in self.connections]

    def _getter(self, reader, writer):
        async def get() -> int:
            writer.write(self.request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            return int(head[9:12])
        return get

    async def __aexit__(self, *exc) -> None:
        for _, writer in self.connections:
            writer.close()


class _httpx_sender:
    def __init__(self, url: str, path: str, clients: int):
        import httpx

        self.path, self.clients = path, clients
        self.client = httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(
            max_connections=clients, max_keepalive_connections=clients))

    async def __aenter__(self):
        async def get() -> int:
            return (await self.client.get(self.path)).status_code
        return [get] * self.clients

    async def __aexit__(self, *exc) -> None:
        await self.client.aclose()


def summarize(latencies: list[float], *, errors: int, clients: int, wall: float) -> dict:
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]
    return {"clients": clients, "requests": len(ordered), "errors": errors, "p50_ms": round(pct(50), 2),
            "p90_ms": round(pct(90), 2), "p99_ms": round(pct(99), 2), "max_ms": round(ordered[-1], 2),
            "mean_ms": round(statistics.fmean(ordered), 2), "rps": round(len(ordered) / wall, 1)}


# What the dashboard's pages ask the API for when they load (service/static/dashboard.js), in order.
DATASET_PAGE = [("GET", f"/ui/datasets/{DATASET_ID}", None), ("GET", "/static/dashboard.js", None),
                ("GET", f"/datasets/{DATASET_ID}", None), ("GET", f"/datasets/{DATASET_ID}/stats", None),
                ("POST", f"/datasets/{DATASET_ID}/query", {"sql": "select source, position, stage, error, "
                                                           "left(raw, 120) as raw from rejected order by source, "
                                                           "position limit 100"})]
# A page of the per-fact table as the job page asks for it (50 rows sorted, with the count of all
# matching rows in the same query), over scored only: the synthetic dataset has no run.
FACT_PAGE = [("POST", f"/datasets/{DATASET_ID}/query", {"sql": "select s.prompt, s.target, s.prediction, s.drift, "
                                                        "s.weight, s.reason, count(*) over () as total from scored s "
                                                        "where not s.keep order by s.drift desc nulls last, s.fact_id "
                                                        "limit 50 offset 0"})]


def page_loads(url: str, requests: list, repeats: int) -> dict:
    """One client loading a page ``repeats`` times: each load is its requests one after another (as the
    page's script makes them), timed from the first send to the last byte."""
    import httpx

    latencies, errors = [], 0
    with httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        for _ in range(repeats):
            started = time.perf_counter()
            for method, path, body in requests:
                r = client.request(method, path, json=body)
                errors += r.status_code >= 400
            latencies.append((time.perf_counter() - started) * 1000)
    return summarize(latencies, errors=errors, clients=1, wall=sum(latencies) / 1000)


def cold_stats(url: str, repeats: int) -> dict:
    import httpx

    latencies = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for _ in range(repeats):
            started = time.perf_counter()
            r = client.get(f"/datasets/{DATASET_ID}/stats")
            latencies.append((time.perf_counter() - started) * 1000)
            r.raise_for_status()
    return summarize(latencies, errors=0, clients=1, wall=sum(latencies) / 1000)


def jobs_scenarios(server_url: str, database: str, args, *, store: str, suffix: str) -> dict:
    """``GET /jobs`` at ``--clients`` clients, then again while jobs in ``database`` update
    ``--heartbeats`` times a second: ``jobs_list<suffix>`` and ``jobs_list_busy<suffix>``."""
    def run() -> dict:
        return asyncio.run(load(server_url, "/jobs", clients=args.clients, requests=args.requests,
                                max_seconds=args.max_seconds, client=args.client))

    print(f"GET /jobs at {args.clients} clients, {store} ...", flush=True)
    out = {f"jobs_list{suffix}": run()}
    print(f"GET /jobs at {args.clients} clients, {args.heartbeats} heartbeats/s, {store} ...", flush=True)
    with Heartbeats(database, args.heartbeats):
        out[f"jobs_list_busy{suffix}"] = run()
    out[f"jobs_list_busy{suffix}"]["heartbeats_per_second"] = args.heartbeats
    return out


def postgres_scenarios(work: Path, data_dir: Path, args) -> dict:
    """The GET /jobs scenarios again with the job store in a throwaway PostgreSQL (same jobs, same data
    root, same server settings and load): only the store differs."""
    script = REPO / "scripts" / "postgres.sh"
    cluster = work / "pg"
    work.chmod(0o755)  # the cluster's owner (postgres, when run as root) must reach its folder
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = subprocess.run([str(script), "start", str(cluster), str(port)], check=True, capture_output=True,
                         text=True).stdout.strip()
    try:
        seed_store(url, args.jobs, args.rows)
        server = Server(data_dir, database=url)
        try:
            server.wait_ready()
            out = jobs_scenarios(server.url, url, args, store="PostgreSQL", suffix="_postgres")
        finally:
            server.stop()
    finally:
        subprocess.run([str(script), "stop", str(cluster)], capture_output=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the scored dataset")
    parser.add_argument("--jobs", type=int, default=1000, help="jobs in the store")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=3000, help="requests per scenario")
    parser.add_argument("--max-seconds", type=float, default=60, help="time cap per scenario")
    parser.add_argument("--cold-repeats", type=int, default=5, help="uncached stats computations")
    parser.add_argument("--heartbeats", type=float, default=10,
                        help="job updates per second during the second GET /jobs run (running workers)")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw",
                        help="load generator: a minimal asyncio HTTP/1.1 client, or httpx.AsyncClient")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"), help="folder for service.json")
    parser.add_argument("--postgres", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the GET /jobs scenarios on a PostgreSQL job store (scripts/postgres.sh "
                             "starts a throwaway one), side by side with SQLite")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="beacon-bench-service-"))
    data_dir = work / "data"
    results: dict = {"rows": args.rows, "jobs": args.jobs, "client": args.client, "machine": {
        "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
        "load_average_at_start": os.getloadavg()[0]}}
    try:
        print(f"building {args.rows:,} scored rows ...", flush=True)
        results["build_seconds"] = round(build_scored(data_dir / "datasets" / DATASET_ID, args.rows), 1)
        sqlite_db = str(data_dir / "beacon.db")
        seed_store(sqlite_db, args.jobs, args.rows)
        cached, uncached = Server(data_dir), Server(data_dir, stats_cache="false")
        try:
            cached.wait_ready()
            uncached.wait_ready()
            print("stats from scratch (cache off, 1 client) ...", flush=True)
            results["stats_uncached"] = cold_stats(uncached.url, args.cold_repeats)
            uncached.stop()
            results.update(jobs_scenarios(cached.url, sqlite_db, args, store="SQLite", suffix=""))
            print("dashboard page loads (one client) ...", flush=True)
            results["dataset_page"] = page_loads(cached.url, DATASET_PAGE, 20)
            results["fact_table_page"] = page_loads(cached.url, FACT_PAGE, 20)
            print(f"GET /datasets/{{id}}/stats at {args.clients} clients (cached) ...", flush=True)
            results["stats_cached"] = asyncio.run(load(cached.url, f"/datasets/{DATASET_ID}/stats",
                                                       clients=args.clients, requests=args.requests,
                                                       max_seconds=args.max_seconds, client=args.client))
        finally:
            cached.stop()
            uncached.stop()
        if args.postgres:
            results.update(postgres_scenarios(work, data_dir, args))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    results["when"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "service.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{args.rows:,}-row scored dataset, {args.jobs} jobs, loopback, {os.cpu_count()} CPUs "
          f"(load average {results['machine']['load_average_at_start']:.1f} at start), {args.client} client\n")
    print("| scenario | clients | requests | p50 ms | p99 ms | req/s | errors |")
    print("|---|---|---|---|---|---|---|")
    for name, label in (("jobs_list", "`GET /jobs` (page of 20), SQLite"),
                        ("jobs_list_postgres", "`GET /jobs` (page of 20), PostgreSQL"),
                        ("jobs_list_busy", f"`GET /jobs` while jobs update {args.heartbeats:g}/s, SQLite"),
                        ("jobs_list_busy_postgres",
                         f"`GET /jobs` while jobs update {args.heartbeats:g}/s, PostgreSQL"),
                        ("stats_cached", "`GET /datasets/{id}/stats` (cached)"),
                        ("dataset_page", "dashboard: dataset page load (its 5 requests in order)"),
                        ("fact_table_page", "dashboard: a page of the fact table (50 sorted rows + count)"),
                        ("stats_uncached", "`GET /datasets/{id}/stats` (computed, cache off)")):
        r = results.get(name)
        if r is None:
            continue
        print(f"| {label} | {r['clients']} | {r['requests']} | {r['p50_ms']} | {r['p99_ms']} | {r['rps']} | "
              f"{r['errors']} |")
    print(f"\n-> {out / 'service.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
