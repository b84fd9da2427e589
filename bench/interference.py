"""Benchmark: the interference stage alone (LSH or the faiss index, in Beam) at 10k to 1M facts vs exact.

Facts
    Real: the prompts of CounterFact train + val (11,919 records; those of the files present,
    ``--data``), encoded once with the bundled all-MiniLM-L6-v2 (CPU, normalize_embeddings=True); the embeddings are cached in
    ``--out`` as ``counterfact_prompts_minilm.npy`` (gitignored; the records are not copied).
    10k: the first 10,000 real prompts with their ``target_new``.
    100k: all real prompts plus copies up to 100,000. A copy picks a real source embedding x
    uniformly (numpy default_rng(seed)), picks a cosine c, and is unit(c·x + sqrt(1 − c²)·u) with u
    a random unit vector orthogonal to x, so cos(copy, x) = c exactly. c ~ U(0.90, 0.995) for a
    near-duplicate (probability ``--near-dup``, default 0.1), otherwise c ~ U(0.60, 0.90). A copy
    keeps its source's target with probability 0.5, else takes the target of a random real record.
    Copies of one source are also close to each other (cos ≈ c1·c2).

Measured
    Stages: wall time of a DirectRunner (in-process, one worker) pipeline: read facts from the cached
    embeddings -> the stage (``ScoreInterference``, LSH, per ``--configs``; ``ScoreInterferenceIndex``,
    the faiss index the pipeline uses by default) -> write results to local pickles, minus the same
    pipeline without the stage (read -> write); both are reported, with the CPU seconds beside the
    wall time (the machine may be shared; CPU time is the steadier number). Each pipeline runs in a
    fresh process; its peak RSS (VmHWM) is the whole pipeline's.
    Exact: one pass over the upper triangle of E·Eᵀ in 4,096² float32 blocks, keeping only the pairs
    at or above the neighbour threshold (what an exact stage needs to produce the same scores).
    Both run with one BLAS thread (set before numpy loads; export OPENBLAS_NUM_THREADS to change).
    Recall: pairs >= neighbour threshold found (sum of ``neighbors`` / 2 over exact pairs; LSH scores
    pairs exactly, so it has no false positives) and conflict pairs (>= conflict threshold,
    different normalised targets) found in ``conflicts_with``; ``interference exact`` is the share of
    facts with a true different-target maximum >= the neighbour threshold whose LSH value equals it
    (within 1e-5; the JSON also has the largest error, which the float16 payload makes ~1e-4).

    .venv/bin/python bench/interference.py --out bench/results   # writes interference.json
    .venv/bin/python bench/interference.py --sizes 100000 --sampled-sizes 1000000 --nlist 8000 --tag 1m
    At --sampled-sizes no exact truth is affordable: faiss flat searches --faiss-queries random rows
    against all, and the faiss IVF arm and the index stage are scored on those rows' pairs.
    .venv/bin/python bench/interference.py --configs 16,8,2000,float32 16,10,200,float32 --tag tune
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import NamedTuple

# One BLAS thread, set before numpy loads: the runner (not BLAS) owns parallelism, and on a shared
# 2-core machine a multi-threaded OpenBLAS spins on small bucket products (measured ~10x slower).
# Exact all-pairs gets the same single thread, so the comparison is per core.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import apache_beam as beam  # noqa: E402 - after the BLAS setting
import numpy as np  # noqa: E402
from apache_beam.metrics.metric import MetricsFilter  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import METRICS_NS  # noqa: E402 - after the path is set
from pipeline.interference import ScoreInterference  # noqa: E402
from pipeline.interference_index import ScoreInterferenceIndex  # noqa: E402
from pipeline.text import normalize_text  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
EXACT_BLOCK = 4096


def load_records(data_dir: Path) -> list[dict]:
    """CounterFact train + val, whichever of the two ``data_dir`` holds (the report says how many)."""
    files = [data_dir / name for name in ("counterfact-train.json", "counterfact-val.json")
             if (data_dir / name).exists()]
    if not files:
        raise SystemExit(f"no counterfact-train.json or counterfact-val.json in {data_dir}")
    return [r for f in files for r in json.loads(f.read_text())]


def real_embeddings(records: list[dict], out: Path) -> np.ndarray:
    """Prompt embeddings of the records, encoded once and cached."""
    cache = out / "counterfact_prompts_minilm.npy"
    if cache.exists():
        emb = np.load(cache)
        if len(emb) == len(records):
            return emb
    from schemas.scoring_spec import DEFAULT_ENCODER
    from scoring.drift import encode_sentences
    from scoring.models import load_encoder

    emb = encode_sentences(load_encoder(DEFAULT_ENCODER), [r["prompt"] for r in records])
    np.save(cache, emb)
    return emb


def build_facts(real: np.ndarray, targets: list[str], n: int, near_dup: float, seed: int):
    """n embeddings and targets: real ones first, then perturbed copies (see the module docstring)."""
    if n <= len(real):
        return real[:n], targets[:n]
    rng = np.random.default_rng(seed)
    m = n - len(real)
    src = rng.integers(0, len(real), m)
    near = rng.random(m) < near_dup
    c = np.where(near, rng.uniform(0.90, 0.995, m), rng.uniform(0.60, 0.90, m))
    x = real[src].astype(np.float64)
    u = rng.standard_normal((m, real.shape[1]))
    u -= np.sum(u * x, axis=1, keepdims=True) * x
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    copies = c[:, None] * x + np.sqrt(1 - c * c)[:, None] * u
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    keep = rng.random(m) < 0.5
    other = rng.integers(0, len(real), m)
    copy_targets = [targets[s] if k else targets[o] for s, k, o in zip(src, keep, other)]
    return np.vstack([real, copies.astype(np.float32)]), targets + copy_targets


def exact_pairs(emb: np.ndarray, threshold: float):
    """(i, j, cos) for all i < j with cos >= threshold, blockwise; and (wall s, CPU s) it took."""
    started, cpu = time.perf_counter(), time.process_time()
    n, found = len(emb), []
    for r0 in range(0, n, EXACT_BLOCK):
        rows = emb[r0:r0 + EXACT_BLOCK]
        for c0 in range(r0, n, EXACT_BLOCK):
            cos = rows @ emb[c0:c0 + EXACT_BLOCK].T
            i, j = np.nonzero(cos >= threshold)
            keep = r0 + i < c0 + j  # upper triangle only: each pair once, no self pairs
            found.append((r0 + i[keep], c0 + j[keep], cos[i[keep], j[keep]]))
    i, j, cos = (np.concatenate(a) for a in zip(*found))
    return i, j, cos, (time.perf_counter() - started, time.process_time() - cpu)


def run_beam_apart(emb_path: Path, targets: list[str], params: dict | None, stage: str = "lsh"):
    """``run_beam`` in a fresh process, so that its peak RSS (the last element) is its own."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_run_beam_measured, (str(emb_path), targets, params, stage))


