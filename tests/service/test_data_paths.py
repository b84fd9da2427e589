"""Pure functions: path confinement, upload names, the SQL gate, JSON values."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from service.api.upload import safe_suffix
from service.datasets import PathError, confined, scored_dataset_id
from service.query import QueryError, check_sql, jsonable


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root" / "sub").mkdir(parents=True)
    (tmp_path / "root" / "sub" / "facts.jsonl").write_text("{}\n")
    (tmp_path / "outside.txt").write_text("secret")
    return tmp_path / "root"


def test_a_path_inside_the_root_resolves(root: Path):
    assert confined(root, "sub/facts.jsonl") == (root / "sub" / "facts.jsonl").resolve()
    assert confined(root, "./sub//facts.jsonl") == (root / "sub" / "facts.jsonl").resolve()
    os.symlink(root / "sub" / "facts.jsonl", root / "inner-link.jsonl")
    assert confined(root, "inner-link.jsonl") == (root / "sub" / "facts.jsonl").resolve()  # stays inside


@pytest.mark.parametrize("path, message", [
    ("../outside.txt", "'..'"), ("sub/../../outside.txt", "'..'"), ("sub\\..\\..\\outside.txt", "'..'"),
    ("/etc/passwd", "absolute"), ("\\etc\\passwd", "absolute"), ("", "empty"), ("sub/\x00.jsonl", "NUL"),
    ("sub/missing.jsonl", "does not exist"),
])
def test_escapes_are_refused(root: Path, path: str, message: str):
    with pytest.raises(PathError, match=message):
        confined(root, path)


def test_symlinks_out_of_the_root_are_refused(root: Path):
    os.symlink(root.parent / "outside.txt", root / "file-link")
    os.symlink(root.parent, root / "dir-link")
    os.symlink(root / "loop", root / "loop")
    for path in ("file-link", "dir-link/outside.txt"):
        with pytest.raises(PathError, match="outside its root"):
            confined(root, path)
    with pytest.raises(PathError):
        confined(root, "loop")


@pytest.mark.parametrize("name, suffix", [
    ("facts.jsonl", ".jsonl"), ("FACTS.CSV", ".csv"), ("a.json.gz", ".json.gz"), ("x.parquet", ".parquet"),
    ("../../etc/passwd", ""), ("evil.sh", ""), ("a.jsonl/../b", ""), (None, ""), ("c:\\x\\f.ndjson", ".ndjson"),
])
def test_upload_suffix_is_one_the_pipeline_knows_or_none(name, suffix):
    assert safe_suffix(name) == suffix


def test_a_scored_dataset_id_is_one_per_upload_and_config():
    a = scored_dataset_id("dst_0000000000000001", "cfg1")
    assert a == scored_dataset_id("dst_0000000000000001", "cfg1") and a.startswith("dst_") and len(a) == 20
    assert a != scored_dataset_id("dst_0000000000000001", "cfg2") != scored_dataset_id("dst_2", "cfg1")


@pytest.mark.parametrize("sql", ["select 1", "  SELECT * FROM scored  ;", "with x as (select 1) select * from x",
                                 "from scored select fact_id", "select 1 union all select 2"])
def test_one_select_passes_the_gate(sql: str):
    assert check_sql(sql)


@pytest.mark.parametrize("sql, message", [
    ("", "exactly one"), ("select 1; select 2", "exactly one"), ("copy scored to 'x.csv'", "COPY"),
    ("attach 'x.db'", "ATTACH"), ("install httpfs", "LOAD"), ("set threads=1", "SET"),
    ("pragma version", "only SELECT"), ("explain select 1", "EXPLAIN"), ("drop view scored", "DROP"),
    ("select 1 from", "does not parse"), ("select '\x00'", "NUL"), ("select 1" + " " * 100_000, "characters"),
])
def test_anything_else_is_stopped_at_the_gate(sql: str, message: str):
    with pytest.raises(QueryError, match=message):
        check_sql(sql)


def test_values_become_json():
    import datetime as dt
    import decimal

    assert jsonable(float("nan")) is None and jsonable(math.inf) is None and jsonable(1.5) == 1.5
    assert jsonable(b"\x00\xff") == "AP8=" and jsonable(decimal.Decimal("1.25")) == 1.25
    assert jsonable(dt.date(2024, 1, 2)) == "2024-01-02" and jsonable(dt.timedelta(minutes=1)) == 60.0
    assert jsonable({"a": [1, float("nan")], 2: (True, None)}) == {"a": [1, None], "2": [True, None]}
