"""Fixtures shared across the test folders (here, at the root: a conftest in tests/ would put tests/ on
sys.path, where tests/schemas would shadow the schemas package)."""

from __future__ import annotations

from pathlib import Path

import pytest

MINI_FACTS = Path(__file__).parent / "tests" / "fixtures" / "mini_facts.jsonl"


@pytest.fixture(scope="session")
def curated(tmp_path_factory) -> Path:
    """``mini_facts.jsonl`` curated once per session with the bundled models, through the CLI as a user
    runs it (a small probe batch, so the run has several LM batches). Read it; never write into it."""
    from service.cli import main as beacon

    out = tmp_path_factory.mktemp("curated") / "dataset"
    assert beacon(["curate", str(MINI_FACTS), "--out", str(out), "--probe-batch-size", "4"]) == 0
    return out


def _read_everywhere(files: list[Path], cache: Path) -> dict[str, tuple[list[str], list[dict]]]:
    """``files`` (Parquet, one table) read by every library a user reaches for: name -> (columns, rows)."""
    import datasets
    import duckdb
    import pandas as pd
    import polars as pl

    paths = [str(f) for f in files]
    hf = datasets.load_dataset("parquet", data_files=paths, split="train", cache_dir=str(cache / "hf"))
    hf_direct = datasets.Dataset.from_parquet(paths, cache_dir=str(cache / "hf-direct"))
    frame = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    polars = pl.read_parquet(paths)
    duck = duckdb.connect().execute("SELECT * FROM read_parquet(?)", [paths])
    return {
        "datasets.load_dataset": (hf.column_names, hf.to_list()),
        "datasets.Dataset.from_parquet": (hf_direct.column_names, hf_direct.to_list()),
        "pandas": (list(frame.columns), frame.to_dict("records")),
        "polars": (polars.columns, polars.to_dicts()),
        "duckdb": ([d[0] for d in duck.description], [dict(zip([d[0] for d in duck.description], r))
                                                     for r in duck.fetchall()]),
    }


@pytest.fixture
def read_everywhere(tmp_path: Path):
    """``read_everywhere(files)``: what each library reads from ``files`` (see ``_read_everywhere``)."""
    return lambda files: _read_everywhere(files, tmp_path)
