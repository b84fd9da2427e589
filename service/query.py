"""Read-only SQL over a scored dataset: views ``scored``, ``rejected`` and ``eval``, nothing else.

The statement is parsed by DuckDB itself and must be exactly one SELECT (or a PIVOT), calling no
function that reads files, settings or the catalog. It runs in a process of its own, on a fresh
in-memory connection whose views are bound to the dataset's Parquet files, after the connection is
locked down: only those files may be opened (``allowed_paths``), external access, extension
(auto)loading and any configuration change are off, spill goes to a capped folder under the data
root. The process is killed at the deadline, whatever DuckDB is doing, so a runaway query always
frees its slot and its memory; the answer is capped in bytes as well as rows. Answers and errors
never carry the server's absolute paths.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.config_file import first_line
from service.datasets import ScoredFiles, sql_paths

log = logging.getLogger(__name__)

MAX_SQL_CHARS = 100_000
KILL_GRACE_S = 1.0  # past the soft limit (DuckDB's interrupt), the process is killed
# Functions that read the server's state rather than the dataset: files, settings, the catalog
# (whose view definitions name the files), secrets, environment, or run SQL of their own.
DENIED_FUNCTIONS = {"current_setting", "getenv", "getvariable", "query", "query_table", "which_secret",
                    "glob", "checkpoint", "force_checkpoint", "json_execute_serialized_sql"}
DENIED_PREFIXES = ("duckdb_", "pragma_", "read_", "parquet_", "sniff_", "iceberg_", "delta_", "pg_",
                   "information_schema", "sqlite_")
_IDENTIFIER = re.compile(r"[A-Za-z_][\w$]*")
_TREE_NAME = re.compile(r'"(?:function_name|table_name|schema_name)":"([^"]+)"')
_TABLE_NAME = re.compile(r'"table_name":"([^"]*)"')
_SCHEMA_NAME = re.compile(r'"schema_name":"([^"]*)"')
_OUR_SCHEMAS = {"", "main", "memory", "temp"}
_PIVOT = re.compile(r"\b(UN)?PIVOT\b", re.IGNORECASE)


class QueryError(ValueError):
    """The SQL is not allowed, does not parse or fails; the message says which and why."""


class QueryTimeout(QueryError):
    """The query ran past the time limit and was stopped."""


class QueryTooLarge(QueryError):
    """The answer is larger than the byte limit."""


@dataclass
class QueryResult:
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    truncated: bool
    elapsed_ms: float


@dataclass(frozen=True)
class QueryLimits:
    row_limit: int
    timeout_s: float
    memory_limit: str
    threads: int
    max_bytes: int
    spill_bytes: int


def check_sql(sql: str) -> str:
    """The one SELECT (or PIVOT) statement in ``sql``.

    Raises:
        QueryError: empty, too long, unparsable, several statements, not a SELECT, or calls a
            function that reads files, settings or the catalog.
    """
    import duckdb

    if len(sql) > MAX_SQL_CHARS:
        raise QueryError(f"the query has {len(sql)} characters; at most {MAX_SQL_CHARS} are accepted")
    if "\x00" in sql:
        raise QueryError("the query holds a NUL character")
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(f"the query does not parse: {first_line(e)}") from None
    if len(statements) != 1:
        raise QueryError(f"send exactly one statement, got {len(statements)}")
    statement = statements[0]
    kind = statement.type
    # A PIVOT without an IN list is DuckDB's one SELECT that parses as several statements (MULTI).
    pivot = kind == duckdb.StatementType.MULTI and _PIVOT.search(statement.query)
    if kind != duckdb.StatementType.SELECT and not pivot:
        raise QueryError(f"only SELECT queries are allowed, got {getattr(kind, 'name', str(kind))}")
    _check_functions(statement.query, serialisable=not pivot)
    return statement.query


def _check_functions(query: str, *, serialisable: bool) -> None:
    names: set[str] = set()
    files: list[str] = []
    if serialisable:  # DuckDB's own parse tree names every function, table function and table read
        tree = _parse_tree(query)
        names |= set(_TREE_NAME.findall(tree))
        files = [t for t in _TABLE_NAME.findall(tree) if not _IDENTIFIER.fullmatch(t)]
        # FROM a.parquet parses as table 'parquet' of schema 'a', which DuckDB then scans as a file.
        files += [f"{schema}.…" for schema in _SCHEMA_NAME.findall(tree) if schema not in _OUR_SCHEMAS]
    elif re.search(r"['\"][^'\"]*(/|\\|\.parquet|\.csv|\.json)[^'\"]*['\"]", query, re.IGNORECASE):
        raise QueryError("a PIVOT may not name a file; pivot one of the views scored, rejected and eval")
    # And every word of the text, for what the tree cannot show (a PIVOT, a quoted name): a column or
    # a string that happens to be called read_csv is refused too, which costs nothing.
    names |= set(_IDENTIFIER.findall(query))
    denied = sorted(n for n in {n.lower() for n in names}
                    if n in DENIED_FUNCTIONS or n.startswith(DENIED_PREFIXES))
    if denied:
        raise QueryError(f"the query calls {denied[0]}(), which reads the server's files, settings or "
                         "catalog; query the views scored, rejected and eval")
    if files:  # FROM 'x.parquet': a replacement scan reads a file raw, past the views
        raise QueryError(f"the query reads {files[0]!r} directly; query the views scored, rejected and eval")


def remove_stale_spill(root: Path, older_than_s: float) -> int:
    """Spill folders of queries whose API process died before it could remove them; returns how many."""
    removed, now = 0, time.time()
    for folder in (Path(root) / "tmp").glob("query-*"):
        try:
            if now - folder.stat().st_mtime > older_than_s:
                shutil.rmtree(folder)
                removed += 1
        except OSError:
            continue
    return removed


_parse_lock = threading.Lock()
_parse_con: Any = None


def _parse_tree(query: str) -> str:
    """DuckDB's JSON parse tree of ``query``, from one shared in-memory connection (it opens nothing;
    a new connection per query costs ~10 ms), closed at exit so no C++ destructor runs at shutdown."""
    global _parse_con
    import atexit

    import duckdb

    with _parse_lock:
        if _parse_con is None:
            _parse_con = duckdb.connect(":memory:")
            atexit.register(_parse_con.close)
        return _parse_con.execute("SELECT json_serialize_sql(?)", [query]).fetchone()[0]


def run_query(sql: str, files: ScoredFiles, *, root: Path, limits: QueryLimits,
              spill_dir: Path | None = None) -> QueryResult:
    """Runs one read-only SELECT over the dataset's views, in a process killed at the deadline.

    ``spill_dir``: where DuckDB may spill (removed afterwards); default ``ROOT/tmp/query-<id>``.

    Raises:
        QueryError: the SQL is not allowed or fails. QueryTimeout: it ran past the time limit.
        QueryTooLarge: the answer is over ``limits.max_bytes``.
    """
    statement = check_sql(sql)
    root = Path(root).resolve()
    # Relative to the root by default: no server path shows in an answer.
    spill = Path(spill_dir) if spill_dir is not None else Path("tmp") / f"query-{uuid.uuid4().hex[:12]}"
    try:
        relative = {name: [str(p.resolve().relative_to(root)) for p in paths] for name, paths in
                    (("scored", files.scored), ("rejected", files.rejected), ("eval", files.eval))}
    except ValueError:
        raise QueryError("the dataset's files are not under the data root; ask the operator") from None
    proc = receive = None
    started = time.perf_counter()
    try:
        (root / spill).parent.mkdir(parents=True, exist_ok=True)
        ctx = _context()
        receive, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(send, statement, relative, str(root), str(spill), limits),
                           daemon=True)
        proc.start()
        send.close()
        if not receive.poll(limits.timeout_s + KILL_GRACE_S):
            raise QueryTimeout(_timeout_message(limits))
        try:
            answer = json.loads(receive.recv_bytes(maxlength=limits.max_bytes + 65_536))
        except EOFError:
            raise QueryError("the query process ended without an answer (out of memory? lower the work "
                             "of the query)") from None
        except OSError:  # longer than the limit, or cut off by the process dying while it sent
            proc.join(1.0)
            if proc.exitcode not in (None, 0):
                raise QueryError("the query process died while answering (out of memory?)") from None
            raise QueryTooLarge(_too_large_message(limits)) from None
    except OSError as e:  # no process or pipe could be had: the host is short of something, not the query
        raise QueryError(f"the query could not be started ({e.strerror or e}); retry in a moment") from None
    finally:
        if receive is not None:
            receive.close()
        if proc is not None and proc.pid is not None:  # started (a failed start has nothing to join)
            if proc.is_alive():
                proc.kill()  # a runaway query: nothing short of this frees its core and memory
            proc.join(5.0)
        shutil.rmtree(root / spill, ignore_errors=True)
    if not answer["ok"]:
        raise {"timeout": QueryTimeout, "too_large": QueryTooLarge}.get(answer["kind"], QueryError)(answer["message"])
    return QueryResult(columns=answer["columns"], types=answer["types"], rows=answer["rows"],
                       truncated=answer["truncated"], elapsed_ms=round((time.perf_counter() - started) * 1000, 2))


_ctx_lock = threading.Lock()
_ctx: Any = None


def _context() -> Any:
    """Forkserver processes: started from a clean server process (no threads of the API copied),
    with DuckDB imported once there, so each query's process starts in milliseconds."""
    global _ctx
    with _ctx_lock:
        if _ctx is None:
            ctx = multiprocessing.get_context("forkserver")
            # Everything a query's process imports, once: the empty views' schemas pull in pyarrow, and
            # pyarrow imports pandas the first time it builds a table (~200 ms a query if left to the child).
            ctx.set_forkserver_preload(["duckdb", "pyarrow", "pandas", "schemas", "trainer.metrics",
                                        "service.query"])
            _ctx = ctx
        return _ctx


