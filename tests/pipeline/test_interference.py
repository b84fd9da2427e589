"""ScoreInterference: LSH candidate search against exact all-pairs on constructed embeddings."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from embedding_fixtures import DIM, at_cosine, planted, unit

from pipeline import interference
from pipeline.interference import (
    ScoreInterference,
    band_keys,
    hyperplanes,
    finalize,
    merge_partials,
    score_bucket,
    split_hyperplanes,
)



def find_interference(embeddings, target_norms, fact_ids, orders, *, neighbor_threshold=0.9,
                      conflict_threshold=0.95, bands=16, bits=8, max_bucket=2000, seed=0):
    """The reference the Beam transform must equal: the same pure functions, composed in-process."""
    emb = np.asarray(embeddings, dtype=np.float32)
    n, dim = emb.shape
    keys = [str(i) for i in range(n)]
    signatures = band_keys(emb, hyperplanes(dim, bands, bits, seed))
    splits = split_hyperplanes(dim, bands, seed)
    accs = [(0.0, {}) for _ in range(n)]
    for band in range(bands):
        buckets: dict[int, list[int]] = {}
        for i, sig in enumerate(signatures[:, band].tolist()):
            buckets.setdefault(sig, []).append(i)
        for idx in buckets.values():
            if len(idx) < 2:
                continue
            scores = score_bucket(emb[idx], [keys[i] for i in idx], [target_norms[i] for i in idx],
                                  [fact_ids[i] for i in idx], [orders[i] for i in idx],
                                  neighbor_threshold=neighbor_threshold, max_bucket=max_bucket,
                                  split_planes=splits[band])
            for key, partial in scores.partials:
                accs[int(key)] = merge_partials(accs[int(key)], partial)
    return [finalize(acc, conflict_threshold) for acc in accs]


def _bucket(emb, **kw):
    """``score_bucket`` over rows of ``emb`` with distinct targets, keys '0'..'n-1'."""
    n = len(emb)
    return score_bucket(np.asarray(emb, dtype=np.float32), [str(i) for i in range(n)],
                        [f"t{i}" for i in range(n)], [f"f{i}" for i in range(n)], list(range(n)), **kw)


def _exact_pairs(emb: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    cos = emb @ emb.T
    i, j = np.nonzero(np.triu(cos >= threshold, k=1))
    return set(zip(i.tolist(), j.tolist()))


def _ids(n: int) -> list[str]:
    return [f"f{i}" for i in range(n)]


def test_hyperplanes_are_seeded_and_signatures_follow_the_sides():
    planes = hyperplanes(DIM, 16, 8, seed=3)
    assert planes.shape == (16, 8, DIM)
    assert np.array_equal(planes, hyperplanes(DIM, 16, 8, seed=3))
    assert not np.array_equal(planes, hyperplanes(DIM, 16, 8, seed=4))
    v = unit(np.random.default_rng(0).standard_normal((1, DIM)))
    keys = band_keys(np.vstack([v, v, -v]), planes)
    assert keys.shape == (3, 16)
    assert np.array_equal(keys[0], keys[1])
    assert np.array_equal(keys[0] ^ keys[2], np.full(16, 255))  # the opposite vector flips every bit


# The config defaults, and the finer buckets the 100k benchmark favours.
@pytest.mark.parametrize("bits, max_bucket", [(8, 2000), (10, 200)])
def test_lsh_finds_95_percent_of_close_pairs(bits, max_bucket):
    emb = planted(2000, 300)
    n = len(emb)
    exact = _exact_pairs(emb, 0.9)
    assert len(exact) >= 300  # the planted pairs, at least
    res = find_interference(emb, _ids(n), _ids(n), list(range(n)), bands=16, bits=bits,
                            max_bucket=max_bucket)
    # A fact's neighbours are all exact pairs it belongs to that the search found.
    found = sum(r["neighbors"] for r in res) / 2
    assert found / len(exact) >= 0.95
    # Where a pair was found, interference is its exact cosine (targets all differ here).
    cos = emb @ emb.T
    np.fill_diagonal(cos, -1.0)
    for r, true_max in zip(res, cos.max(axis=1)):
        if r["neighbors"]:
            assert r["interference"] == pytest.approx(true_max, abs=1e-5)


def test_conflict_is_reported_on_both_and_only_the_later_is_flagged():
    rng = np.random.default_rng(2)
    emb = unit(rng.standard_normal((50, DIM)))
    emb[7] = emb[3]  # the same prompt twice...
    targets = [f"t{i}" for i in range(50)]  # ...with different answers
    orders = list(range(50))
    res = find_interference(emb, targets, _ids(50), orders)
    assert res[3]["conflicts_with"] == ["f7"] and res[7]["conflicts_with"] == ["f3"]
    assert res[3]["conflict_with_earlier"] is False and res[7]["conflict_with_earlier"] is True
    assert res[3]["interference"] == pytest.approx(1.0, abs=1e-5)
    # Swap who comes first: the flag follows order, not position.
    orders[3], orders[7] = 9, 1
    res = find_interference(emb, targets, _ids(50), orders)
    assert res[3]["conflict_with_earlier"] is True and res[7]["conflict_with_earlier"] is False


def test_same_target_is_a_neighbour_but_never_a_conflict_nor_interference():
    rng = np.random.default_rng(4)
    emb = unit(rng.standard_normal((40, DIM)))
    emb[1] = emb[0]
    emb[2] = at_cosine(rng, emb[0], 0.93)
    targets = ["paris"] * 2 + [f"t{i}" for i in range(2, 40)]
    res = find_interference(emb, targets, _ids(40), list(range(40)))
    assert res[0]["neighbors"] == 2  # fact 1 (same target) and fact 2
    assert res[0]["conflicts_with"] == [] and res[1]["conflicts_with"] == []
    # The identical prompt has the same answer: interference is the 0.93 one with another answer.
    assert res[0]["interference"] == pytest.approx(0.93, abs=1e-4)
    assert res[5]["neighbors"] == 0 and res[5]["conflicts_with"] == []


def test_oversized_bucket_is_split_and_keeps_its_duplicates():
    rng = np.random.default_rng(5)
    emb = unit(rng.standard_normal((400, DIM)))
    emb[1::2] = emb[0::2]  # 200 duplicate pairs: no split hyperplane can separate them
    planes = split_hyperplanes(DIM, bands=1, seed=0)[0]
    scores = _bucket(emb, neighbor_threshold=0.9, max_bucket=50, split_planes=planes)
    assert scores.split
    assert scores.pairs_scored <= 400 * 50 // 2  # parts of at most 50, not 400² / 2
    found = {key: [e[0] for e in partial[1]] for key, partial in scores.partials}
    for i in range(0, 400, 2):
        assert found[str(i)] == [f"f{i + 1}"] and found[str(i + 1)] == [f"f{i}"]
    # Unsplit, the same bucket costs every pair.
    whole = _bucket(emb, neighbor_threshold=0.9, max_bucket=1000, split_planes=planes)
    assert not whole.split and whole.pairs_scored == 400 * 399 // 2


def test_unsplittable_bucket_is_scored_whole_at_the_depth_limit():
    v = unit(np.random.default_rng(6).standard_normal(DIM))
    planes = split_hyperplanes(DIM, bands=1, seed=0)[0]
    scores = _bucket(np.stack([v] * 30), neighbor_threshold=0.9, max_bucket=5, split_planes=planes)
    assert scores.pairs_scored == 30 * 29 // 2
    assert all(len(partial[1]) == 29 for _, partial in scores.partials)


def test_recall_holds_when_every_bucket_must_be_split():
    # One bit per band makes buckets of ~1,150; max_bucket=100 forces ~4 split levels in each.
    emb = planted(2000, 150, seed=7)
    n = len(emb)
    exact = _exact_pairs(emb, 0.9)
    res = find_interference(emb, _ids(n), _ids(n), list(range(n)), bands=16, bits=1, max_bucket=100)
    assert sum(r["neighbors"] for r in res) / 2 / len(exact) >= 0.95


def test_partials_merge_once_per_pair_whatever_the_grouping():
    combine = interference._MergePartials(conflict_threshold=0.95)
    band_a = (0.97, (("f2", 0.97, True, True), ("f3", 0.91, False, False)))
    band_b = (0.97, (("f2", 0.97, True, True),))  # the same pair, seen in another band
    band_c = (0.60, ())
    one = combine.add_input(combine.add_input(combine.create_accumulator(), band_a), band_c)
    two = combine.add_input(combine.create_accumulator(), band_b)
    for acc in (combine.merge_accumulators([one, two]), combine.merge_accumulators([two, one])):
        assert combine.extract_output(acc) == {
            "interference": 0.97, "neighbors": 2, "conflicts_with": ["f2"],
            "conflict_with_earlier": True}


@pytest.mark.parametrize("flush_keys", [500_000, 7])
def test_beam_transform_matches_the_pure_function_with_one_output_per_key(flush_keys, monkeypatch):
    # flush_keys=7: partials leave the scoring worker mid-bundle, several per fact, and must merge.
    monkeypatch.setattr(interference, "_FLUSH_KEYS", flush_keys)
    emb = planted(300, 40, seed=8)
    emb[10] = emb[11]  # a conflict: same prompt, different targets
    n = len(emb)
    targets = [f"t{i % 350}" for i in range(n)]
    orders = list(range(n))[::-1]
    expected = find_interference(emb, targets, _ids(n), orders, max_bucket=8)
    facts = [(f"k{i}", {"embedding": emb[i], "target_norm": targets[i], "fact_id": f"f{i}",
                        "order": orders[i]}) for i in range(n)]

    def check(actual):
        keys = [k for k, _ in actual]
        assert sorted(keys) == sorted(f"k{i}" for i in range(n))  # one each, none missing
        for key, got in actual:
            want = expected[int(key[1:])]
            assert got["interference"] == pytest.approx(want["interference"], abs=1e-5)
            assert {k: got[k] for k in ("neighbors", "conflicts_with", "conflict_with_earlier")} == \
                {k: want[k] for k in ("neighbors", "conflicts_with", "conflict_with_earlier")}
        by_key = dict(actual)
        assert by_key["k10"]["conflicts_with"] == ["f11"] and by_key["k10"]["conflict_with_earlier"]

    p = BeamTestPipeline()
    out = p | beam.Create(facts) | ScoreInterference(
        neighbor_threshold=0.9, conflict_threshold=0.95, bands=16, bits=8, max_bucket=8, seed=0)
    assert_that(out, check)
    result = p.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in
                result.metrics().query(MetricsFilter().with_namespace("beacon"))["counters"]}
    assert counters["interference_pairs_scored"] > 0
    assert counters["interference_buckets_split"] > 0  # max_bucket=8 forces splits
    # Merged per bundle: one partial per fact, unless the cap flushed them early.
    assert (counters["interference_partials_emitted"] > n) == (flush_keys < n)


def test_beam_transform_outputs_zeros_for_facts_without_candidates():
    # One shared target and no close pairs: no bucket has anything to report for anyone.
    emb = unit(np.random.default_rng(9).standard_normal((30, DIM)))
    facts = [(f"k{i}", {"embedding": emb[i], "target_norm": "same", "fact_id": f"f{i}", "order": i})
             for i in range(30)]
    zeros = {"interference": 0.0, "neighbors": 0, "conflicts_with": [], "conflict_with_earlier": False}
    with BeamTestPipeline() as p:
        out = p | beam.Create(facts) | ScoreInterference()
        assert_that(out, equal_to([(f"k{i}", zeros) for i in range(30)]))


@pytest.mark.parametrize("kwargs", [
    {"neighbor_threshold": 0.96, "conflict_threshold": 0.95},
    {"bits": 31},
    {"max_bucket": 1},
    {"payload": "int8"},
])
def test_impossible_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        ScoreInterference(**kwargs)
