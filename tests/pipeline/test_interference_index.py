"""ScoreInterferenceIndex (faiss): against exact all-pairs numpy on constructed embeddings."""

from __future__ import annotations

from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that
from embedding_fixtures import DIM, at_cosine, planted, unit

import pipeline.interference_index as interference_index
from pipeline.interference_index import ScoreInterferenceIndex, build_index, score_all, score_rows


def _planted(n_random: int, n_pairs: int, seed: int = 1) -> np.ndarray:
    return planted(n_random, n_pairs, seed, low=0.905)  # off 0.9: float32 against float64


def _brute_force(emb, targets, fact_ids, orders, neighbor_threshold=0.9, conflict_threshold=0.95):
    """What an exact stage gives: every pair, from the full cosine matrix."""
    cos = emb.astype(np.float64) @ emb.T.astype(np.float64)
    np.fill_diagonal(cos, -np.inf)
    out = []
    for i in range(len(emb)):
        differ = np.array([t != targets[i] for t in targets])
        best = max(0.0, float(np.where(differ, cos[i], -np.inf).max()))
        close = np.nonzero(cos[i] >= neighbor_threshold)[0]
        conflicts = sorted(fact_ids[j] for j in close if differ[j] and cos[i, j] >= conflict_threshold)
        out.append({"interference": best, "neighbors": len(close), "conflicts_with": conflicts,
                    "conflict_with_earlier": any((orders[j], fact_ids[j]) < (orders[i], fact_ids[i])
                                                 for j in close if fact_ids[j] in conflicts)})
    return out


def _ids(n: int) -> list[str]:
    return [f"f{i:05d}" for i in range(n)]


def _same(got: dict, want: dict) -> None:
    assert got["interference"] == pytest.approx(want["interference"], abs=1e-5)
    assert {k: got[k] for k in ("neighbors", "conflicts_with", "conflict_with_earlier")} == \
        {k: want[k] for k in ("neighbors", "conflicts_with", "conflict_with_earlier")}


def test_flat_index_equals_exact_all_pairs_including_crowded_prompts():
    rng = np.random.default_rng(3)
    emb = _planted(400, 40)
    # 25 copies of one prompt (more than k): a range search must find them all.
    emb[:25] = emb[0]
    emb[25] = at_cosine(rng, emb[0], 0.93)
    emb[30] = emb[31]  # a conflict: same prompt, different targets
    n = len(emb)
    targets = ["paris"] * 25 + [f"t{i % 300}" for i in range(25, n)]
    orders = list(range(n))[::-1]
    got, work = score_all(emb, targets, _ids(n), orders, neighbor_threshold=0.9, conflict_threshold=0.95, k=8)
    for g, w in zip(got, _brute_force(emb, targets, _ids(n), orders)):
        _same(g, w)
    assert got[0]["neighbors"] == 25 and got[0]["interference"] == pytest.approx(0.93, abs=1e-5)
    assert work["range_searched"] >= 25
    assert got[31]["conflicts_with"] == ["f00030"] and got[31]["conflict_with_earlier"] is False
    assert got[30]["conflict_with_earlier"] is True  # orders run backwards: 31 comes first


def test_interference_below_the_threshold_is_the_exact_best_other_target():
    emb = unit(np.random.default_rng(4).standard_normal((300, DIM)))
    n = len(emb)
    got, _ = score_all(emb, _ids(n), _ids(n), list(range(n)), neighbor_threshold=0.9, conflict_threshold=0.95)
    want = _brute_force(emb, _ids(n), _ids(n), list(range(n)))
    assert all(w["neighbors"] == 0 for w in want)  # random vectors: nothing near, all below 0.9
    for g, w in zip(got, want):
        _same(g, w)


def test_ivf_index_finds_the_close_pairs_and_every_conflict():
    emb = _planted(3000, 200, seed=5)
    n = len(emb)
    targets = _ids(n)
    got, _ = score_all(emb, targets, _ids(n), list(range(n)), neighbor_threshold=0.9, conflict_threshold=0.95,
                       exact_max=0, cell_size=50, nprobe=8)  # 68 cells, 8 probed
    want = _brute_force(emb, targets, _ids(n), list(range(n)))
    found = sum(g["neighbors"] for g in got) / 2
    assert found / (sum(w["neighbors"] for w in want) / 2) >= 0.99
    conflicts = {(i, c) for i, w in enumerate(want) for c in w["conflicts_with"]}
    assert len(conflicts) > 100 and {(i, c) for i, g in enumerate(got) for c in g["conflicts_with"]} == conflicts
    # What it finds is scored exactly: no pair above the threshold that is not one.
    for g, w in zip(got, want):
        assert g["neighbors"] <= w["neighbors"]
        assert g["interference"] <= w["interference"] + 1e-5


