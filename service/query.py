"""Read-only SQL over a scored dataset: views ``scored``, ``rejected`` and ``eval``, nothing else.

The statement is parsed by DuckDB itself and must be exactly one SELECT. It runs on a fresh in-memory
connection whose views are bound to the dataset's Parquet files, after the connection is locked down:
only those files may be opened (``allowed_paths``), external access, extension (auto)loading and any
configuration change are off. A timer interrupts a query past its time limit; at most ``row_limit``
rows come back.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import math
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from service.datasets import ScoredFiles, sql_paths

VIEWS = ("scored", "rejected", "eval")
MAX_SQL_CHARS = 100_000


class QueryError(ValueError):
    """The SQL is not allowed, does not parse or fails; the message says which and why."""


class QueryTimeout(QueryError):
    """The query ran past the time limit and was interrupted."""


@dataclass
class QueryResult:
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    truncated: bool
    elapsed_ms: float


def check_sql(sql: str) -> str:
    """The one SELECT statement in ``sql``.

    Raises:
        QueryError: empty, too long, unparsable, several statements, or not a SELECT.
    """
    import duckdb

    if len(sql) > MAX_SQL_CHARS:
        raise QueryError(f"the query has {len(sql)} characters; at most {MAX_SQL_CHARS} are accepted")
    if "\x00" in sql:
        raise QueryError("the query holds a NUL character")
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(f"the query does not parse: {_first_line(e)}") from None
    if len(statements) != 1:
        raise QueryError(f"send exactly one statement, got {len(statements)}")
    statement = statements[0]
    if statement.type != duckdb.StatementType.SELECT:
        kind = getattr(statement.type, "name", str(statement.type))
        raise QueryError(f"only SELECT queries are allowed, got {kind}")
    return statement.query


def run_query(sql: str, files: ScoredFiles, *, row_limit: int, timeout_s: float, memory_limit: str,
              threads: int) -> QueryResult:
    """Runs one read-only SELECT over the dataset's views.

    Raises:
        QueryError: the SQL is not allowed or fails. QueryTimeout: it ran past ``timeout_s``.
    """
    import duckdb

    statement = check_sql(sql)
    con = duckdb.connect(":memory:")
    try:
        _prepare(con, files, memory_limit=memory_limit, threads=threads)
        started = time.perf_counter()
        timer = threading.Timer(timeout_s, con.interrupt)
        timer.start()
        try:
            cursor = con.execute(statement)
            columns = [d[0] for d in cursor.description or []]
            types = [str(d[1]) for d in cursor.description or []]
            fetched = cursor.fetchmany(row_limit + 1)
        except duckdb.InterruptException:
            raise QueryTimeout(f"the query ran longer than the limit of {timeout_s:g} s and was stopped; "
                               "narrow it (a WHERE, a LIMIT, fewer joins)") from None
        except duckdb.Error as e:
            raise QueryError(f"the query failed: {_first_line(e)}") from None
        finally:
            timer.cancel()
        elapsed = (time.perf_counter() - started) * 1000
    finally:
        con.close()
    rows = [[jsonable(v) for v in row] for row in fetched[:row_limit]]
    return QueryResult(columns=columns, types=types, rows=rows, truncated=len(fetched) > row_limit,
                       elapsed_ms=round(elapsed, 2))


def _prepare(con, files: ScoredFiles, *, memory_limit: str, threads: int) -> None:
    """Views over the dataset's files, then the lock-down (order matters: nothing changes after it)."""
    allowed = [str(p) for p in (*files.scored, *files.rejected, *files.eval)]
    con.execute(f"SET threads = {int(threads)}")
    con.execute("SET memory_limit = ?", [memory_limit])
    con.execute("SET allowed_paths = ?", [allowed])
    con.execute("SET enable_external_access = false")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    for name, paths in (("scored", files.scored), ("rejected", files.rejected), ("eval", files.eval)):
        if paths:
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({sql_paths(paths)})")
        else:
            empty = f"empty_{uuid.uuid4().hex[:8]}"
            con.register(empty, _empty_table(name))
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM {empty}")
            con.unregister(empty)
    con.execute("SET lock_configuration = true")


def _empty_table(name: str):
    import pyarrow as pa

    if name == "scored":
        from schemas import SCORED_SCHEMA as schema
    elif name == "rejected":
        from schemas import REJECTED_SCHEMA as schema
    else:
        from trainer.metrics import EVAL_SCHEMA as schema
    return pa.Table.from_pylist([], schema=schema)


def jsonable(value: Any) -> Any:
    """A DuckDB value as JSON: NaN/inf become null, bytes base64, dates ISO 8601, decimals floats."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
