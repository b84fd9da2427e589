"""A curated dataset loads, with the same rows and columns, in every library people train and look with."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from schemas import REJECTED_SCHEMA, SCORED_SCHEMA
from schemas.fact import meta_dict

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("folder,schema", [("scored", SCORED_SCHEMA), ("rejected", REJECTED_SCHEMA)])
def test_every_library_reads_the_curated_files(curated: Path, read_everywhere, folder, schema):
    files = sorted((curated / folder).glob("*.parquet"))
    expected = pq.read_table(files).to_pylist()
    assert expected, f"the fixture has no {folder} rows"
    read = read_everywhere(files)
    for library, (columns, rows) in read.items():
        assert columns == schema.names, library
        assert len(rows) == len(expected), library
        assert sorted(r["position"] for r in rows) == sorted(r["position"] for r in expected), library
    if folder == "scored":
        # meta means the same everywhere: key/value entries, whatever container each library uses.
        for library, (_, rows) in read.items():
            by_id = {r["fact_id"]: meta_dict(list(r["meta"])) for r in rows}
            assert by_id == {r["fact_id"]: meta_dict(r["meta"]) for r in expected}, library
        assert any(meta_dict(r["meta"]) for r in expected), "no row of the fixture carries meta"