def test_many_cells_are_trained_and_routed_in_two_levels_and_still_find_the_close_pairs():
    """Above TWO_LEVEL_MIN cells the centroids come from two k-means levels and each fact's cells from
    the centroids of its nearest groups: the close pairs and the conflicts are still found."""
    # Topics, as prompts have them (uniform random vectors have no structure for either level to find):
    # facts at cosine 0.6-0.9 to one of 100 topic centres, then pairs planted at 0.905-0.99.
    rng = np.random.default_rng(7)
    centres = unit(rng.standard_normal((100, DIM)))
    emb = np.stack([at_cosine(rng, centres[t], c) for t, c in zip(rng.integers(0, 100, 6600),
                                                                     rng.uniform(0.6, 0.9, 6600))])
    for k, c in enumerate(np.linspace(0.905, 0.99, 300)):
        emb[6000 + 2 * k + 1] = at_cosine(rng, emb[6000 + 2 * k], c)
    # A crowd: 24 facts at ~0.97 to each other, more than k=16 neighbours each, so a radius search (and
    # fewer than the 8 probed cells of 4 hold: an IVF radius search sees only its probed cells).
    crowd = unit(rng.standard_normal(DIM))
    emb = np.concatenate([emb, np.stack([at_cosine(rng, crowd, 0.985) for _ in range(24)])])
    n = len(emb)
    built = build_index(emb, exact_max=0, cell_size=4, nprobe=8, seed=0)
    assert built.index.nlist >= interference_index.TWO_LEVEL_MIN
    assert built.cells.shape == (n, 8) and (built.cells >= 0).all() and (built.cells < built.index.nlist).all()
    got, work = score_all(emb, _ids(n), _ids(n), list(range(n)), neighbor_threshold=0.9, conflict_threshold=0.95,
                          exact_max=0, cell_size=4, nprobe=8)
    cos = emb @ emb.T
    np.fill_diagonal(cos, -1.0)
    assert work["range_searched"] >= 24
    assert [g["neighbors"] for g in got[-24:]] == [int((cos[i] >= 0.9).sum()) for i in range(n - 24, n)]
    close = int((cos >= 0.9).sum()) // 2
    assert close >= 300 and sum(g["neighbors"] for g in got) / 2 >= 0.99 * close
    want = {(i, f"f{j:05d}") for i, j in zip(*np.nonzero(cos >= 0.95))}
    assert len(want) > 100
    assert len({(i, c) for i, g in enumerate(got) for c in g["conflicts_with"]} & want) >= 0.999 * len(want)


def test_ivf_scores_do_not_depend_on_arrival_order():
    emb = _planted(1500, 50, seed=6)
    n = len(emb)
    facts = [(f"k{i:05d}", {"embedding": emb[i], "target_norm": f"t{i % 700}", "fact_id": f"f{i}", "order": i})
             for i in range(n)]
    params = dict(neighbor_threshold=0.9, conflict_threshold=0.95, exact_max=0, cell_size=40, nprobe=4)
    a = score_rows(facts, **params)
    b = score_rows(list(reversed(facts)), **params)
    assert a == b


def test_beam_transform_gives_one_output_per_key_equal_to_the_function():
    emb = _planted(300, 40, seed=8)
    emb[10] = emb[11]
    n = len(emb)
    facts = [(f"k{i}", {"embedding": emb[i], "target_norm": f"t{i % 350}", "fact_id": f"f{i}",
                        "order": n - i}) for i in range(n)]
    expected = score_rows(facts, neighbor_threshold=0.9, conflict_threshold=0.95)

    def check(actual):
        assert sorted(k for k, _ in actual) == sorted(expected)  # one each, none missing
        for key, got in actual:
            assert got == expected[key]
        assert dict(actual)["k10"]["conflicts_with"] == ["f11"] and dict(actual)["k10"]["conflict_with_earlier"]

    p = BeamTestPipeline()
    assert_that(p | beam.Create(facts) | ScoreInterferenceIndex(), check)
    result = p.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in
                result.metrics().query(MetricsFilter().with_namespace("beacon"))["counters"]}
    assert counters["interference_facts_indexed"] == n


def test_ivf_neighbours_cell_by_cell_are_the_index_search():
    """The cell-by-cell kNN (one BLAS product per cell) finds what faiss's own search of the same cells
    finds: the same neighbours, the same cosines to float precision."""
    emb = _planted(2000, 150, seed=9)
    built = build_index(emb, exact_max=0, cell_size=40, nprobe=4, seed=0)
    cos, ids = interference_index._knn_by_cell(built.index, built.cells, 9, built.index.reconstruct_batch)
    want_cos, want_ids = built.index.search(emb, 9)
    assert np.abs(cos - want_cos).max() < 1e-5
    distinct = [r for r in range(len(emb)) if len(set(np.round(want_cos[r], 4).tolist())) == 9]
    assert len(distinct) > 1500  # rows with no ties: the same neighbours, in the same order
    assert (ids[distinct] == want_ids[distinct]).all()