def _run_beam_measured(emb_path: str, targets: list[str], params: dict | None, stage: str):
    return (*run_beam(Path(emb_path), targets, params, stage), _vm_hwm_gb())


def run_beam(emb_path: Path, targets: list[str], params: dict | None, stage: str = "lsh"):
    """Read facts -> (the interference stage if params: ``ScoreInterference`` (lsh) or
    ``ScoreInterferenceIndex`` (index)) -> pickles: (wall s, CPU s), outputs, counters."""
    n = len(targets)
    with tempfile.TemporaryDirectory() as tmp:
        started, cpu = time.perf_counter(), time.process_time()
        p = beam.Pipeline(options=PipelineOptions(flags=[], runner="DirectRunner", direct_num_workers=1,
                                                  direct_running_mode="in_memory"))
        facts = (p | "Chunks" >> beam.Create([(s, min(n, s + 5000)) for s in range(0, n, 5000)])
                 | "Read" >> beam.ParDo(_ReadFacts(str(emb_path), targets)))
        if params and stage == "lsh":
            scored = facts | "Score" >> ScoreInterference(**params)
        elif params:  # as `beacon curate` runs it on this machine: the blocks handed over through a folder
            spill = Path(tmp, "spill")
            spill.mkdir()
            scored = facts | "Score" >> ScoreInterferenceIndex(**params, spill_dir=str(spill))
        else:
            scored = facts | "Slim" >> beam.Map(lambda kv: (kv[0], kv[1]["order"]))
        scored | "Write" >> beam.ParDo(_WritePickles(tmp))
        result = p.run()
        result.wait_until_finish()
        seconds = (time.perf_counter() - started, time.process_time() - cpu)
        rows = [row for f in Path(tmp).glob("*.pkl") for row in pickle.loads(f.read_bytes())]  # (spill/ is a subfolder)
    counters = {c.key.metric.name: c.committed for c in
                result.metrics().query(MetricsFilter().with_namespace(METRICS_NS))["counters"]}
    return seconds, rows, counters


