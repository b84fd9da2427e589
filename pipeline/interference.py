"""ScoreInterference: how close each fact's prompt is to the prompts of other facts, without all-pairs.

Exact all-pairs cosine is O(n²). Candidates come instead from random-hyperplane LSH (SimHash): each
of ``bands`` bands maps a prompt embedding to ``bits`` sign bits, facts with the same band signature
share a bucket, and only pairs inside a bucket are scored, exactly. Two prompts at cosine c agree on
one bit with probability p = 1 − arccos(c)/π, so they share at least one bucket with probability
1 − (1 − p^bits)^bands: 0.996 at c = 0.90 and 0.9999 at c = 0.95 with 16 bands of 8 bits.

A bucket above ``max_bucket`` is split with extra seeded hyperplanes (one per level, per band) until
each part is under the cap, so the work stays about n·bands·max_bucket pair scores however skewed the
data. Each split level multiplies a close pair's chance in that band by p (≈0.86 at c = 0.9); the
other bands make up for it. At ``MAX_SPLIT_DEPTH`` a part is scored exactly whatever its size
(identical prompts cannot be split).

The pure functions (``hyperplanes``, ``band_keys``, ``score_bucket``, ``merge_partials``, ``finalize``)
hold the logic; the Beam transform only moves data between them (tests/pipeline/test_interference.py
composes them in-process as the reference the transform must equal).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from pipeline import METRICS_NS

MAX_SPLIT_DEPTH = 16
_ROW_BLOCK = 1024  # rows of a bucket scored at once: bounds memory for huge unsplittable buckets
# Facts whose merged partials a scoring worker holds before emitting them (~200 bytes each). Below
# the number of facts a bundle touches, the merge saves little: at 100k facts a 50k cap still
# emitted 1.2M partials.
_FLUSH_KEYS = 500_000

# A member's partial result from one bucket: (best cosine to a different target, floored at 0;
# ((fact_id, cos, targets_differ, is_earlier), ...) for the other members at or above the
# neighbour threshold). Plain tuples so Beam encodes them without pickling.
Partial = tuple[float, tuple[tuple[str, float, bool, bool], ...]]
_EMPTY: Partial = (0.0, ())


class BucketScores(NamedTuple):
    """What ``score_bucket`` returns: per-member partials and what the work cost."""

    partials: list[tuple[str, Partial]]
    pairs_scored: int
    split: bool  # the bucket was over max_bucket and was split


def hyperplanes(dim: int, bands: int, bits: int, seed: int) -> np.ndarray:
    """Random Gaussian hyperplanes, shape (bands, bits, dim) float32, the same for the same seed."""
    rng = np.random.default_rng([seed, 0])
    return rng.standard_normal((bands, bits, dim), dtype=np.float32)


def split_hyperplanes(dim: int, bands: int, seed: int, depth: int = MAX_SPLIT_DEPTH) -> np.ndarray:
    """Extra hyperplanes that split oversized buckets, shape (bands, depth, dim) float32.

    One set per band: sharing them across bands would separate the same close pair in every band.
    """
    rng = np.random.default_rng([seed, 1])
    return rng.standard_normal((bands, depth, dim), dtype=np.float32)


def band_keys(embeddings: np.ndarray, planes: np.ndarray) -> np.ndarray:
    """Band signatures, shape (n, bands) int64: bit b of column k is the side of plane (k, b)."""
    bands, bits, dim = planes.shape
    emb = np.asarray(embeddings, dtype=np.float32).reshape(-1, dim)
    sides = (emb @ planes.reshape(bands * bits, dim).T > 0).reshape(len(emb), bands, bits)
    return sides.astype(np.int64) @ (np.int64(1) << np.arange(bits, dtype=np.int64))


def score_bucket(emb: np.ndarray, keys: list[str], targets: list[str], fact_ids: list[str],
                 orders: list[int], *, neighbor_threshold: float, max_bucket: int,
                 split_planes: np.ndarray | None) -> BucketScores:
    """Score every pair inside one bucket exactly; return a partial for each member that has one.

    Args:
        emb: (n, d) float32 L2-normalised prompt embeddings of the bucket's facts; ``keys``,
            ``targets`` (normalised), ``fact_ids`` and ``orders`` are theirs, row by row.
        neighbor_threshold: pairs at or above this cosine are listed in the partials.
        max_bucket: a bucket larger than this is split with ``split_planes`` (depth, dim) first.
        split_planes: this band's split hyperplanes; None scores the bucket whole.
    """
    index: dict[str, int] = {}
    codes = np.fromiter((index.setdefault(t, len(index)) for t in targets), np.int64, len(targets))
    leaves = _split(emb, max_bucket, split_planes)
    partials: list[tuple[str, Partial]] = []
    pairs = 0
    for leaf in leaves:
        s = len(leaf)
        if s < 2:
            continue
        pairs += s * (s - 1) // 2
        e, c, members = emb[leaf], codes[leaf], leaf.tolist()
        for r0 in range(0, s, _ROW_BLOCK):
            r1 = min(s, r0 + _ROW_BLOCK)
            cos = e[r0:r1] @ e.T
            cos[np.arange(r1 - r0), np.arange(r0, r1)] = -np.inf  # a fact is not its own neighbour
            best, rows, cols = _block_scores(cos, c[r0:r1], c, neighbor_threshold)
            hits: dict[int, list[tuple[str, float, bool, bool]]] = {}
            for r, col in zip(rows.tolist(), cols.tolist()):
                i, j = members[r0 + r], members[col]
                earlier = (orders[j], fact_ids[j]) < (orders[i], fact_ids[i])
                hits.setdefault(r, []).append(
                    (fact_ids[j], float(cos[r, col]), targets[i] != targets[j], earlier))
            # Python floats and lists from here: this loop runs once per fact and band.
            for r, b in enumerate(best.tolist()):
                if b > 0.0 or r in hits:
                    partials.append((keys[members[r0 + r]], (b, tuple(hits.get(r, ())))))
    return BucketScores(partials, pairs, len(leaves) > 1)


def _block_scores(cos: np.ndarray, row_codes: np.ndarray, col_codes: np.ndarray,
                  threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of a cosine block (self entries at -inf): the best cosine to another target,
    floored at 0, and the (row, col) pairs at or above ``threshold``.

    One pass over the block in the common case (this is where the stage spends its arithmetic): a
    row's nearest usually has another target, and most rows have nothing above the threshold, so
    only the exceptions are looked at again.
    """
    nearest = cos.argmax(axis=1)
    top = cos[np.arange(len(cos)), nearest]
    best = top.copy()
    same = col_codes[nearest] == row_codes
    if same.any():
        masked = cos[same]  # a copy: the mask must not touch the hits below
        masked[row_codes[same][:, None] == col_codes[None, :]] = -np.inf
        best[same] = masked.max(axis=1)
    hot = np.nonzero(top >= threshold)[0]
    rows, cols = np.nonzero(cos[hot] >= threshold)
    return np.maximum(best, 0.0), hot[rows], cols


