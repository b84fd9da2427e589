"""The service under hostile input, on loopback: 5xx, stuck query slots, and /healthz latency.

    python bench/hostile.py                       # 100,000-row scored dataset, 20 rounds, 12 hostile clients
    python bench/hostile.py --rows 20000 --rounds 5 --seconds 10   # a quick look

Starts a real `beacon serve` on 127.0.0.1 over a synthetic scored dataset (bench/service_load.py's), then:

1. **The adversarial set, ``--rounds`` times**: runaway, huge and catalog-reading queries, non-finite
   numbers and out-of-bound settings in job bodies, models outside the operator's folder, deep
   nesting, huge strings. Counted: answers >= 500 (the goal is 0), and after every round whether a
   plain ``select 1`` still gets a slot (a stuck slot answers 429) and ``GET /jobs`` still answers.
2. **/healthz latency**: sequential probes with nothing else running (the baseline of the same run),
   then the same probes while ``--clients`` clients send hostile queries in a closed loop (a 429 is
   retried after 50 ms). Reported: p50 / p99 of both, and the ratio.

Client and server share the machine's cores. Prints a markdown table and writes ``--out``/hostile.json
(bench/results/, not committed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import service_load as _svc  # noqa: E402  (bench/, this script's folder, is on sys.path)

DATASET_ID, RAW_ID, TOKEN, Server = _svc.DATASET_ID, _svc.RAW_ID, _svc.TOKEN, _svc.Server
build_scored, seed_store = _svc.build_scored, _svc.seed_store

RUNAWAY = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r, range(2)) SELECT count(*) FROM r"
HOSTILE_SQL = [
    RUNAWAY,
    "select count(*) from range(1000000000000)",
    "SELECT repeat('x', 1000000) FROM range(1000)",
    "select * from scored s1, scored s2 order by random()",
    "select current_setting('allowed_paths')",
    "select * from duckdb_settings()",
    "select * from read_csv('/etc/passwd')",
    "PIVOT scored ON reason USING count(*)",
    "COPY scored TO '/tmp/leak.csv'",
    "select 1; select 2",
]
JOB_BODIES = [
    '{"dataset_id": "%s", "train": {"learning_rate": Infinity}}',
    '{"dataset_id": "%s", "train": {"epochs": NaN}}',
    '{"dataset_id": "%s", "curate": {"max_drift": -Infinity}}',
    '{"dataset_id": "%s", "train": {"max_steps": 9223372036854775808}}',
    '{"dataset_id": "%s", "train": {"seed": 18446744073709551616}}',
    '{"dataset_id": "%s", "train": {"lora_rank": 1000000}}',
    '{"dataset_id": "%s", "curate": {"model": "/etc"}}',
    '{"dataset_id": "%s", "curate": {"encoder": "some/hub-model"}}',
    '{"dataset_id": NaN}',
    "[" * 50_000 + "]" * 50_000,
    '{"dataset_id": "' + "x" * 1_000_000 + '"}',
]


def adversarial_round(client, *, raw_id: str, dataset_id: str) -> dict:
    statuses: list[int] = []
    for sql in HOSTILE_SQL:
        statuses.append(client.post(f"/datasets/{dataset_id}/query", json={"sql": sql}).status_code)
    for limit in ("NaN", "Infinity", "1e400", "99999999999999999999999"):
        statuses.append(post_raw(client, f"/datasets/{dataset_id}/query",
                                 f'{{"sql": "select 1", "limit": {limit}}}').status_code)
    for body in JOB_BODIES:
        statuses.append(post_raw(client, "/jobs", body % raw_id if "%s" in body else body).status_code)
    slot_free = client.post(f"/datasets/{dataset_id}/query", json={"sql": "select 1"}).status_code == 200
    jobs_ok = client.get("/jobs").status_code == 200
    return {"requests": len(statuses), "server_errors": sum(s >= 500 for s in statuses),
            "statuses": sorted(set(statuses)), "slot_free": slot_free, "jobs_ok": jobs_ok}


def post_raw(client, url: str, text: str):
    return client.post(url, content=text.encode(), headers={"Content-Type": "application/json"})


def healthz_latencies(url: str, seconds: float) -> list[float]:
    import httpx

    out: list[float] = []
    with httpx.Client(base_url=url, timeout=30) as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            client.get("/healthz")
            out.append((time.perf_counter() - started) * 1000)
            time.sleep(0.01)
    return out


def hostile_clients(url: str, dataset_id: str, clients: int, stop: threading.Event, counts: dict) -> list:
    import httpx

    def loop(i: int) -> None:
        with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            while not stop.is_set():
                r = client.post(f"/datasets/{dataset_id}/query", json={"sql": HOSTILE_SQL[i % 4]})
                counts[r.status_code] = counts.get(r.status_code, 0) + 1
                if r.status_code == 429:
                    time.sleep(0.05)

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    return threads


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def main(argv: list[str] | None = None) -> int:
    import httpx

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=100_000, help="rows of the synthetic scored dataset")
    p.add_argument("--rounds", type=int, default=20, help="repeats of the adversarial set")
    p.add_argument("--clients", type=int, default=12, help="concurrent hostile query clients")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each /healthz window")
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="beacon-hostile-") as tmp:
        data_dir = Path(tmp) / "data"
        build_scored(data_dir / "datasets" / DATASET_ID, args.rows)
        seed_store(data_dir, jobs=200, rows=args.rows)
        (data_dir / "uploads").mkdir(parents=True, exist_ok=True)
        (data_dir / "uploads" / "synthetic.jsonl").write_text('{"prompt": "p", "target": "t"}\n')
        server = Server(data_dir)
        try:
            server.wait_ready()
            headers = {"Authorization": f"Bearer {TOKEN}"}
            with httpx.Client(base_url=server.url, timeout=60, headers=headers) as client:
                rounds = [adversarial_round(client, raw_id=RAW_ID, dataset_id=DATASET_ID) for _ in range(args.rounds)]
            idle = healthz_latencies(server.url, args.seconds)
            stop, counts = threading.Event(), {}
            threads = hostile_clients(server.url, DATASET_ID, args.clients, stop, counts)
            time.sleep(1.0)  # let every client have a query in flight
            loaded = healthz_latencies(server.url, args.seconds)
            stop.set()
            for t in threads:
                t.join(60)
        finally:
            server.proc.terminate()
            server.proc.wait(30)

    results = {
        "settings": vars(args),
        "adversarial": {"rounds": len(rounds), "requests": sum(r["requests"] for r in rounds),
                        "server_errors": sum(r["server_errors"] for r in rounds),
                        "rounds_with_a_stuck_slot": sum(not r["slot_free"] for r in rounds),
                        "rounds_with_jobs_failing": sum(not r["jobs_ok"] for r in rounds),
                        "statuses_seen": sorted({s for r in rounds for s in r["statuses"]})},
        "healthz_ms": {"idle": {"p50": pct(idle, 50), "p99": pct(idle, 99), "n": len(idle)},
                       "under_hostile_queries": {"p50": pct(loaded, 50), "p99": pct(loaded, 99), "n": len(loaded)}},
        "hostile_query_answers": {str(k): v for k, v in sorted(counts.items())},
    }
    h = results["healthz_ms"]
    results["healthz_ms"]["p99_ratio"] = h["under_hostile_queries"]["p99"] / h["idle"]["p99"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "hostile.json").write_text(json.dumps(results, indent=2) + "\n")
    a = results["adversarial"]
    print(f"| adversarial set x{a['rounds']} | {a['requests']} requests | 5xx: {a['server_errors']} | "
          f"stuck slots: {a['rounds_with_a_stuck_slot']} | GET /jobs failing: {a['rounds_with_jobs_failing']} |")
    print(f"| /healthz idle | p50 {h['idle']['p50']:.1f} ms | p99 {h['idle']['p99']:.1f} ms | n {h['idle']['n']} |")
    u = h["under_hostile_queries"]
    print(f"| /healthz with {args.clients} hostile query clients | p50 {u['p50']:.1f} ms | p99 {u['p99']:.1f} ms "
          f"| n {u['n']} | p99 ratio {h['p99_ratio']:.2f} |")
    print(f"hostile query answers: {results['hostile_query_answers']}")
    return 0 if a["server_errors"] == 0 and a["rounds_with_a_stuck_slot"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
