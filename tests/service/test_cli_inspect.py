"""`beacon stats` and `beacon query`: what the service answers, for a dataset on disk, with no server."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from schemas import Manifest
from service.api.models import DatasetStats
from service.cli import main as beacon


@pytest.mark.slow  # `curated` runs the real pipeline once per session
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


@pytest.mark.slow  # `curated` runs the real pipeline once per session
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


@pytest.mark.slow  # `curated` runs the real pipeline once per session
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


@pytest.mark.slow  # `curated` runs the real pipeline once per session
def test_bad_arguments_name_the_problem(curated: Path, tmp_path: Path, capsys) -> None:
    assert beacon(["query", str(curated), "select 1", "--out", str(tmp_path / "x.txt")]) == 2
    assert ".csv, .json, .parquet" in capsys.readouterr().err
    assert beacon(["stats", str(tmp_path)]) == 2
    assert f"is {tmp_path} a dataset written by `beacon curate`" in capsys.readouterr().err
    assert beacon(["query", str(curated), "select 1", "--limit", "0"]) == 2
    assert "--limit must be positive" in capsys.readouterr().err
    assert beacon(["query", str(curated), "select fact_id from scored", "--limit", "2"]) == 0
    assert "more rows exist (--limit 2)" in capsys.readouterr().out


# --- without the model: a seeded dataset (service_fixtures) ----------------------------------------

def _seeded(tmp_path: Path, *, old_meta: bool = False) -> Path:
    import pyarrow as pa

    from schemas import SCORED_SCHEMA
    from service_fixtures import scored_rows, seed_scored_dataset

    folder = tmp_path / "datasets" / seed_scored_dataset(tmp_path)
    if old_meta:  # as curated before meta became key/value structs: an Arrow map
        schema = pa.schema([f if f.name != "meta" else pa.field("meta", pa.map_(pa.string(), pa.string()),
                                                                 nullable=False) for f in SCORED_SCHEMA])
        rows = [dict(r, meta=[("origin", r["fact_id"])]) for r in scored_rows()]
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / "scored" / "part-0.parquet")
    return folder


@pytest.mark.parametrize("old_meta", [False, True])
def test_meta_looks_up_the_same_in_old_and_new_datasets(tmp_path: Path, capsys, old_meta: bool) -> None:
    folder = _seeded(tmp_path, old_meta=old_meta)
    sql = "select fact_id, map_from_entries(meta)['origin'] as origin from scored order by fact_id limit 2"
    assert beacon(["query", str(folder), sql, "--out", str(tmp_path / "m.json")]) == 0, capsys.readouterr().err
    expected = [{"fact_id": "s0", "origin": "s0" if old_meta else None},
                {"fact_id": "s1", "origin": "s1" if old_meta else None}]
    assert json.loads((tmp_path / "m.json").read_text()) == expected


def test_the_query_spills_outside_the_users_dataset(tmp_path: Path, capsys) -> None:
    folder = _seeded(tmp_path)
    # A file where the API's layout would put the spill folder (ROOT/tmp/): the query must not need it,
    # so a read-only or cluttered dataset folder is queried and left as it was. (Tests run as root,
    # where chmod cannot make a folder read-only.)
    (folder / "tmp").write_text("the user's own file")
    before = sorted(p.name for p in folder.iterdir())
    assert beacon(["query", str(folder), "select count(*) as n from scored"]) == 0, capsys.readouterr().err
    assert "(1 rows" in capsys.readouterr().out and sorted(p.name for p in folder.iterdir()) == before
    assert (folder / "tmp").read_text() == "the user's own file"


def test_a_folder_that_is_a_dataset_and_a_run_is_named_not_guessed(tmp_path: Path, capsys) -> None:
    folder = _seeded(tmp_path)
    (folder / "dataset").mkdir()
    shutil.copy(folder / "manifest.json", folder / "dataset" / "manifest.json")
    assert beacon(["stats", str(folder)]) == 2
    assert "name the one you mean" in capsys.readouterr().err
    # and `beacon run` does not make such a folder
    assert beacon(["run", "facts.jsonl", "--out", str(folder / "dataset")]) == 2
    assert "is a curated dataset; `beacon run` writes" in capsys.readouterr().err


def test_stats_threads_must_be_positive(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        beacon(["stats", str(_seeded(tmp_path)), "--threads", "0"])
    assert "must be at least 1" in capsys.readouterr().err
