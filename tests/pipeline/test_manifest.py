"""The manifest built in the graph: counts, the loss check, quantile summaries; the commit."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import CurateConfig
from pipeline.manifest import Identity, build_manifest, commit, dataset_id
from schemas import Manifest
from schemas.manifest import InputFile

IDENTITY = Identity(dataset_id="ds_x", input_digest="d", inputs=[InputFile(path="a.jsonl", sha256="s", bytes=1)],
                    config=CurateConfig(model="some/local-model", encoder="some/encoder"), runner="FnApiRunner")


def _manifest(read: int = 5) -> Manifest:
    return build_manifest(IDENTITY, read=read, reasons=[("kept", 3), ("duplicate", 1)], stages=[("parse", 1)],
                          quantiles=[("drift", [0.0, 0.5, 1.0]), ("weight", [])],
                          thresholds=[{"max_drift": 0.9, "max_interference": None}])


def test_counts_thresholds_and_quantiles_come_from_the_graph():
    m = _manifest()
    assert (m.counts.input, m.counts.scored, m.counts.rejected, m.counts.kept) == (5, 4, 1, 3)
    assert m.rejected_by_stage == {"parse": 1} and m.thresholds == {"max_drift": 0.9}
    assert m.quantiles["drift"]["q0"] == 0.0 and m.quantiles["drift"]["q1"] == 1.0
    assert "weight" not in m.quantiles  # no points, no summary
    assert m.config["drift_definition"] == "rank" and m.models["lm"].name == "some/local-model"


def test_a_lost_record_fails_the_run():
    with pytest.raises(RuntimeError, match="count identity broken: read 6 records but scored 4 \\+ rejected 1"):
        _manifest(read=6)


def test_the_same_inputs_and_config_are_the_same_dataset():
    assert dataset_id("d", "h") == dataset_id("d", "h") != dataset_id("d", "h2")


def test_commit_records_timings_and_swaps_the_folder_in(tmp_path: Path):
    staging, out = tmp_path / ".staging", tmp_path / "out"
    (staging / "rejected").mkdir(parents=True)
    (staging / "scored").mkdir()
    (staging / "scored" / "part-00000-of-00001.parquet").write_bytes(b"x")
    (staging / "scored" / "beam-temp-part-1").mkdir()
    (staging / "scored" / "beam-temp-part-1" / "0123.parquet").write_bytes(b"x")  # never named
    _manifest().model_copy(update={"counts": _manifest().counts.model_copy(update={"rejected": 0})}).write(staging)
    out.mkdir()
    (out / "old.txt").write_text("old")
    committed = commit(staging, out, timings={"total": 1.5})
    assert committed.timings == {"total": 1.5} and Manifest.read(out).timings == {"total": 1.5}
    assert not (out / "old.txt").exists() and not (out / "rejected").exists() and not staging.exists()
    assert committed.files == {"scored": ["scored/part-00000-of-00001.parquet"], "rejected": []}


def test_a_commit_refuses_a_run_whose_scored_shards_are_missing(tmp_path: Path):
    staging, out = tmp_path / ".staging", tmp_path / "out"
    (staging / "scored").mkdir(parents=True)
    (staging / "scored" / "part-00001-of-00002.parquet").write_bytes(b"x")  # shard 0 of 2 is missing
    _manifest().model_copy(update={"counts": _manifest().counts.model_copy(update={"rejected": 0})}).write(staging)
    with pytest.raises(RuntimeError, match="incomplete"):
        commit(staging, out, timings={})
    assert not out.exists()
