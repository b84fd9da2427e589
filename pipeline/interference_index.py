"""ScoreInterferenceIndex: interference from one faiss index over every fact, for runners on one machine.

The LSH stage (``pipeline.interference``) exists so that no worker needs every embedding; what it pays
for that is Beam's shuffle of n × bands copies of each embedding, which is most of its cost and all of
its memory (BENCHMARKS.md: 47 CPU s and ~13.5 GB at 100k facts, against 25 CPU s and 0.55 GB for a
faiss IVF index doing the same search). On one machine the facts' prompt embeddings fit in memory
(1M × 384 float32 = 1.5 GB), so this stage packs them into blocks, hands them to one worker as a side
input and asks faiss:

- up to ``exact_max`` facts: ``IndexFlatIP``, exact inner products (BLAS);
- above: ``IndexIVFFlat`` with cells of about ``cell_size`` facts (k-means, trained on a seeded sample
  of at most ``TRAIN_MAX`` rows, in one thread so the cells do not depend on the thread count), of
  which ``nprobe`` are searched per query. Constant-size cells keep the scan per fact constant; what
  grows faster than n is routing each fact to its cells (n × cells inner products, BLAS).

Each fact's ``k`` nearest other facts give its ``interference`` (the best cosine to a different target
among them, floored at 0: for the flat index exact whenever the closest other-target fact is among the
k nearest, otherwise a lower bound) and its neighbours at or above ``neighbor_threshold``. A fact whose
k-th nearest is still above the threshold may have more: those facts alone get a range search, so
``neighbors`` and ``conflicts_with`` are complete (for the IVF index, within the cells probed). The
scores have exactly the contract of ``pipeline.interference``'s ``finalize``, which this stage reuses.

Memory on the worker: the runner's copy of the packed blocks (side input, ~1.5 KB a fact), the embedding matrix and the index (each
~1.5 KB a fact at 384 dimensions); 8.6 GB peak for the whole pipeline process at 1M facts
(BENCHMARKS.md). On a cluster that is one worker's job: there
the LSH stage (``interference_index: lsh``) spreads the work.
"""

from __future__ import annotations

import logging
from typing import Iterable

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from pipeline import METRICS_NS
from pipeline.inference import Progress
from pipeline.interference import finalize

log = logging.getLogger(__name__)

# IVF training rows at most: k-means costs rows × cells, and the cells only route the search (a cell's
# members are scored exactly), so a sample this size serves 1M facts' ~7,800 cells.
TRAIN_MAX = 50_000
SEARCH_BLOCK = 16_384  # query rows per faiss call: bounds the result arrays, paces progress lines

# A block of facts: (keys, their float32 embeddings' bytes, normalised targets, fact_ids, orders).
Block = tuple[list[str], bytes, list[str], list[str], list[int]]