def start_query_processes() -> threading.Thread:
    """Starts the server that query processes are forked from, in the background (~0.6 s: it imports
    DuckDB, pyarrow and pandas), so that a server's first query does not wait for it."""
    import multiprocessing.forkserver

    def start() -> None:
        _context()
        try:
            multiprocessing.forkserver.ensure_running()
        except OSError as e:  # the first query will try again, and say why if it fails too
            log.warning("could not start the query process server: %s", e)

    thread = threading.Thread(target=start, name="beacon-query-forkserver", daemon=True)
    thread.start()
    return thread


def _timeout_message(limits: QueryLimits) -> str:
    return (f"the query ran longer than the limit of {limits.timeout_s:g} s and was stopped; "
            "narrow it (a WHERE, a LIMIT, fewer joins)")


def _too_large_message(limits: QueryLimits) -> str:
    return (f"the answer is larger than the limit of {limits.max_bytes} bytes (BEACON_QUERY_MAX_BYTES); "
            "select fewer or shorter columns, or fewer rows")


# --- the query's own process ------------------------------------------------------------------------

def _child(send: Any, statement: str, files: dict[str, list[str]], root: str, spill: str,
           limits: QueryLimits) -> None:
    """Runs in the query's process: answers one JSON message on ``send``, then exits."""
    try:
        os.nice(10)  # the API's own requests come first on a busy machine
    except OSError:
        pass
    # The parent kills at the deadline; if the parent itself died, nobody would: end by our own hand.
    suicide = threading.Timer(limits.timeout_s + 2 * KILL_GRACE_S, os._exit, (1,))
    suicide.daemon = True
    suicide.start()
    try:
        os.chdir(root)
        message = _answer(statement, files, spill, limits)
    except Exception as e:  # noqa: BLE001 - whatever happened is the query's error, never the server's
        message = {"ok": False, "kind": "error", "message": f"the query failed: {first_line(e)}"}
    data = _scrub(json.dumps(message, allow_nan=False), root)
    if len(data) > limits.max_bytes + 65_536:
        data = json.dumps({"ok": False, "kind": "too_large", "message": _too_large_message(limits)})
    send.send_bytes(data.encode())
    send.close()