class _ReadFacts(beam.DoFn):
    """(start, end) -> facts, from the cached embeddings: keeps 100k arrays out of the graph."""

    def __init__(self, path: str, targets: list[str]):
        self._path, self._targets = path, targets

    def setup(self):
        self._emb = np.load(self._path, mmap_mode="r")

    def process(self, chunk):
        for i in range(*chunk):
            yield str(i), {"embedding": np.asarray(self._emb[i]), "fact_id": f"f{i}",
                           "target_norm": normalize_text(self._targets[i]), "order": i}


class _WritePickles(beam.DoFn):
    """Each bundle's outputs to one pickle in a folder (the runner may run DoFns on copies)."""

    def __init__(self, folder: str):
        self._folder = folder

    def start_bundle(self):
        self._rows = []

    def process(self, row):
        self._rows.append(row)

    def finish_bundle(self):
        Path(self._folder, f"{uuid.uuid4().hex}.pkl").write_bytes(pickle.dumps(self._rows))


class Exact(NamedTuple):
    """Ground truth for one size: pairs >= the neighbour threshold and what follows from them."""

    pairs: int
    pairs_conflict_threshold: int
    conflicts: set[tuple[int, int]]  # (i < j) at or above the conflict threshold, targets differ
    true_max: np.ndarray  # per fact: exact best different-target cosine if >= threshold, else 0
    seconds: tuple[float, float]


def exact_truth(emb: np.ndarray, targets: list[str], args) -> Exact:
    """Exact all-pairs (timed) and the scores an exact stage would give above the thresholds."""
    i, j, cos, seconds = exact_pairs(emb, args.neighbor_threshold)
    norm = [normalize_text(t) for t in targets]
    differ = np.array([norm[a] != norm[b] for a, b in zip(i.tolist(), j.tolist())], dtype=bool)
    conflict = differ & (cos >= args.conflict_threshold)
    true_max = np.zeros(len(emb))
    np.maximum.at(true_max, i[differ], cos[differ])
    np.maximum.at(true_max, j[differ], cos[differ])
    return Exact(len(i), int((cos >= args.conflict_threshold).sum()),
                 set(zip(i[conflict].tolist(), j[conflict].tolist())), true_max, seconds)


def stage_params(stage: str, config: str, args) -> dict:
    """The stage's parameters: an LSH config 'bands,bits,max_bucket,payload', or the index's flags."""
    thresholds = dict(neighbor_threshold=args.neighbor_threshold, conflict_threshold=args.conflict_threshold)
    if stage == "index":
        return dict(thresholds, exact_max=args.exact_max, cell_size=args.cell_size, nprobe=args.nprobe)
    bands, bits, max_bucket, payload = config.split(",")
    return dict(thresholds, bands=int(bands), bits=int(bits), max_bucket=int(max_bucket), seed=args.seed,
                payload=payload)


def index_config(args) -> str:
    return f"index exact_max={args.exact_max} cell_size={args.cell_size} nprobe={args.nprobe}"