def _split(emb: np.ndarray, max_bucket: int, planes: np.ndarray | None) -> list[np.ndarray]:
    """Index sets of at most max_bucket rows (unless the depth runs out), by sides of ``planes``."""
    leaves, stack = [], [(np.arange(len(emb)), 0)]
    while stack:
        idx, depth = stack.pop()
        if len(idx) <= max_bucket or planes is None or depth >= len(planes):
            leaves.append(idx)
            continue
        side = emb[idx] @ planes[depth] > 0
        # A part that does not shrink (all on one side) just goes one level deeper.
        stack.extend((part, depth + 1) for part in (idx[side], idx[~side]) if len(part))
    return leaves


def merge_partials(acc: tuple[float, dict], partial: Partial) -> tuple[float, dict]:
    """Fold one partial into (best, {fact_id: (cos, differ, earlier)}); a pair seen in several
    bands counts once."""
    best, entries = acc
    for fact_id, cos, differ, earlier in partial[1]:
        entries[fact_id] = (cos, differ, earlier)
    return max(best, partial[0]), entries


def finalize(acc: tuple[float, dict], conflict_threshold: float) -> dict[str, Any]:
    """A fact's scores from its merged partials.

    ``interference`` is the largest cosine (floored at 0) to a candidate with a different normalised
    target, 0.0 when none was found: exact with high probability when the true maximum is at or
    above the neighbour threshold, otherwise a lower bound (pairs far apart rarely share a bucket).
    ``neighbors`` counts other facts at or above ``neighbor_threshold`` (any target);
    ``conflicts_with`` lists, sorted, the fact_ids at or above ``conflict_threshold`` with a different
    target; ``conflict_with_earlier`` says one of them comes first by (order, fact_id), so under
    'keep_first' exactly the earliest of a conflict survives.
    """
    best, entries = acc
    conflicts = sorted(f for f, (cos, differ, _) in entries.items()
                       if differ and cos >= conflict_threshold)
    return {
        "interference": float(best),
        "neighbors": len(entries),
        "conflicts_with": conflicts,
        "conflict_with_earlier": any(entries[f][2] for f in conflicts),
    }