def _answer(statement: str, files: dict[str, list[str]], spill: str, limits: QueryLimits) -> dict[str, Any]:
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        _prepare(con, files, spill=spill, limits=limits)
        timer = threading.Timer(limits.timeout_s, con.interrupt)
        timer.start()
        try:
            cursor = con.execute(statement)
            columns = [d[0] for d in cursor.description or []]
            types = [str(d[1]) for d in cursor.description or []]
            rows, size, truncated, batch_rows = [], 0, False, 1
            while not truncated:
                # Small batches first: a few huge rows must not all be fetched before the byte cap acts.
                batch = cursor.fetchmany(min(batch_rows, limits.row_limit + 1 - len(rows)))
                batch_rows = min(batch_rows * 2, 1024)
                if not batch:
                    break
                for row in batch:
                    if len(rows) == limits.row_limit:
                        truncated = True
                        break
                    value = [jsonable(v) for v in row]
                    size += len(json.dumps(value)) + 1
                    if size > limits.max_bytes:  # stop building, not just sending, a huge answer
                        return {"ok": False, "kind": "too_large", "message": _too_large_message(limits)}
                    rows.append(value)
        except duckdb.InterruptException:
            return {"ok": False, "kind": "timeout", "message": _timeout_message(limits)}
        except duckdb.Error as e:
            return {"ok": False, "kind": "error", "message": f"the query failed: {first_line(e)}"}
        finally:
            timer.cancel()
    finally:
        con.close()
    return {"ok": True, "columns": columns, "types": types, "rows": rows, "truncated": truncated}