def measure_stage(path: Path, targets: list[str], stage: str, config: str, base: tuple[float, float],
                  exact: Exact, args) -> dict:
    """One stage (LSH config, or the faiss index) at one size: time, work, recall against the truth."""
    seconds, rows, counters, peak = run_beam_apart(path, targets, stage_params(stage, config, args), stage)
    n = len(targets)
    assert len(rows) == n and len({k for k, _ in rows}) == n, "ScoreInterference lost or repeated keys"
    out = {int(k): v for k, v in rows}
    found = {(min(a, int(f[1:])), max(a, int(f[1:]))) for a, r in out.items() for f in r["conflicts_with"]}
    high = np.nonzero(exact.true_max > 0)[0]
    return {
        "n": n, "stage": stage, "config": config if stage == "lsh" else index_config(args),
        "lsh_s": seconds[0] - base[0], "lsh_cpu_s": seconds[1] - base[1],
        "lsh_pipeline_s": seconds[0], "read_write_only_s": base[0],
        "exact_s": exact.seconds[0], "exact_cpu_s": exact.seconds[1],
        "pairs_ge_neighbor": exact.pairs, "pairs_ge_conflict": exact.pairs_conflict_threshold,
        "conflict_pairs": len(exact.conflicts),
        "recall_neighbor": sum(r["neighbors"] for r in out.values()) / 2 / max(1, exact.pairs),
        "recall_conflict": len(found & exact.conflicts) / max(1, len(exact.conflicts)),
        "interference_exact": float(np.mean([abs(out[a]["interference"] - exact.true_max[a]) < 1e-5
                                             for a in high])) if len(high) else 1.0,
        "interference_max_error": float(max((abs(out[a]["interference"] - exact.true_max[a])
                                             for a in high), default=0.0)),
        "pairs_scored": counters.get("interference_pairs_scored", 0),
        "pairs_all": n * (n - 1) // 2,
        "buckets_split": counters.get("interference_buckets_split", 0),
        "facts_indexed": counters.get("interference_facts_indexed", 0),
        "range_searched": counters.get("interference_range_searched", 0),
        "peak_rss_gb": peak,  # the pipeline's own process: read, stage, write
    }


def measure_stage_sampled(n: int, base: tuple[float, float], run: tuple, flat_pairs: set,
                          flat_conflicts: set, args) -> dict:
    """The index stage's ``run`` at a size without an exact truth: recall on the sampled rows' directed pairs
    (faiss flat's, from ``measure_faiss``); the stage scores what it finds exactly, so neighbours
    counted are pairs found."""
    seconds, rows, counters, peak = run  # run_beam_apart's, of the index stage
    assert len(rows) == n and len({k for k, _ in rows}) == n, "the stage lost or repeated keys"
    out = {int(k): v for k, v in rows}
    del rows
    sampled = query_rows(n, args.faiss_queries, args.seed)
    truth = np.bincount(np.array([a for a, _ in flat_pairs], dtype=np.int64), minlength=n)
    found = sum(min(out[a]["neighbors"], int(truth[a])) for a in sampled.tolist())
    conflicts = {(a, int(f[1:])) for a in sampled.tolist() for f in out[a]["conflicts_with"]}
    return {"n": n, "stage": "index", "config": index_config(args), "lsh_s": seconds[0] - base[0],
            "lsh_cpu_s": seconds[1] - base[1], "lsh_pipeline_s": seconds[0], "read_write_only_s": base[0],
            "recall_sampled_queries": args.faiss_queries, "pairs_ge_neighbor": len(flat_pairs),
            "recall_neighbor": found / max(1, len(flat_pairs)),
            "conflict_pairs": len(flat_conflicts),
            "recall_conflict": len(conflicts & flat_conflicts) / max(1, len(flat_conflicts)),
            "facts_indexed": counters.get("interference_facts_indexed", 0),
            "range_searched": counters.get("interference_range_searched", 0), "peak_rss_gb": peak}


def query_rows(n: int, queries: int, seed: int) -> np.ndarray:
    """The sampled query rows of the faiss arms (the same for the search and for its scoring)."""
    return np.sort(np.random.default_rng(seed + 1).choice(n, queries, replace=False))


def faiss_arm(kind: str, path: str, threshold: float, nlist: int, nprobe: int, queries: int, seed: int) -> dict:
    """One faiss pass over the embeddings at ``path`` (run in a fresh process: its peak RSS is its own):
    every pair at or above ``threshold`` by ``range_search``, with ``IndexFlatIP`` (exact) or
    ``IndexIVFFlat`` (inner product, ``nlist`` cells, ``nprobe`` probed; trained on up to 100k rows).
    ``queries`` > 0 searches only that many random rows (the others are still indexed): for sizes
    where the exact truth is only affordable on a sample. Returns (i, j, cos) and its costs."""
    import faiss

    faiss.omp_set_num_threads(1)  # the same single thread as the LSH stage and the numpy pass
    emb = np.load(path)
    n, dim = emb.shape
    started, cpu = time.perf_counter(), time.process_time()
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(seed).choice(n, min(n, 100_000), replace=False)
        index.train(emb[np.sort(sample)])
        index.nprobe = nprobe
    index.add(emb)
    built = time.perf_counter() - started
    rows = query_rows(n, queries, seed) if queries else np.arange(n)
    found = []
    for r0 in range(0, len(rows), EXACT_BLOCK):
        block = rows[r0:r0 + EXACT_BLOCK]
        lims, dist, ids = index.range_search(emb[block], threshold)
        q = np.repeat(block, np.diff(lims).astype(np.int64))
        keep = q != ids
        found.append((q[keep], ids[keep], dist[keep]))
    i, j, cos = (np.concatenate(a) for a in zip(*found))
    return {"i": i, "j": j, "cos": cos, "s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu,
            "build_s": built, "peak_rss_gb": _vm_hwm_gb()}


