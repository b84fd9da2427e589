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
  which ``nprobe`` are searched per fact. Each fact is routed once (its ``nprobe`` nearest cells; it
  lives in the first), and the search runs cell by cell: the facts that probe a cell against the
  cell's members, one BLAS product each (``_knn_by_cell``), instead of faiss's fact-by-fact scan,
  which reads each cell's vectors again for every fact that probes it.

Each fact's ``k`` nearest other facts give its ``interference`` (the best cosine to a different target
among them, floored at 0: for the flat index exact whenever the closest other-target fact is among the
k nearest, otherwise a lower bound) and its neighbours at or above ``neighbor_threshold``. A fact whose
k-th nearest is still above the threshold may have more: those facts alone get a range search, so
``neighbors`` and ``conflicts_with`` are complete (for the IVF index, within the cells probed). The
scores have exactly the contract of ``pipeline.interference``'s ``finalize``, which this stage reuses.

Memory on the worker: the packed blocks (~1.5 KB a fact at 384 dimensions; on runners of this
machine read from a spill folder, else also the runner's copy of the side input), the index (as much
again) and one chunk of ``ADD_BLOCK`` rows being added; the facts are never copied into one matrix. BENCHMARKS.md has the whole pipeline process's peak at 1M facts. On a
cluster that is one worker's job: there the LSH stage (``interference_index: lsh``) spreads the work.
"""

from __future__ import annotations

import logging
import os
import pickle
import uuid
from typing import Callable, Iterable, NamedTuple

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
ADD_BLOCK = 131_072  # rows added to the index at a time: bounds the copy the worker gathers them into
# From this many cells on, the cells are trained and the facts routed in two levels (``_train_cells``,
# ``_router``): 1M facts' ~7,800 cells, not 100k facts' ~780.
TWO_LEVEL_MIN = 1024
ROUTE_PROBE = 8  # groups of centroids a fact's cells are looked for in, above TWO_LEVEL_MIN cells

# A block of facts: (keys, their float32 embeddings' bytes, normalised targets, fact_ids, orders).
Block = tuple[list[str], bytes, list[str], list[str], list[int]]


class FactIndex(NamedTuple):
    """The faiss index over n facts (row i is fact i) and, for IVF, the ``nprobe`` cells each fact is
    searched in, nearest first (its own cell is the first): computed once, when the fact is added."""

    index: object
    cells: np.ndarray | None  # (n, nprobe) int32, IVF only


def build_index(emb: np.ndarray, *, exact_max: int, cell_size: int, nprobe: int, seed: int) -> FactIndex | None:
    """The index over ``emb`` (n, d) float32 (``build_from`` over the matrix's rows)."""
    n, dim = emb.shape
    return build_from(lambda: (emb[r:r + ADD_BLOCK] for r in range(0, n, ADD_BLOCK)), lambda rows: emb[rows],
                      n, dim, exact_max=exact_max, cell_size=cell_size, nprobe=nprobe, seed=seed)


def build_from(chunks: Callable[[], Iterable[np.ndarray]], rows: Callable[[np.ndarray], np.ndarray], n: int,
               dim: int, *, exact_max: int, cell_size: int, nprobe: int, seed: int) -> FactIndex | None:
    """The index over n facts of ``dim`` float32 dimensions, None for fewer than two (nothing to search):
    flat (exact) up to ``exact_max`` facts, else IVF.

    ``chunks()`` yields the facts' embeddings in row order, a chunk at a time, so no caller needs a
    second copy of them all; ``rows(sorted row numbers)`` gives some of them (the k-means sample).
    """
    import faiss
    from faiss.contrib.ivf_tools import add_preassigned

    if n < 2:
        return None
    if n <= exact_max:
        index = faiss.IndexFlatIP(dim)
        for chunk in chunks():
            index.add(chunk)
        return FactIndex(index, None)
    sample = np.sort(np.random.default_rng(seed).choice(n, min(n, TRAIN_MAX), replace=False))
    centroids = _train_cells(rows(sample), max(1, n // cell_size), seed)
    nlist = len(centroids)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.quantizer.add(centroids)
    index.is_trained = True
    index.nprobe = min(nprobe, nlist)
    route = _router(centroids, index.nprobe, seed)
    # Route each fact once: its nprobe nearest cells are where it is searched, the first is where it lives.
    cells = np.empty((n, index.nprobe), dtype=np.int32)
    at = 0
    for chunk in chunks():
        nearest = route(chunk)
        add_preassigned(index, chunk, nearest[:, 0].astype(np.int64))
        cells[at:at + len(chunk)] = nearest
        at += len(chunk)
    if at != n:
        raise ValueError(f"build_from: chunks held {at} rows, expected {n}")
    index.make_direct_map()  # reconstruct: the queries come from the index's own copy
    return FactIndex(index, cells)


def _kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k spherical k-means centroids of ``x`` in one thread (sums in a fixed order: the same cells on
    any machine), k clamped to the rows there are."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        km = faiss.Kmeans(x.shape[1], max(1, min(k, len(x))), seed=seed, spherical=True,
                          min_points_per_centroid=1)  # few rows per cell is the design (TRAIN_MAX)
        km.train(np.ascontiguousarray(x))
        return km.centroids
    finally:
        faiss.omp_set_num_threads(threads)


def _train_cells(sample: np.ndarray, nlist: int, seed: int) -> np.ndarray:
    """About ``nlist`` cell centroids from the training ``sample``.

    Up to ``TWO_LEVEL_MIN`` cells, one k-means; above, two levels (the idea of faiss's
    ``contrib.clustering.two_level_clustering``): ~sqrt(nlist) coarse clusters, then each split into
    cells in proportion to its rows (at least one, at most its rows: that helper would fail on a
    cluster with fewer rows than its share). One k-means costs rows × nlist per iteration, which at
    1M facts' 7,800 cells was a fifth of the stage; two levels cost rows × 2·sqrt(nlist).
    """
    if nlist < TWO_LEVEL_MIN:
        return _kmeans(sample, nlist, seed)
    coarse = _kmeans(sample, int(np.sqrt(nlist)), seed)
    _, owner = _nearest(coarse, sample, 1)
    owner = owner[:, 0]
    sizes = np.bincount(owner, minlength=len(coarse))
    shares = np.clip(np.round(sizes * nlist / len(sample)).astype(np.int64), 1, np.maximum(sizes, 1))
    parts = [_kmeans(sample[owner == c], int(shares[c]), seed) for c in range(len(coarse)) if sizes[c]]
    return np.ascontiguousarray(np.vstack(parts), dtype=np.float32)


def _nearest(centroids: np.ndarray, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact: each row of ``x``'s k nearest of ``centroids`` by inner product (one BLAS product)."""
    import faiss

    return faiss.knn(np.ascontiguousarray(x), centroids, k, metric=faiss.METRIC_INNER_PRODUCT)


def _router(centroids: np.ndarray, nprobe: int, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """rows -> each row's ``nprobe`` nearest cells (int32, nearest first).

    Up to ``TWO_LEVEL_MIN`` cells exactly, one BLAS product against every centroid. Above, that product
    is n × nlist, quadratic in the facts at a fixed cell size (45 of 130 CPU s at 1M facts), so the
    centroids are themselves grouped into an IVF index of ~sqrt(nlist) groups and each row is matched
    against the centroids of its ``ROUTE_PROBE`` nearest groups, group by group (``_knn_by_cell``).
    A row whose groups hold fewer than nprobe cells is routed exactly."""
    import faiss

    nlist = len(centroids)
    if nlist < TWO_LEVEL_MIN:
        return lambda x: _nearest(centroids, x, nprobe)[1].astype(np.int32)
    groups = _kmeans(centroids, int(np.sqrt(nlist)), seed)
    by_group = faiss.IndexIVFFlat(faiss.IndexFlatIP(centroids.shape[1]), centroids.shape[1], len(groups),
                                  faiss.METRIC_INNER_PRODUCT)
    by_group.quantizer.add(groups)
    by_group.is_trained = True
    by_group.add(centroids)  # ids 0..nlist-1: the cell numbers

    def route(x: np.ndarray) -> np.ndarray:
        _, probes = _nearest(groups, x, min(ROUTE_PROBE, len(groups)))
        _, near = _knn_by_cell(by_group, probes.astype(np.int32), nprobe, lambda rows: x[rows])
        short = np.nonzero((near < 0).any(axis=1))[0]
        if len(short):
            near[short] = _nearest(centroids, x[short], nprobe)[1]
        return near.astype(np.int32)

    return route


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


def score_index(built: FactIndex | None, n: int, targets: list[str], fact_ids: list[str], orders: list[int], *,
                neighbor_threshold: float, conflict_threshold: float, k: int = 16,
                progress: Progress | None = None) -> tuple[list[dict], dict[str, int]]:
    """``score_all`` over an index built from the n rows (``build_index``): the queries are the index's
    own vectors, so the caller need not keep a second copy of them."""
    if n < 2:
        return [finalize((0.0, {}), conflict_threshold) for _ in range(n)], {"range_searched": 0}
    index = built.index
    codes = _codes(targets)
    kk = min(n, k + 1)  # +1: a fact finds itself
    nearest = (_knn_by_cell(index, built.cells, kk, index.reconstruct_batch, progress)
               if built.cells is not None else None)
    results: list[dict] = []
    range_searched = 0
    for r0 in range(0, n, SEARCH_BLOCK):
        rows = np.arange(r0, min(n, r0 + SEARCH_BLOCK))
        if nearest is None:
            cos, ids = index.search(index.reconstruct_n(r0, len(rows)), kk)
            if progress is not None:
                progress.add(len(rows))
        else:
            cos, ids = nearest[0][rows], nearest[1][rows]
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
            lims, rcos, rids = index.range_search(index.reconstruct_batch(rows[full]), neighbor_threshold)
            for f, a, b in zip(full.tolist(), lims[:-1].tolist(), lims[1:].tolist()):
                keep = rids[a:b] != rows[f]
                # With the k found: above TWO_LEVEL_MIN a fact's routed cells need not be the ones
                # the index's quantizer probes for the radius search, so either may hold a neighbour.
                found_ids, first = np.unique(np.concatenate([rids[a:b][keep], ids[f]]), return_index=True)
                ranged[f] = (np.concatenate([rcos[a:b][keep], cos[f]])[first], found_ids)
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
    return results, {"range_searched": range_searched}


def _knn_by_cell(index, probes: np.ndarray, kk: int, vectors: Callable[[np.ndarray], np.ndarray],
                 progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each query's kk nearest among the members of the IVF ``index``'s cells it probes (``probes``:
    (queries, nprobe) int32 cell numbers; ``vectors(query numbers)``: their vectors), cell by cell:
    the queries of a cell against the cell's members as one BLAS product (``faiss.knn``), merged per
    query in a ``ResultHeap`` (-1 where fewer than kk were found).

    For the facts (probes: their cells, vectors: the index's own copy) these are the same neighbours
    as ``index.search`` with the index's nprobe, but each cell's members are read once for all the
    facts that probe it rather than once per fact: 36 CPU s instead of ~290 s for 1M facts
    (BENCHMARKS.md). The idea is faiss's own ``contrib.big_batch_search``, which wants every query in
    one matrix (and prints a line per cell); here the queries come a cell at a time.
    """
    import faiss
    from faiss.contrib.inspect_tools import get_invlist

    n = len(probes)
    cells = probes.copy()  # sorted in place below: the caller's stay as they are
    nprobe = cells.shape[1]
    limits = faiss.matrix_bucket_sort_inplace(cells, nbucket=index.nlist, nt=1)
    queries = cells.ravel()  # now the query numbers, grouped by the cell they probe
    heap = faiss.ResultHeap(n, kk, keep_max=True)
    visits = reported = 0
    for cell in range(index.nlist):
        a, b = int(limits[cell]), int(limits[cell + 1])
        members, codes = get_invlist(index.invlists, cell)
        if a < b and len(members):
            facts = queries[a:b].astype(np.int64)
            cos, near = faiss.knn(vectors(facts), codes.view(np.float32).reshape(len(members), -1),
                                  min(kk, len(members)), metric=faiss.METRIC_INNER_PRODUCT)
            heap.add_result_subset(facts, cos, np.where(near >= 0, members[np.maximum(near, 0)], -1))
        visits += b - a
        if progress is not None and visits // nprobe > reported:
            progress.add(visits // nprobe - reported)
            reported = visits // nprobe
    heap.finalize()
    return heap.D, heap.I


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
    runner's per-element cost and Python's per-object memory are paid per block.

    With ``spill_dir`` each block is written to a file there and only its path goes through the
    runner, which otherwise keeps several copies of a large side input (its output buffer, the side
    input's state, the worker's decoded value: ~5 GB resident at 1M facts before the search began,
    measured). Only for runners whose workers share that folder (``pipeline.run`` gives one to
    runners on this machine)."""

    def __init__(self, spill_dir: str | None = None):
        self._spill = spill_dir

    def start_bundle(self):
        self._rows: list = []

    def process(self, element):
        self._rows.append(element)
        if len(self._rows) >= PACK_ROWS:
            yield self._block()

    def finish_bundle(self):
        if self._rows:
            yield GlobalWindows.windowed_value(self._block())

    def _block(self) -> Block | str:
        rows, self._rows = self._rows, []
        emb = np.stack([np.ascontiguousarray(f["embedding"], dtype=np.float32).ravel() for _, f in rows])
        block = ([k for k, _ in rows], emb.tobytes(), [f["target_norm"] for _, f in rows],
                 [f["fact_id"] for _, f in rows], [int(f["order"]) for _, f in rows])
        if self._spill is None:
            return block
        path = os.path.join(self._spill, f"block-{uuid.uuid4().hex}.pkl")
        with open(path, "wb") as f:
            pickle.dump(block, f, protocol=pickle.HIGHEST_PROTOCOL)
        return path


def _load_block(block: Block | str) -> Block:
    if not isinstance(block, str):
        return block
    try:
        with open(block, "rb") as f:
            return pickle.load(f)
    except FileNotFoundError:
        raise RuntimeError(f"ScoreInterferenceIndex: the packed block {block} is gone; its spill folder must "
                           "be shared by every worker and kept until the stage ends") from None


class _ScoreAll(beam.DoFn):
    """One element -> (key, scores) for every fact of the ``blocks`` side input.

    The side input is iterated once: each iteration of a large one costs a decode and the state
    cache's deep-size walk (~8 s at 1M facts, measured), so the blocks are held in a list while the
    index is built, then dropped. The index holds the facts in key order, so it is the same whatever
    order the blocks arrive in; they are never copied into one matrix: each ``ADD_BLOCK`` rows in key
    order are gathered from the blocks and added. The queries come back out of the index
    (``score_index``). Peak: the decoded blocks, the index and, without a spill folder, the runner's
    copy of the blocks.
    """

    def __init__(self, *, exact_max: int, cell_size: int, nprobe: int, seed: int, **score):
        self._build = dict(exact_max=exact_max, cell_size=cell_size, nprobe=nprobe, seed=seed)
        self._score = score  # thresholds and k
        self._facts = Metrics.counter(METRICS_NS, "interference_facts_indexed")
        self._ranged = Metrics.counter(METRICS_NS, "interference_range_searched")

    def process(self, _, side_input):
        blocks = [_load_block(block) for block in side_input]
        keys = sorted(k for block in blocks for k in block[0])
        n = len(keys)
        rank = {k: i for i, k in enumerate(keys)}
        if len(rank) != n:
            raise ValueError("ScoreInterferenceIndex: keys must be unique")
        if not n:
            return
        targets, fact_ids, orders = [""] * n, [""] * n, [0] * n
        where: list[np.ndarray] = []  # per block: the rank of each of its rows
        dim = len(blocks[0][1]) // 4 // len(blocks[0][0])  # float32 bytes per row
        for block_keys, blob, block_targets, block_ids, block_orders in blocks:
            at = np.fromiter((rank[k] for k in block_keys), np.int64, len(block_keys))
            where.append(at)
            for i, t, f, o in zip(at.tolist(), block_targets, block_ids, block_orders):
                targets[i], fact_ids[i], orders[i] = t, f, o
        del rank

        def gather(wanted: np.ndarray) -> np.ndarray:
            """The embeddings of the ranks ``wanted`` (sorted), in that order: one pass over the blocks."""
            out = np.empty((len(wanted), dim), dtype=np.float32)
            for at, block in zip(where, blocks):
                pos = np.searchsorted(wanted, at)
                hit = (pos < len(wanted)) & (wanted[np.minimum(pos, len(wanted) - 1)] == at)
                if hit.any():
                    vectors = np.frombuffer(block[1], dtype=np.float32).reshape(len(at), dim)
                    out[pos[hit]] = vectors[hit]
            return out

        chunks = lambda: (gather(np.arange(r, min(n, r + ADD_BLOCK))) for r in range(0, n, ADD_BLOCK))  # noqa: E731
        log.info("interference: indexing %d facts", n)
        index = build_from(chunks, gather, n, dim, **self._build)
        blocks.clear()  # the index holds the vectors now (spilled files stay: a retried bundle rereads them;
        # the run removes the folder)
        scores, work = score_index(index, n, targets, fact_ids, orders, progress=Progress("interference"),
                                   **self._score)
        self._facts.inc(n)
        self._ranged.inc(work["range_searched"])
        yield from zip(keys, scores)


class ScoreInterferenceIndex(beam.PTransform):
    """(key, {'embedding', 'target_norm', 'fact_id', 'order'}) -> (key, interference scores).

    The same input and output contract as ``pipeline.interference.ScoreInterference`` (exactly one
    output per input key); the search is one faiss index on one worker (module docstring).
    ``spill_dir``: an existing folder every worker can read, where the packed blocks are handed over
    (``_Pack``); None hands them over through the runner.
    """

    def __init__(self, *, neighbor_threshold: float = 0.9, conflict_threshold: float = 0.95, k: int = 16,
                 exact_max: int = 50_000, cell_size: int = 128, nprobe: int = 8, seed: int = 0,
                 spill_dir: str | None = None):
        super().__init__()
        self._spill = spill_dir
        if not -1.0 <= neighbor_threshold <= conflict_threshold <= 1.0:
            raise ValueError(f"need -1 <= neighbor_threshold ({neighbor_threshold}) <= "
                             f"conflict_threshold ({conflict_threshold}) <= 1")
        if k < 1 or exact_max < 0 or cell_size < 1 or nprobe < 1:
            raise ValueError(f"need k >= 1, exact_max >= 0, cell_size >= 1, nprobe >= 1; got k={k}, "
                             f"exact_max={exact_max}, cell_size={cell_size}, nprobe={nprobe}")
        self._params = dict(neighbor_threshold=neighbor_threshold, conflict_threshold=conflict_threshold,
                            k=k, exact_max=exact_max, cell_size=cell_size, nprobe=nprobe, seed=seed)

    def expand(self, facts):
        blocks = facts | "Pack" >> beam.ParDo(_Pack(self._spill))
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
