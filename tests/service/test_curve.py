"""The job page's learning curve is read from trace.parquet again only when the file changes."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

from service.api.routes.jobs import _curve_points


def _trace(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_the_curve_is_cached_on_the_traces_size_and_mtime(tmp_path):
    path = tmp_path / "trace.parquet"
    _trace(path, [{"step": 1, "fact_id": "a", "loss": 2.0, "learned": False},
                  {"step": 1, "fact_id": "b", "loss": 1.0, "learned": True}])
    st = path.stat()
    first = _curve_points(str(path), st.st_size, st.st_mtime_ns, 2)
    assert first == ((1, 0.5, 1.5),)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _curve_points(str(path), st.st_size, st.st_mtime_ns, 2) is first  # not read again
    _trace(path, [{"step": 1, "fact_id": "a", "loss": 2.0, "learned": True},
                  {"step": 1, "fact_id": "b", "loss": 1.0, "learned": True},
                  {"step": 2, "fact_id": "a", "loss": 0.5, "learned": True}])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    st = path.stat()
    assert _curve_points(str(path), st.st_size, st.st_mtime_ns, 2) == ((1, 1.0, 1.5), (2, 1.0, 0.5))