def _vm_hwm_gb() -> float:
    """This process's peak RSS since its exec (VmHWM; ru_maxrss would carry the forking parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure_faiss(path: Path, targets: list[str], exact: Exact | None, args, kind: str,
                  sampled: bool = True) -> tuple[dict, set, set]:
    """A faiss arm in its own process, and its recall against the exact truth (or, with
    ``--faiss-queries``, against faiss's own exact pass over the same sampled queries)."""
    import multiprocessing

    n = len(targets)
    nlist = args.nlist or max(64, int(4 * np.sqrt(n)))
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        r = pool.apply(faiss_arm, (kind, str(path), args.neighbor_threshold, nlist, args.nprobe,
                                   args.faiss_queries if exact is None and sampled else 0, args.seed))
    norm = [normalize_text(t) for t in targets]
    i, j, cos = r["i"], r["j"], r["cos"]
    if exact is None:  # sampled truth: (query, neighbour) pairs of the sampled query rows only
        mine = np.isin(i, query_rows(n, args.faiss_queries, args.seed))
        i, j, cos = i[mine], j[mine], cos[mine]
        key = lambda a, b: (a, b)  # noqa: E731 - directed: the query row first
    else:
        key = lambda a, b: (min(a, b), max(a, b))  # noqa: E731 - each pair once
    triples = list(zip(i.tolist(), j.tolist(), cos.tolist()))
    pairs = {key(a, b) for a, b, _ in triples}
    conflicts = {key(a, b) for a, b, c in triples if c >= args.conflict_threshold and norm[a] != norm[b]}
    out = {"n": n, "config": f"faiss {kind}" + (f" nlist={nlist} nprobe={args.nprobe}" if kind == "ivf" else ""),
           "s": r["s"], "cpu_s": r["cpu_s"], "build_s": r["build_s"], "peak_rss_gb": r["peak_rss_gb"],
           "pairs_found": len(pairs)}
    if exact is not None:
        out["recall_neighbor"] = len(pairs) / max(1, exact.pairs)  # range_search has no false positives
        out["recall_conflict"] = len(conflicts & exact.conflicts) / max(1, len(exact.conflicts))
    return out, pairs, conflicts


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DATA), help="folder with counterfact-{train,val}.json")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--configs", nargs="+", default=["16,10,200,float32"],
                    help="LSH settings to compare, each 'bands,bits,max_bucket,payload'")
    ap.add_argument("--neighbor-threshold", type=float, default=0.9)
    ap.add_argument("--conflict-threshold", type=float, default=0.95)
    ap.add_argument("--near-dup", type=float, default=0.1, help="share of 100k copies above cos 0.9")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="suffix of the result file, for tuning runs")
    ap.add_argument("--faiss", nargs="*", default=["flat", "ivf"], choices=["flat", "ivf"],
                    help="faiss arms beside the LSH stage (none: --faiss with no value)")
    ap.add_argument("--nlist", type=int, default=0, help="IVF cells (0: 4·sqrt(n))")
    ap.add_argument("--nprobe", type=int, default=8, help="IVF cells probed per query (the IVF arm and the index stage)")
    ap.add_argument("--sampled-sizes", type=int, nargs="*", default=[],
                    help="sizes measured without the LSH stage or the numpy pass: faiss IVF against faiss "
                         "flat on --faiss-queries sampled rows (exact all-pairs is out of reach there)")
    ap.add_argument("--faiss-queries", type=int, default=20_000, help="sampled rows for --sampled-sizes")
    ap.add_argument("--stages", nargs="*", default=["lsh", "index"], choices=["lsh", "index"],
                    help="pipeline stages measured: the LSH stage (at --sizes only, per --configs) and the "
                         "faiss index stage (ScoreInterferenceIndex, also at --sampled-sizes)")
    ap.add_argument("--exact-max", type=int, default=50_000, help="index stage: exact search up to this n")
    ap.add_argument("--cell-size", type=int, default=128, help="index stage: facts per IVF cell")
    ap.add_argument("--stage-only", action="store_true",
                    help="only the index stage and the base pipeline at --sizes and --sampled-sizes: CPU s and "
                         "peak RSS, no recall pass and no other arm")
    args = ap.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)

    records = load_records(Path(args.data))
    real = real_embeddings(records, Path(args.out))
    if args.stage_only:
        return stage_only(args, real, [r["target_new"] for r in records])
    results, faiss_results = [], []
    for n in args.sizes:
        emb, targets, path = facts_file(real, [r["target_new"] for r in records], n, args)
        base = run_beam_apart(path, targets, None)[0]
        exact = exact_truth(emb, targets, args)
        for stage, config in [("lsh", c) for c in args.configs] + [("index", "")]:
            if stage in args.stages:
                results.append(measure_stage(path, targets, stage, config, base, exact, args))
                print(json.dumps(results[-1]), flush=True)
        for kind in args.faiss:
            faiss_results.append(measure_faiss(path, targets, exact, args, kind)[0])
            print(json.dumps(faiss_results[-1]), flush=True)
    for n in args.sampled_sizes:  # faiss IVF against faiss's exact pass, on the same sampled rows
        emb, targets, path = facts_file(real, [r["target_new"] for r in records], n, args)
        del emb
        if "index" in args.stages:  # first: its rows wait for the truth below
            base = run_beam_apart(path, targets, None)[0]
            stage_run = (base, run_beam_apart(path, targets, stage_params("index", "", args), "index"))
        flat, flat_pairs, flat_conflicts = measure_faiss(path, targets, None, args, "flat")
        ivf, ivf_pairs, ivf_conflicts = measure_faiss(path, targets, None, args, "ivf", sampled=False)
        # The IVF pass searched every row (its cost at this size); recall over the sampled rows' pairs.
        ivf["recall_neighbor"] = len(ivf_pairs & flat_pairs) / max(1, len(flat_pairs))
        ivf["recall_conflict"] = len(ivf_conflicts & flat_conflicts) / max(1, len(flat_conflicts))
        flat["sampled_queries"] = args.faiss_queries
        ivf["recall_sampled_queries"] = args.faiss_queries
        flat["recall_neighbor"] = flat["recall_conflict"] = 1.0
        faiss_results += [flat, ivf]
        print(json.dumps(flat), json.dumps(ivf), flush=True)
        if "index" in args.stages:
            results.append(measure_stage_sampled(n, *stage_run, flat_pairs, flat_conflicts, args))
            print(json.dumps(results[-1]), flush=True)
    report = {"settings": {k: v for k, v in vars(args).items() if k not in ("data", "out")},
              "real_records": len(records),
              "blas_threads": os.environ["OPENBLAS_NUM_THREADS"], "cpus": os.cpu_count(),
              "results": results, "faiss": faiss_results, "ratios": {}}
    for config in dict.fromkeys(r["config"] for r in results):  # smallest against largest size
        mine = sorted((r for r in results if r["config"] == config), key=lambda r: r["n"])
        small, large = mine[0], mine[-1]
        report["ratios"][config] = {"sizes": [small["n"], large["n"]],
                                    **{k: large[k] / small[k] for k in ("lsh_s", "lsh_cpu_s", "exact_s")
                                       if k in small and k in large}}
    print(_table([r for r in results if "exact_s" in r]))
    sampled_stage = [r for r in results if "exact_s" not in r]
    if sampled_stage:
        print("\n| facts | stage | stage s (CPU s) | peak RSS GB | pairs >= 0.9 (sampled rows) | recall >= 0.9 "
              "| conflict pairs | recall conflicts |")
        print("|---|---|---|---|---|---|---|---|")
        for r in sampled_stage:
            print(f"| {r['n']:,} | {r['config']} | {r['lsh_s']:.1f} ({r['lsh_cpu_s']:.1f}) | {r['peak_rss_gb']:.2f} "
                  f"| {r['pairs_ge_neighbor']:,} | {r['recall_neighbor']:.2%} | {r['conflict_pairs']:,} "
                  f"| {r['recall_conflict']:.2%} |")
    if faiss_results:
        print("\n| facts | arm | s (CPU s) | build s | peak RSS GB | pairs found | recall >= 0.9 | recall conflicts |")
        print("|---|---|---|---|---|---|---|---|")
        for r in faiss_results:
            sampled = (f" ({r['sampled_queries']:,} sampled rows)" if "sampled_queries" in r else
                       f" (recall on {r['recall_sampled_queries']:,} sampled rows)" if "recall_sampled_queries" in r
                       else "")
            print(f"| {r['n']:,}{sampled} | {r['config']} | {r['s']:.1f} ({r['cpu_s']:.1f}) | {r['build_s']:.1f} "
                  f"| {r['peak_rss_gb']:.2f} | {r['pairs_found']:,} | {r['recall_neighbor']:.2%} "
                  f"| {r['recall_conflict']:.2%} |")
    print("\ngrowth, largest size / smallest:")
    for config, ratio in report["ratios"].items():
        lo, hi = ratio["sizes"]
        exact = f", exact {ratio['exact_s']:.1f}" if "exact_s" in ratio else ""
        print(f"- {config} ({hi:,} / {lo:,}): stage wall {ratio['lsh_s']:.1f}, stage CPU {ratio['lsh_cpu_s']:.1f}{exact}")
    name = f"interference{('-' + args.tag) if args.tag else ''}.json"
    (Path(args.out) / name).write_text(json.dumps(report, indent=2))
    return report