# --- Beam -----------------------------------------------------------------------------------------

class _AssignBands(beam.DoFn):
    """(key, fact) -> (band key, compact payload) once per band."""

    def __init__(self, bands: int, bits: int, seed: int, payload: str):
        self._bands, self._bits, self._seed, self._payload = bands, bits, seed, payload

    def setup(self):
        # Planes depend on the embedding size, known at the first element: made once per
        # worker and dimension, never per element.
        self._planes: dict[int, np.ndarray] = {}

    def process(self, element):
        key, fact = element
        emb = np.ascontiguousarray(fact["embedding"], dtype=np.float32).ravel()
        dim = emb.shape[0]
        if dim not in self._planes:
            self._planes[dim] = hyperplanes(dim, self._bands, self._bits, self._seed)
        signature = band_keys(emb, self._planes[dim])[0].tolist()
        # Raw bytes: n·bands of these are shuffled, so no pickled arrays or lists.
        blob = emb.astype(self._payload, copy=False).tobytes()
        payload = (key, blob, fact["target_norm"], fact["fact_id"], int(fact["order"]))
        for band, sig in enumerate(signature):
            yield (band << self._bits) | sig, payload


class _ScoreBuckets(beam.DoFn):
    """(band key, payloads) -> (key, partial), merged over the bundle for each fact."""

    def __init__(self, bits: int, bands: int, seed: int, neighbor_threshold: float, max_bucket: int,
                 payload: str):
        self._bits, self._bands, self._seed, self._payload = bits, bands, seed, payload
        self._threshold, self._max_bucket = neighbor_threshold, max_bucket
        self._pairs = Metrics.counter(METRICS_NS, "interference_pairs_scored")
        self._split = Metrics.counter(METRICS_NS, "interference_buckets_split")
        self._buckets = Metrics.counter(METRICS_NS, "interference_buckets_scored")
        self._emitted = Metrics.counter(METRICS_NS, "interference_partials_emitted")

    def setup(self):
        self._split_planes: dict[int, np.ndarray] = {}

    def start_bundle(self):
        # A fact meets up to `bands` buckets; merging here, not in the runner, cuts the partials
        # shuffled to the final combine from ~n·bands to ~n per bundle (the runner does not lift
        # a combine behind a Flatten).
        self._accs: dict[str, tuple[float, dict]] = {}

    def process(self, element):
        band_key, payloads = element
        payloads = list(payloads)
        if len(payloads) < 2:
            return
        keys, blobs, targets, fact_ids, orders = map(list, zip(*payloads))
        emb = np.frombuffer(b"".join(blobs), dtype=self._payload).reshape(len(keys), -1)
        emb = emb.astype(np.float32, copy=False)
        dim = emb.shape[1]
        if dim not in self._split_planes:
            self._split_planes[dim] = split_hyperplanes(dim, self._bands, self._seed)
        scores = score_bucket(emb, keys, targets, fact_ids, orders,
                              neighbor_threshold=self._threshold, max_bucket=self._max_bucket,
                              split_planes=self._split_planes[dim][band_key >> self._bits])
        self._buckets.inc()
        self._pairs.inc(scores.pairs_scored)
        if scores.split:
            self._split.inc()
        for key, partial in scores.partials:
            self._accs[key] = merge_partials(self._accs.get(key) or (0.0, {}), partial)
        if len(self._accs) >= _FLUSH_KEYS:
            yield from self._flush()

    def finish_bundle(self):
        for kv in self._flush():
            yield GlobalWindows.windowed_value(kv)  # batch scoring runs in the global window

    def _flush(self):
        accs, self._accs = self._accs, {}
        self._emitted.inc(len(accs))
        for key, (best, entries) in accs.items():
            yield key, (best, tuple((f, *e) for f, e in entries.items()))