def build_index(emb: np.ndarray, *, exact_max: int, cell_size: int, nprobe: int, seed: int):
    """The faiss index over ``emb`` (n, d) float32: flat (exact) up to ``exact_max`` rows, else IVF;
    None for fewer than two rows (nothing to search)."""
    import faiss

    n, dim = emb.shape
    if n < 2:
        return None
    if n <= exact_max:
        index = faiss.IndexFlatIP(dim)
    else:
        nlist = max(1, n // cell_size)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.sort(np.random.default_rng(seed).choice(n, min(n, TRAIN_MAX), replace=False))
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # k-means sums in a fixed order: the same cells on any machine
        try:
            index.cp.seed = seed
            index.cp.min_points_per_centroid = 1  # few rows per cell is the design (TRAIN_MAX): no warning
            index.train(emb[sample])
        finally:
            faiss.omp_set_num_threads(threads)
        index.nprobe = min(nprobe, nlist)
    index.add(emb)
    if isinstance(index, faiss.IndexIVF):
        index.make_direct_map()  # reconstruct_n: the queries come from the index's own copy
    return index


def score_all(emb: np.ndarray, targets: list[str], fact_ids: list[str], orders: list[int], *,
              neighbor_threshold: float, conflict_threshold: float, k: int = 16,
              exact_max: int = 50_000, cell_size: int = 128, nprobe: int = 8, seed: int = 0,
              progress: Progress | None = None) -> tuple[list[dict], dict[str, int]]:
    """Interference scores of every row of ``emb`` (n, d) float32, L2-normalised, against all others.

    ``targets`` are normalised; ``fact_ids`` and ``orders`` are the rows'. Returns the per-row scores
    (``finalize``'s dict) and counts of the work done.
    """
    index = build_index(emb, exact_max=exact_max, cell_size=cell_size, nprobe=nprobe, seed=seed)
    return score_index(index, len(emb), targets, fact_ids, orders, neighbor_threshold=neighbor_threshold,
                       conflict_threshold=conflict_threshold, k=k, progress=progress)


def score_index(index, n: int, targets: list[str], fact_ids: list[str], orders: list[int], *,
                neighbor_threshold: float, conflict_threshold: float, k: int = 16,
                progress: Progress | None = None) -> tuple[list[dict], dict[str, int]]:
    """``score_all`` over an index built from the n rows (``build_index``): the queries are the index's
    own vectors (``reconstruct_n``), so the caller need not keep a second copy of them."""
    if n < 2:
        return [finalize((0.0, {}), conflict_threshold) for _ in range(n)], {"range_searched": 0}
    codes = _codes(targets)
    kk = min(n, k + 1)  # +1: a fact finds itself
    results: list[dict] = []
    range_searched = 0
    for r0 in range(0, n, SEARCH_BLOCK):
        rows = np.arange(r0, min(n, r0 + SEARCH_BLOCK))
        queries = index.reconstruct_n(r0, len(rows))
        cos, ids = index.search(queries, kk)
        cos, ids = _drop_self(cos, ids, rows)
        # Best cosine to another target among the k found (-1 pads faiss's misses), floored at 0.
        other = (ids >= 0) & (codes[np.maximum(ids, 0)] != codes[rows][:, None])
        best = np.maximum(np.where(other, cos, -np.inf).max(axis=1), 0.0)
        # The k-th is still close: there may be more neighbours than k, so search by radius.
        # (Unless the k were every other fact.)
        full = np.nonzero(cos[:, -1] >= neighbor_threshold)[0] if kk < n else np.empty(0, np.int64)
        ranged: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if len(full):
            range_searched += len(full)
            lims, rcos, rids = index.range_search(queries[full], neighbor_threshold)
            for f, a, b in zip(full.tolist(), lims[:-1].tolist(), lims[1:].tolist()):
                keep = rids[a:b] != rows[f]
                ranged[f] = (rcos[a:b][keep], rids[a:b][keep])
        hot = set(np.nonzero(cos[:, 0] >= neighbor_threshold)[0].tolist()) | set(ranged)
        for r, b in enumerate(best.tolist()):
            if r not in hot:
                results.append(finalize((b, {}), conflict_threshold))
                continue
            i = int(rows[r])
            rc, ri = ranged.get(r, (cos[r], ids[r]))
            entries = {}
            for c, j in zip(rc.tolist(), ri.tolist()):
                if j >= 0 and c >= neighbor_threshold:
                    entries[fact_ids[j]] = (c, codes[j] != codes[i], (orders[j], fact_ids[j]) < (orders[i], fact_ids[i]))
                    if codes[j] != codes[i]:
                        b = max(b, c)
            results.append(finalize((b, entries), conflict_threshold))
        if progress is not None:
            progress.add(len(rows))
    return results, {"range_searched": range_searched}


def _codes(targets: list[str]) -> np.ndarray:
    index: dict[str, int] = {}
    return np.fromiter((index.setdefault(t, len(index)) for t in targets), np.int64, len(targets))


def _drop_self(cos: np.ndarray, ids: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """k+1 results per row -> k without the row itself (or without the last, when identical prompts
    pushed the row itself out of its own k+1)."""
    is_self = ids == rows[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), ids.shape[1] - 1)
    keep = np.ones(ids.shape, dtype=bool)
    keep[np.arange(len(ids)), drop] = False
    m = ids.shape[1] - 1
    return cos[keep].reshape(-1, m), ids[keep].reshape(-1, m)


PACK_ROWS = 4096  # facts per block on their way to the scoring worker


class _Pack(beam.DoFn):
    """(key, fact) -> blocks of up to ``PACK_ROWS`` facts: (keys, float32 embedding bytes, normalised
    targets, fact_ids, orders). A few hundred large elements instead of a million small ones: the
    runner's per-element cost and Python's per-object memory are paid per block."""

    def start_bundle(self):
        self._rows: list = []

    def process(self, element):
        self._rows.append(element)
        if len(self._rows) >= PACK_ROWS:
            yield self._block()

    def finish_bundle(self):
        if self._rows:
            yield GlobalWindows.windowed_value(self._block())

    def _block(self) -> Block:
        rows, self._rows = self._rows, []
        emb = np.stack([np.ascontiguousarray(f["embedding"], dtype=np.float32).ravel() for _, f in rows])
        return ([k for k, _ in rows], emb.tobytes(), [f["target_norm"] for _, f in rows],
                [f["fact_id"] for _, f in rows], [int(f["order"]) for _, f in rows])


class _ScoreAll(beam.DoFn):
    """One element -> (key, scores) for every fact of the ``blocks`` side input.

    The blocks are read twice from the side input (the runner keeps them; iterating does not copy
    them all): once for the keys, once to fill one matrix in key order, so the index is the same
    whatever order the blocks arrive in. The matrix goes into the index and is dropped; the queries
    come back out of the index (``score_index``). Peak: the runner's copy, the matrix and the index.
    """

    def __init__(self, *, exact_max: int, cell_size: int, nprobe: int, seed: int, **score):
        self._build = dict(exact_max=exact_max, cell_size=cell_size, nprobe=nprobe, seed=seed)
        self._score = score  # thresholds and k
        self._facts = Metrics.counter(METRICS_NS, "interference_facts_indexed")
        self._ranged = Metrics.counter(METRICS_NS, "interference_range_searched")

    def process(self, _, blocks):
        keys = sorted(k for block in blocks for k in block[0])
        n = len(keys)
        rank = {k: i for i, k in enumerate(keys)}
        if len(rank) != n:
            raise ValueError("ScoreInterferenceIndex: keys must be unique")
        targets, fact_ids, orders = [""] * n, [""] * n, [0] * n
        emb = None
        for block_keys, blob, block_targets, block_ids, block_orders in blocks:
            at = np.fromiter((rank[k] for k in block_keys), np.int64, len(block_keys))
            vectors = np.frombuffer(blob, dtype=np.float32).reshape(len(block_keys), -1)
            if emb is None:
                emb = np.empty((n, vectors.shape[1]), dtype=np.float32)
            emb[at] = vectors
            for i, t, f, o in zip(at.tolist(), block_targets, block_ids, block_orders):
                targets[i], fact_ids[i], orders[i] = t, f, o
        if not n:
            return
        log.info("interference: indexing %d facts", n)
        index = build_index(emb, **self._build)
        del emb  # the index holds the vectors now
        scores, work = score_index(index, n, targets, fact_ids, orders, progress=Progress("interference"),
                                   **self._score)
        self._facts.inc(n)
        self._ranged.inc(work["range_searched"])
        yield from zip(keys, scores)


class ScoreInterferenceIndex(beam.PTransform):
    """(key, {'embedding', 'target_norm', 'fact_id', 'order'}) -> (key, interference scores).

    The same input and output contract as ``pipeline.interference.ScoreInterference`` (exactly one
    output per input key); the search is one faiss index on one worker (module docstring).
    """

    def __init__(self, *, neighbor_threshold: float = 0.9, conflict_threshold: float = 0.95, k: int = 16,
                 exact_max: int = 50_000, cell_size: int = 128, nprobe: int = 8, seed: int = 0):
        super().__init__()
        if not -1.0 <= neighbor_threshold <= conflict_threshold <= 1.0:
            raise ValueError(f"need -1 <= neighbor_threshold ({neighbor_threshold}) <= "
                             f"conflict_threshold ({conflict_threshold}) <= 1")
        if k < 1 or exact_max < 0 or cell_size < 1 or nprobe < 1:
            raise ValueError(f"need k >= 1, exact_max >= 0, cell_size >= 1, nprobe >= 1; got k={k}, "
                             f"exact_max={exact_max}, cell_size={cell_size}, nprobe={nprobe}")
        self._params = dict(neighbor_threshold=neighbor_threshold, conflict_threshold=conflict_threshold,
                            k=k, exact_max=exact_max, cell_size=cell_size, nprobe=nprobe, seed=seed)

    def expand(self, facts):
        blocks = facts | "Pack" >> beam.ParDo(_Pack())
        return (facts.pipeline
                | "Once" >> beam.Create([None])
                | "SearchIndex" >> beam.ParDo(_ScoreAll(**self._params), beam.pvalue.AsIter(blocks)))


def score_rows(facts: Iterable[tuple[str, dict]], **params) -> dict[str, dict]:
    """The stage in-process, for tests and benchmarks: {key: scores}."""
    items = sorted(facts, key=lambda kv: kv[0])
    emb = np.stack([np.asarray(f["embedding"], dtype=np.float32) for _, f in items])
    scores, _ = score_all(emb, [f["target_norm"] for _, f in items], [f["fact_id"] for _, f in items],
                          [int(f["order"]) for _, f in items], **params)
    return {k: s for (k, _), s in zip(items, scores)}
