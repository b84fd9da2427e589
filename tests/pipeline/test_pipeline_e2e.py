"""One real curation run end to end: the bundled models, Beam's FnApiRunner, Parquet, the manifest."""

import json
import re
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from pipeline.config import CurateConfig
from pipeline.run import curate
from schemas import REJECTED_SCHEMA, SCORED_SCHEMA, Manifest
from schemas.manifest import QUANTILES, quantile_label

FIXTURE = Path(__file__).parents[1] / "fixtures" / "mini_facts.jsonl"
pytestmark = pytest.mark.slow


# ``curated`` (conftest.py at the root): FIXTURE curated once through the CLI with --probe-batch-size 4.


def _rows(out: Path) -> dict[str, dict]:
    table = pq.read_table(out / "scored", schema=SCORED_SCHEMA)
    return {r["fact_id"]: r for r in table.to_pylist()}


def test_layout_on_disk_and_explicit_schemas(curated):
    assert sorted(p.name for p in curated.iterdir()) == ["manifest.json", "rejected", "scored"]
    assert pq.read_schema(next((curated / "scored").glob("*.parquet"))).remove_metadata() == SCORED_SCHEMA
    assert pq.read_schema(next((curated / "rejected").glob("*.parquet"))).remove_metadata() == REJECTED_SCHEMA
    assert not list(curated.parent.glob(".dataset.staging-*"))
    assert not list(curated.parent.glob(".dataset.interference-*"))  # the faiss stage's spill folder


def test_every_record_is_scored_or_rejected_and_the_manifest_says_so(curated):
    manifest = Manifest.read(curated)
    c = manifest.counts
    assert (c.input, c.scored, c.rejected) == (12, 8, 4)
    assert c.input == c.scored + c.rejected
    assert c.by_reason == {"kept": 6, "duplicate": 1, "conflict": 1}
    assert manifest.rejected_by_stage == {"parse": 2, "validate": 2}
    assert set(manifest.quantiles) >= {"drift", "drift_sentence", "drift_lm", "drift_expected", "interference",
                                       "weight"}
    # Built once in the graph over the scored rows (exact at this size), at the points the stats show.
    drift = sorted(r["drift"] for r in _rows(curated).values())
    assert list(manifest.quantiles["drift"]) == [quantile_label(q) for q in QUANTILES]
    assert manifest.quantiles["drift"]["q0"] == drift[0] and manifest.quantiles["drift"]["q1"] == drift[-1]
    assert manifest.quantiles["drift"]["q0.5"] in drift
    assert manifest.timings["total"] > 0 and manifest.scoring.drift_definition == "rank"
    assert manifest.models["lm"].name == "bundled:smollm2-135m-instruct"
    assert manifest.config_hash == CurateConfig(probe_batch_size=4).config_hash()
    rejected = pq.read_table(curated / "rejected").to_pylist()
    assert sorted(r["position"] for r in rejected) == [8, 9, 10, 11]
    assert all(r["raw"] and r["error"] for r in rejected)
    clash = next(r for r in rejected if r["position"] == 11)
    assert "fact_id 'm01' is already used" in clash["error"] and "Cusco" in clash["raw"]


def test_scores_and_decisions(curated):
    rows = _rows(curated)
    # The model already answers "Tokyo": every answer-based drift is ~0 and the target is likely.
    assert rows["m01"]["drift_sentence"] < 0.05 and rows["m01"]["drift_lm"] < 0.05
    assert rows["m01"]["target_rank"] == 1
    assert all(r["drift_definition"] == "rank" and r["drift"] == r["drift_rank"] for r in rows.values())
    assert rows["m01"]["drift_expected"] < rows["m08"]["drift_expected"]
    assert rows["m05"]["reason"] == "duplicate" and rows["m05"]["duplicate_of"] == "m03"
    assert rows["m02"]["conflicts_with"] == ["m04"] and rows["m02"]["reason"] == "kept"
    assert rows["m04"]["reason"] == "conflict" and rows["m04"]["interference"] > 0.99
    assert rows["m06"]["shared_target"] == 1 and rows["m07"]["shared_target"] == 1
    # risk: the fitted model of scoring.risk on each fact's target_rank and shared_target.
    from scoring.risk import AT_RISK, risk

    assert all(r["risk"] == pytest.approx(risk(r["target_rank"], r["shared_target"])) for r in rows.values())
    at_risk = sum(r["keep"] and r["risk"] >= AT_RISK for r in rows.values())
    assert Manifest.read(curated).counts.at_risk == at_risk
    kept = [r for r in rows.values() if r["keep"]]
    assert sum(r["weight"] for r in kept) / len(kept) == pytest.approx(1.0)
    assert all(r["weight"] == 0.0 for r in rows.values() if not r["keep"])
    assert rows["m02"]["paraphrases"] == ["Kenya's capital city is"]
    assert rows["m02"]["locality"] == [{"prompt": "The capital of Uganda is", "answer": "Kampala"}]


def test_duckdb_can_rethreshold_without_rerunning(curated):
    con = duckdb.connect()
    n = con.execute(f"select count(*) from '{curated}/scored/*.parquet' where keep and drift < 2").fetchone()[0]
    assert n == 6