class _MergePartials(beam.CombineFn):
    """All partials of one fact -> its scores."""

    def __init__(self, conflict_threshold: float):
        self._conflict_threshold = conflict_threshold

    def create_accumulator(self):
        return (0.0, {})

    def add_input(self, acc, partial):
        return merge_partials(acc, partial)

    def merge_accumulators(self, accs):
        best, entries = 0.0, {}
        for b, e in accs:
            best = max(best, b)
            entries.update(e)
        return best, entries

    def extract_output(self, acc):
        return finalize(acc, self._conflict_threshold)


class ScoreInterference(beam.PTransform):
    """(key, {'embedding', 'target_norm', 'fact_id', 'order'}) -> (key, interference scores).

    Outputs exactly one ``{'interference', 'neighbors', 'conflicts_with',
    'conflict_with_earlier'}`` per input key (zeros for facts without candidates); the semantics
    are described in ``finalize``. Embeddings must be float32 and L2-normalised; keys unique.

    ``payload`` is how embeddings travel through the shuffle (n·bands copies): 'float16' halves
    the bytes, and cosines then carry an error of about 1e-4, so pairs that close to a threshold
    may fall on either side.
    """

    def __init__(self, *, neighbor_threshold: float = 0.9, conflict_threshold: float = 0.95,
                 bands: int = 16, bits: int = 8, max_bucket: int = 2000, seed: int = 0,
                 payload: Literal["float32", "float16"] = "float32"):
        super().__init__()
        if not -1.0 <= neighbor_threshold <= conflict_threshold <= 1.0:
            raise ValueError(f"need -1 <= neighbor_threshold ({neighbor_threshold}) <= "
                             f"conflict_threshold ({conflict_threshold}) <= 1")
        if bands < 1 or not 1 <= bits <= 30 or max_bucket < 2:
            raise ValueError(f"need bands >= 1, 1 <= bits <= 30, max_bucket >= 2; got bands={bands}, "
                             f"bits={bits}, max_bucket={max_bucket}")
        if payload not in ("float32", "float16"):
            raise ValueError(f"payload must be 'float32' or 'float16', got {payload!r}")
        self._neighbor_threshold, self._conflict_threshold = neighbor_threshold, conflict_threshold
        self._payload = payload
        self._bands, self._bits, self._max_bucket, self._seed = bands, bits, max_bucket, seed

    def expand(self, facts):
        assign = beam.ParDo(_AssignBands(self._bands, self._bits, self._seed, self._payload))
        partials = (
            facts
            # Typed output: a compact tuple coder for the n·bands shuffled elements.
            | "AssignBands" >> assign.with_output_types(tuple[int, tuple[str, bytes, str, str, int]])
            | "GroupBuckets" >> beam.GroupByKey()
            | "ScoreBuckets" >> beam.ParDo(_ScoreBuckets(
                self._bits, self._bands, self._seed, self._neighbor_threshold, self._max_bucket,
                self._payload)))
        # Every input key gets an empty partial, so facts alone in all their buckets still come out.
        every_fact = facts | "EveryFact" >> beam.Map(lambda kv: (kv[0], _EMPTY))
        return ((every_fact, partials)
                | "FlattenPartials" >> beam.Flatten()
                | "MergePerFact" >> beam.CombinePerKey(_MergePartials(self._conflict_threshold)))

