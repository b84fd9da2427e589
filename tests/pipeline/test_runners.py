"""The same curation on the runners a user moves to: the portable (Fn API) path that Flink, Spark and
Dataflow use, run here on an embedded job server with loopback workers, and the multi-process
DirectRunner. Each must give the default runner's dataset: its id, counts (from the graph: input ==
scored + rejected), dead letters, the quantiles and thresholds (side inputs), and every row."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from schemas import Manifest

REPO = Path(__file__).resolve().parents[2]
MINI_FACTS = REPO / "tests" / "fixtures" / "mini_facts.jsonl"
RUNNERS = {
    "portable": ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"],
    "multi-process": ["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"],
}


def _close(a, b) -> bool:
    """Equal, floats to float32 precision: the multi-process runner batches the encoder differently,
    and a padded batch moves a sentence embedding in its 7th digit."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == b


def _rejected(dataset: Path) -> list[dict]:
    files = Manifest.read(dataset).data_files(dataset, "rejected")
    return sorted((r for f in files for r in pq.read_table(f).to_pylist()), key=lambda r: (r["source"], r["position"]))


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_another_runner_gives_the_default_runners_dataset(runner, curated, tmp_path, monkeypatch):
    from service.cli import main as beacon
    from trainer.data import read_scored

    monkeypatch.chdir(REPO)  # the input as a relative path: it is made absolute before any worker starts
    relative = MINI_FACTS.relative_to(REPO)
    out = tmp_path / "dataset"
    assert beacon(["curate", str(relative), "--out", str(out), "--probe-batch-size", "4", *RUNNERS[runner]]) == 0

    got, want = Manifest.read(out), Manifest.read(curated)
    assert got.runner == RUNNERS[runner][0].split("=")[1]
    assert got.dataset_id == want.dataset_id and got.inputs == want.inputs
    assert got.counts == want.counts and got.counts.input == got.counts.scored + got.counts.rejected
    assert got.rejected_by_stage == want.rejected_by_stage and got.counts.rejected > 0
    exact = runner == "portable"  # the same batches as the default runner: bit for bit
    assert _close(got.quantiles, want.quantiles) and _close(got.thresholds, want.thresholds)
    if exact:
        assert got.quantiles == want.quantiles and got.thresholds == want.thresholds
    assert got.timings["probe_inference"] > 0  # from the runner's metrics

    rows, expected = read_scored(out).to_pylist(), read_scored(curated).to_pylist()
    assert len(rows) == len(expected) == want.counts.scored
    for row, ref in zip(rows, expected):
        assert row["source"] == str(MINI_FACTS)  # resolved, so the same as the absolute path's run
        assert row == ref if exact else _close(row, ref), row["fact_id"]
    assert _rejected(out) == _rejected(curated)
