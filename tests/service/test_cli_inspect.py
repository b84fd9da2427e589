"""`beacon stats` and `beacon query`: what the service answers, for a dataset on disk, with no server."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from schemas import Manifest
from service.api.models import DatasetStats
from service.cli import main as beacon

pytestmark = pytest.mark.slow  # the `curated` fixture runs the real pipeline once per session


def test_stats_json_is_the_api_answer_and_the_text_says_the_same(curated: Path, capsys) -> None:
    assert beacon(["stats", str(curated), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    DatasetStats.model_validate(stats)  # the API's response model
    manifest = Manifest.read(curated)
    assert stats["counts"]["by_reason"] == manifest.counts.by_reason
    assert stats["counts"]["rejected"] == manifest.counts.rejected
    assert stats["drift"]["quantiles"] == manifest.quantiles["drift"] and stats["drift"]["definition"] == "rank"
    assert stats["manifest"]["dataset_id"] == manifest.dataset_id
    pair = stats["top_conflicts"][0]
    assert {pair["a"]["fact_id"], pair["b"]["fact_id"]} == {"m02", "m04"}

    assert beacon(["stats", str(curated)]) == 0
    text = capsys.readouterr().out
    assert f"dataset {manifest.dataset_id}" in text and "drift (rank)" in text
    for reason, n in manifest.counts.by_reason.items():
        assert any(line.split()[:2] == [reason, str(n)] for line in text.splitlines()), reason
    assert "'The capital of Kenya is' -> 'Mombasa'" in text and "'The capital of Kenya is' -> 'Kisumu'" in text
    assert "█" in text  # the histograms


def test_query_prints_a_table_and_writes_every_format(curated: Path, tmp_path: Path, capsys) -> None:
    sql = "select fact_id, reason, conflicts_with, drift from scored order by fact_id"
    assert beacon(["query", str(curated), sql]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["fact_id", "reason", "conflicts_with", "drift"]
    assert any(line.split()[:3] == ["m04", "conflict", '["m02"]'] for line in out.splitlines())
    assert "(8 rows" in out

    expected = sorted(pq.read_table(curated / "scored", columns=["fact_id", "reason"]).to_pylist(),
                      key=lambda r: r["fact_id"])
    for name in ("rows.csv", "rows.json", "rows.parquet"):
        assert beacon(["query", str(curated), sql, "--out", str(tmp_path / name)]) == 0
        assert f"8 rows -> {tmp_path / name}" in capsys.readouterr().out
    with open(tmp_path / "rows.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [{k: r[k] for k in ("fact_id", "reason")} for r in rows] == expected
    assert json.loads(next(r for r in rows if r["fact_id"] == "m04")["conflicts_with"]) == ["m02"]
    as_json = json.loads((tmp_path / "rows.json").read_text())
    assert [{k: r[k] for k in ("fact_id", "reason")} for r in as_json] == expected
    as_parquet = pq.read_table(tmp_path / "rows.parquet").to_pylist()
    assert as_parquet == as_json
    # The sandbox's spill folder is not left in the user's dataset.
    assert sorted(p.name for p in curated.iterdir()) == ["manifest.json", "rejected", "scored"]


@pytest.mark.parametrize("sql, says", [
    ("delete from scored", "only SELECT queries are allowed"),
    ("select * from read_csv('/etc/passwd')", "read_csv"),
    ("select 1; select 2", "exactly one statement"),
    ("select nope from scored", "the query failed"),
])
def test_a_refused_query_says_why_in_one_line(curated: Path, capsys, sql: str, says: str) -> None:
    assert beacon(["query", str(curated), sql]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1 and err.startswith("beacon query: error:")


def test_bad_arguments_name_the_problem(curated: Path, tmp_path: Path, capsys) -> None:
    assert beacon(["query", str(curated), "select 1", "--out", str(tmp_path / "x.txt")]) == 2
    assert ".csv, .json, .parquet" in capsys.readouterr().err
    assert beacon(["stats", str(tmp_path)]) == 2
    assert f"is {tmp_path} a dataset written by `beacon curate`" in capsys.readouterr().err
    assert beacon(["query", str(curated), "select 1", "--limit", "0"]) == 2
    assert "--limit must be positive" in capsys.readouterr().err
    assert beacon(["query", str(curated), "select fact_id from scored", "--limit", "2"]) == 0
    assert "more rows exist (--limit 2)" in capsys.readouterr().out