def test_beam_transform_through_ivf_over_many_blocks_and_chunks(monkeypatch):
    """Blocks packed small and added to the index a few rows at a time, in whatever order the blocks
    arrive: the same scores as the function over one matrix."""
    monkeypatch.setattr(interference_index, "PACK_ROWS", 97)
    monkeypatch.setattr(interference_index, "ADD_BLOCK", 250)
    emb = _planted(1200, 80, seed=10)
    emb[5] = emb[6]
    n = len(emb)
    facts = [(f"k{i:05d}", {"embedding": emb[i], "target_norm": f"t{i % 500}", "fact_id": f"f{i}",
                            "order": i}) for i in range(n)]
    params = dict(neighbor_threshold=0.9, conflict_threshold=0.95, exact_max=0, cell_size=40, nprobe=4)
    expected = score_rows(facts, **params)
    assert sum(s["neighbors"] for s in expected.values()) > 100

    def check(actual):
        assert len(actual) == n and dict(actual) == expected

    p = BeamTestPipeline()
    assert_that(p | beam.Create(facts[::-1]) | ScoreInterferenceIndex(**params), check)
    p.run().wait_until_finish()


@pytest.mark.parametrize("exact_max", [50_000, 0])  # flat, IVF
def test_blocks_handed_over_through_a_spill_folder_give_the_same_scores(monkeypatch, tmp_path, exact_max):
    monkeypatch.setattr(interference_index, "PACK_ROWS", 64)
    emb = _planted(400, 40, seed=11)
    n = len(emb)
    facts = [(f"k{i:05d}", {"embedding": emb[i], "target_norm": f"t{i % 300}", "fact_id": f"f{i}", "order": i})
             for i in range(n)]
    params = dict(neighbor_threshold=0.9, conflict_threshold=0.95, exact_max=exact_max, cell_size=20, nprobe=4)
    expected = score_rows(facts, **params)
    written = []
    real_dump = interference_index.pickle.dump

    def counting_dump(obj, f, **kwargs):
        written.append(f.name)
        return real_dump(obj, f, **kwargs)

    monkeypatch.setattr(interference_index.pickle, "dump", counting_dump)

    def check(actual):
        assert dict(actual) == expected

    p = BeamTestPipeline()
    assert_that(p | beam.Create(facts) | ScoreInterferenceIndex(**params, spill_dir=str(tmp_path)), check)
    p.run().wait_until_finish()
    assert len(written) >= n // 64 and sorted(written) == sorted(str(f) for f in tmp_path.iterdir())


def test_a_spilled_block_that_is_gone_is_named():
    with pytest.raises(RuntimeError, match="block-x.pkl is gone"):
        interference_index._load_block("/nonexistent/block-x.pkl")


@pytest.mark.parametrize(("index", "flags", "spills"), [
    ("faiss", [], True),
    ("faiss", ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"], True),
    ("faiss", ["--runner=DataflowRunner"], False),
    ("lsh", [], False),
])
def test_the_spill_folder_only_for_the_faiss_stage_on_runners_of_this_machine(tmp_path, index, flags, spills):
    from pipeline.config import CurateConfig
    from pipeline.run import _spill_folder, pipeline_options

    folder = _spill_folder(CurateConfig(interference_index=index), pipeline_options(flags), tmp_path / "out")
    assert (folder is not None) == spills
    if spills:
        assert Path(folder).parent == tmp_path and Path(folder).name.startswith(".out.interference-")


def test_a_single_fact_has_no_interference():
    got, _ = score_all(unit(np.ones((1, DIM))), ["a"], ["f0"], [0], neighbor_threshold=0.9,
                       conflict_threshold=0.95)
    assert got == [{"interference": 0.0, "neighbors": 0, "conflicts_with": [], "conflict_with_earlier": False}]


@pytest.mark.parametrize("kwargs", [
    {"neighbor_threshold": 0.96, "conflict_threshold": 0.95},
    {"k": 0},
    {"cell_size": 0},
    {"nprobe": 0},
])
def test_impossible_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        ScoreInterferenceIndex(**kwargs)


@pytest.mark.parametrize("args, warned", [
    ([], False),
    (["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"], False),
    (["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"], False),
    (["--runner=PortableRunner", "--job_endpoint=flink:8099"], True),
    (["--runner=DataflowRunner"], True),
])
def test_a_cluster_runner_with_the_one_worker_index_gets_a_warning(args, warned, caplog):
    from pipeline.config import CurateConfig
    from pipeline.run import _note_one_worker_stage, pipeline_options

    with caplog.at_level("WARNING", logger="pipeline.run"):
        _note_one_worker_stage(CurateConfig(), pipeline_options(args))
        _note_one_worker_stage(CurateConfig(interference_index="lsh"), pipeline_options(args))
    assert [("--interference-index lsh" in r.getMessage()) for r in caplog.records] == ([True] if warned else [])