def _prepare(con, files: dict[str, list[str]], *, spill: str, limits: QueryLimits) -> None:
    """Views over the dataset's files, then the lock-down (order matters: nothing changes after it)."""
    con.execute(f"SET threads = {int(limits.threads)}")
    con.execute("SET memory_limit = ?", [limits.memory_limit])
    con.execute("SET temp_directory = ?", [spill])
    con.execute("SET max_temp_directory_size = ?", [f"{int(limits.spill_bytes)}B"])
    con.execute("SET allowed_paths = ?", [[p for paths in files.values() for p in paths]])
    con.execute("SET enable_external_access = false")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    for name, paths in files.items():
        if paths:
            # The input files' own paths on the server are not the user's business: their names are.
            replace = ["regexp_replace(source, '^.*[/\\\\]', '') AS source"] if name != "eval" else []
            if name == "scored" and _meta_is_map(con, paths):
                replace.append("map_entries(meta) AS meta")  # a dataset curated before key/value meta
            source = f" REPLACE ({', '.join(replace)})" if replace else ""
            con.execute(f"CREATE VIEW {name} AS SELECT *{source} FROM read_parquet({sql_paths(paths)})")
        else:
            empty = f"empty_{uuid.uuid4().hex[:8]}"
            con.register(empty, _empty_table(name))
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM {empty}")
            con.unregister(empty)
    con.execute("SET lock_configuration = true")


def _meta_is_map(con, paths: list[str]) -> bool:
    """Whether the files' ``meta`` column is an Arrow map (datasets curated before key/value meta)."""
    columns = {row[0]: row[1] for row in con.execute(
        f"DESCRIBE SELECT * FROM read_parquet({sql_paths(paths)})").fetchall()}
    return str(columns.get("meta", "")).upper().startswith("MAP(")


def _scrub(text: str, root: str) -> str:
    """The answer without the server's absolute paths (the data root, this user's home)."""
    home = os.path.expanduser("~")
    for path, shown in sorted(((root, "."), (home, "~")), key=lambda x: -len(x[0])):
        if len(path) > 1:
            text = text.replace(path, shown)
    return text


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