def facts_file(real: np.ndarray, targets: list[str], n: int, args) -> tuple[np.ndarray, list[str], Path]:
    """``build_facts`` at size n, saved where the pipelines' reader finds it: (embeddings, targets, path)."""
    emb, facts_targets = build_facts(real, targets, n, args.near_dup, args.seed)
    path = Path(args.out) / f"facts_{n}.npy"
    np.save(path, emb)
    return emb, facts_targets, path


def stage_only(args, real: np.ndarray, targets: list[str]) -> dict:
    """The index stage alone at each size: (stage pipeline - base pipeline) CPU s and the stage's peak."""
    rows = []
    for n in [*args.sizes, *args.sampled_sizes]:
        emb, facts_targets, path = facts_file(real, targets, n, args)
        del emb
        base = run_beam_apart(path, facts_targets, None)
        (wall, cpu), _, counters, peak = run_beam_apart(path, facts_targets, stage_params("index", "", args), "index")
        rows.append({"n": n, "config": index_config(args), "stage_cpu_s": cpu - base[0][1],
                     "stage_wall_s": wall - base[0][0], "pipeline_cpu_s": cpu, "base_cpu_s": base[0][1],
                     "peak_rss_gb": peak, "base_peak_rss_gb": base[-1], "counters": counters})
        print(json.dumps(rows[-1]), flush=True)
    print("\n| facts | stage CPU s | stage wall s | peak RSS GB |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} | {r['stage_cpu_s']:.1f} | {r['stage_wall_s']:.1f} | {r['peak_rss_gb']:.2f} |")
    report = {"settings": {k: v for k, v in vars(args).items() if k not in ("data", "out")},
              "real_records": len(real), "stage_only": rows}
    name = f"interference-stage{('-' + args.tag) if args.tag else ''}.json"
    (Path(args.out) / name).write_text(json.dumps(report, indent=2))
    return report


def _table(results: list[dict]) -> str:
    lines = ["| facts | stage | stage s (CPU s) | peak RSS GB | exact s (CPU s) "
             "| pairs scored / all | buckets split | pairs >= 0.9 | recall >= 0.9 | conflict pairs "
             "| recall conflicts | interference exact |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        scored = f"{r['pairs_scored'] / r['pairs_all']:.2%}" if r["stage"] == "lsh" else "(index)"
        lines.append(
            f"| {r['n']:,} | {r['config']} | {r['lsh_s']:.1f} ({r['lsh_cpu_s']:.1f}) | {r['peak_rss_gb']:.2f} "
            f"| {r['exact_s']:.1f} ({r['exact_cpu_s']:.1f}) | {scored} "
            f"| {r['buckets_split']} | {r['pairs_ge_neighbor']:,} | {r['recall_neighbor']:.2%} "
            f"| {r['conflict_pairs']:,} | {r['recall_conflict']:.2%} | {r['interference_exact']:.2%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
