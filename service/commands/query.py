"""`beacon query DIR "SQL"`: one read-only SELECT over scored / rejected / eval, in the API's sandbox."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

EPILOG = """Views: scored (scored/*.parquet), rejected (rejected/*.parquet) and, for a `beacon run`
folder, eval (run/eval.parquet). Example:
  beacon query out/sample "select e.fact_id, s.prompt, e.target, e.answer from eval e
      join scored s using (fact_id) where e.kept and not e.efficacy"
--out FILE writes every row as CSV, JSON or Parquet (by its extension). Values pass the sandbox as
JSON: timestamps arrive as ISO text, decimals as doubles, blobs as base64 text."""

OUT_FORMATS = (".csv", ".json", ".parquet")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("query", help="run one read-only SQL SELECT over a dataset (scored, rejected, eval)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", metavar="DIR", help="curated dataset folder or object-store URL (s3://…), or a `beacon run` folder")
    p.add_argument("sql", metavar="SQL", help="one SELECT statement")
    p.add_argument("--out", metavar="FILE", help=f"write all rows to FILE ({', '.join(OUT_FORMATS)})")
    p.add_argument("--limit", type=int, metavar="N",
                   help="most rows (default: 100 printed; every row with --out)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="stop the query after S seconds")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from service.datasets import open_dataset
    from service.query import QueryLimits, run_query
    from service.settings import Settings

    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() not in OUT_FORMATS:
        raise ValueError(f"--out {out}: the extension says the format; use one of {', '.join(OUT_FORMATS)}")
    if args.limit is not None and args.limit <= 0:
        raise ValueError(f"--limit must be positive, got {args.limit}")
    if args.timeout <= 0:
        raise ValueError(f"--timeout must be positive, got {args.timeout:g}")
    if out is not None:
        if out.is_dir():
            raise ValueError(f"--out {out} is a folder; name a file")
        out.parent.mkdir(parents=True, exist_ok=True)
    settings = Settings()
    limit = args.limit or (2**62 if out else 100)
    limits = QueryLimits(row_limit=limit, timeout_s=args.timeout, memory_limit=settings.query_memory_limit,
                         threads=settings.query_threads, spill_bytes=settings.query_spill_bytes,
                         max_bytes=2**34 if out else settings.query_max_bytes)
    with open_dataset(args.dataset) as local:  # an object-store dataset is queried in a local copy
        files = [p.resolve() for p in (*local.files.scored, *local.files.rejected, *local.files.eval)]
        # The sandbox's root: the deepest folder holding every file (symlinked parts included); the
        # spill goes to a temporary folder, never into the user's dataset (which may be read-only).
        root = Path(os.path.commonpath(files)) if files else local.root.resolve()
        root = root if root.is_dir() else root.parent
        with tempfile.TemporaryDirectory(prefix="beacon-query-") as spill:
            result = run_query(args.sql, local.files, root=root, limits=limits, spill_dir=Path(spill) / "spill")
    more = f"; more rows exist (--limit {limit})" if result.truncated else ""
    if out is not None:
        write_rows(result.columns, result.rows, out)
        print(f"{len(result.rows)} rows -> {out}{more}")
    else:
        print(table(result.columns, result.rows))
        print(f"({len(result.rows)} rows, {result.elapsed_ms:.0f} ms{more})")
    return 0


def table(columns: list[str], rows: list[list], max_width: int = 48) -> str:
    """A plain-text table; long cells are cut with an ellipsis."""
    def cell(value) -> str:
        if value is None:
            text = "NULL"
        elif isinstance(value, float):
            text = f"{value:.4g}"  # the exact value: --out
        else:
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        text = text.replace("\n", "\\n")
        return text if len(text) <= max_width else text[:max_width - 1] + "…"

    body = [[cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in body]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in body]
    return "\n".join(lines)


def write_rows(columns: list[str], rows: list[list], out: Path) -> None:
    """The answer as CSV (nested values as JSON text), JSON (a list of objects) or Parquet."""
    import pyarrow as pa

    out.parent.mkdir(parents=True, exist_ok=True)
    kind = out.suffix.lower()
    if kind == ".json":
        if len(set(columns)) != len(columns):
            raise ValueError(f"the query's columns are not unique ({columns}); name them with AS for JSON")
        out.write_text(json.dumps([dict(zip(columns, r)) for r in rows], ensure_ascii=False, indent=1) + "\n")
        return
    arrays = [pa.array([r[i] for r in rows]) for i in range(len(columns))]
    if kind == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_arrays(arrays, names=columns), out)
        return
    import pyarrow.csv as pacsv

    flat = [pa.array([None if v is None else json.dumps(v, ensure_ascii=False) for v in a.to_pylist()])
            if pa.types.is_nested(a.type) else a for a in arrays]
    pacsv.write_csv(pa.Table.from_arrays(flat, names=columns), out)