def test_rerun_gives_the_same_scores(curated, tmp_path):
    manifest = curate([str(FIXTURE)], str(tmp_path / "again"), CurateConfig(probe_batch_size=4))
    first, second = _rows(curated), _rows(tmp_path / "again")
    assert manifest.dataset_id == json.loads((curated / "manifest.json").read_text())["dataset_id"]
    for fact_id, row in first.items():
        other = second[fact_id]
        assert other["prediction"] == row["prediction"]
        assert other["reason"] == row["reason"]
        for col in ("drift", "drift_sentence", "drift_lm", "drift_expected", "target_logprob", "interference"):
            assert other[col] == pytest.approx(row[col], abs=1e-5), (fact_id, col)


def test_the_lsh_stage_gives_the_same_decisions_and_a_lower_bound_of_interference(curated, tmp_path):
    # The default (faiss, exact at this size) against the LSH stage a cluster would use.
    config = CurateConfig(probe_batch_size=4, interference_index="lsh")
    manifest = curate([str(FIXTURE)], str(tmp_path / "lsh"), config)
    assert manifest.config["interference_index"] == "lsh"
    assert manifest.dataset_id != Manifest.read(curated).dataset_id  # other scores, another dataset
    exact, lsh = _rows(curated), _rows(tmp_path / "lsh")
    for fact_id, row in exact.items():
        other = lsh[fact_id]
        assert (other["reason"], other["neighbors"], other["conflicts_with"]) == \
            (row["reason"], row["neighbors"], row["conflicts_with"]), fact_id
        assert other["interference"] <= row["interference"] + 1e-5, fact_id  # LSH: bucket mates only
        if row["interference"] >= config.neighbor_threshold:
            assert other["interference"] == pytest.approx(row["interference"], abs=1e-5)


def test_existing_output_is_refused_without_overwrite(curated):
    with pytest.raises(FileExistsError, match="--overwrite"):
        curate([str(FIXTURE)], str(curated), CurateConfig())


def test_a_failed_run_leaves_nothing_where_readers_look(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(Exception, match="unknown bundled model"):
        curate([str(FIXTURE)], str(out), CurateConfig(model="bundled:no-such-model"))
    assert not out.exists()
    assert not list(tmp_path.iterdir())


def test_exact_copies_get_their_own_fact_id_so_joins_are_one_row_per_fact(tmp_path):
    """Two identical records without ids derive the same id: the copy must get its own."""
    facts = tmp_path / "copies.jsonl"
    facts.write_text('{"prompt": "The capital of Japan is", "target": "Tokyo"}\n'
                     '{"prompt": "The capital of Japan is", "target": "Tokyo"}\n'
                     '{"fact_id": "k1", "prompt": "The capital of Kenya is", "target": "Nairobi"}\n'
                     '{"fact_id": "k1", "prompt": "The capital of Kenya is", "target": "Nairobi"}\n')
    out = tmp_path / "d"
    curate([str(facts)], str(out), CurateConfig(probe_batch_size=4))
    rows = pq.read_table(out / "scored", schema=SCORED_SCHEMA).to_pylist()
    ids = [r["fact_id"] for r in sorted(rows, key=lambda r: r["position"])]
    assert len(ids) == len(set(ids)) == 4
    assert ids[1] == f"{ids[0]}~copy1" and ids[3] == "k1~copy1"
    by_id = {r["fact_id"]: r for r in rows}
    assert by_id[ids[1]]["duplicate_of"] == ids[0] and by_id[ids[0]]["duplicate_of"] is None
    assert by_id["k1~copy1"]["duplicate_of"] == "k1" and by_id["k1~copy1"]["reason"] == "duplicate"
    joined = duckdb.connect().execute(f"select count(*) from '{out}/scored/*.parquet' a "
                                      f"join '{out}/scored/*.parquet' b using (fact_id)").fetchone()[0]
    assert joined == 4


@pytest.mark.parametrize("url, says", [("gs://bucket/out", "install apache-beam[gcp]"),
                                       ("az://c/d", "Beam has no filesystem for az://")])
def test_an_object_store_output_without_a_filesystem_is_refused_not_written_to_a_local_look_alike(
        tmp_path, monkeypatch, url, says):
    """Regression: `--out s3://beacon/curated` printed success and wrote ./s3:/beacon/curated/ (s3://
    output itself: tests/pipeline/test_object_store.py, against an S3 server)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=re.escape(f"--out {url}: ") + ".*" + re.escape(says)):
        curate([str(FIXTURE)], url, CurateConfig())
    assert list(tmp_path.iterdir()) == []


def test_the_manifest_holds_the_histograms_duckdb_would_count(curated):
    from schemas.manifest import HISTOGRAM_SCORES
    from service.datasets import compute_stats, local_dataset

    manifest = Manifest.read(curated)
    fresh = compute_stats(local_dataset(curated).files, threads=1)  # no manifest: DuckDB counts the bins
    assert set(manifest.histograms) == set(HISTOGRAM_SCORES)
    for name in HISTOGRAM_SCORES:
        bins = [b.model_dump() for b in manifest.histograms[name]]
        assert sum(b["count"] for b in bins) == manifest.counts.scored
        assert bins[0]["low"] == fresh[name]["min"] and bins[-1]["high"] == fresh[name]["max"]
        assert bins == fresh[name]["histogram"], name
