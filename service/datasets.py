"""Datasets on disk: the data root's layout, path confinement, and statistics computed by DuckDB.

Layout under the data root (``BEACON_DATA_DIR``)::

    uploads/<id><ext>          an uploaded file (a dataset of kind 'raw')
    imports/...                files an operator placed there (a job may name one by relative path)
    models/<name>/             models an operator placed there (a job may name one as models/<name>)
    datasets/<id>/             a scored dataset: scored/*.parquet, rejected/*.parquet, manifest.json
    jobs/<id>/run/             the job's training run (adapter/, checkpoints/, metrics.json, eval.parquet)
    jobs/<id>/logs/            one log per stage process
    tmp/query-<id>/            a running query's spill (capped, removed when it ends)

Every path derived from a request goes through ``confined``; ids are server generated.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas import Manifest, ScoringSpec, storage
from schemas.config_file import first_line
from schemas.manifest import histogram, histogram_edges, local_folder
from service.jsonsafe import dumps

TOP_CONFLICTS = 20
STATS_VERSION = 4  # v2: quantiles from the manifest, DuckDB's histogram, the drift definition named; v3: risk;
# v4: histograms from the manifest, the pipeline's bins


class DatasetUnreadable(ValueError):
    """A registered dataset whose files exist but cannot be read as scored Parquet."""


class PathError(ValueError):
    """A requested path that is not a file inside its root (``..``, absolute, symlink out, missing)."""


def confined(root: Path, relative: str, *, must_exist: bool = True) -> Path:
    """``root / relative`` resolved, if it stays inside ``root`` (symlinks followed).

    Raises:
        PathError: ``relative`` is absolute, climbs with ``..``, holds a NUL, or resolves outside ``root``.
    """
    if not relative or "\x00" in relative:
        raise PathError("empty path or NUL byte in path")
    rel = Path(relative)
    if rel.is_absolute() or relative.startswith(("/", "\\")):
        raise PathError(f"absolute path {relative!r} not allowed; give a relative path")
    if any(part == ".." for part in rel.parts) or any(part == ".." for part in relative.split("\\")):
        raise PathError(f"path {relative!r} climbs out with '..'")
    base = root.resolve()
    try:
        target = (base / rel).resolve(strict=must_exist)
    except (FileNotFoundError, NotADirectoryError):
        raise PathError(f"{relative!r} does not exist") from None
    except (OSError, RuntimeError) as e:  # a symlink loop, a name too long
        raise PathError(f"{relative!r} cannot be resolved: {e}") from None
    if not target.is_relative_to(base):
        raise PathError(f"{relative!r} leads outside its root (a symlink?)")
    return target


@dataclass(frozen=True)
class Layout:
    """Where everything lives under the data root."""

    root: Path

    @classmethod
    def at(cls, data_dir: Path) -> "Layout":
        layout = cls(Path(data_dir).resolve())
        for sub in ("uploads", "imports", "models", "datasets", "jobs"):
            (layout.root / sub).mkdir(parents=True, exist_ok=True)
        return layout

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    @property
    def imports(self) -> Path:
        return self.root / "imports"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def dataset_dir(self, dataset_id: str) -> Path:
        return self.root / "datasets" / dataset_id

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def run_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "run"

    def resolve(self, relative: str) -> Path:
        """A registered dataset's stored path (relative to the root), checked again on every use."""
        return confined(self.root, relative)


def scored_dataset_id(source_dataset_id: str, config_hash: str) -> str:
    """The id of the curation of one upload with one curate config: the same pair is curated once."""
    digest = hashlib.sha256(f"{source_dataset_id}:{config_hash}".encode()).hexdigest()
    return f"dst_{digest[:16]}"


@dataclass(frozen=True)
class ScoredFiles:
    """The Parquet files behind a scored dataset's views (empty lists when there are none)."""

    scored: list[Path]
    rejected: list[Path]
    eval: list[Path]

    def signature(self) -> str:
        """Changes when any file changes (the cache key of stats)."""
        h = hashlib.sha256()
        for path in [*self.scored, *self.rejected, *self.eval]:
            st = path.stat()
            h.update(f"{path}:{st.st_size}:{st.st_mtime_ns};".encode())
        return h.hexdigest()[:16]


def scored_files(layout: Layout, dataset: dict[str, Any], run_dir: Path | None) -> ScoredFiles:
    """The files of a scored dataset (and of the evaluation of the job that made it, if any).

    Raises:
        PathError: the dataset folder escapes the root or is gone.
    """
    return _files_of(layout.resolve(dataset["path"]), run_dir, within=layout.root)


def _files_of(dataset_dir: Path, run_dir: Path | None, *, within: Path | None = None,
              manifest: Manifest | None = None) -> ScoredFiles:
    """The Parquet files of a dataset folder (and its run's eval.parquet); with ``within``, only those
    that really lie under it (a symlink out of the data root is not followed). ``manifest``: the
    folder's, already read (default: read here)."""
    def listed(paths: list[Path]) -> list[Path]:
        return [p for p in paths if p.is_file() and (within is None or p.resolve().is_relative_to(within))]

    def parquet(sub: Path) -> list[Path]:
        return listed(sorted(sub.glob("*.parquet"))) if sub.is_dir() else []

    def named(names: list[str]) -> list[Path]:  # a name leading out of the folder is not followed
        base = dataset_dir.resolve()
        paths = [dataset_dir / n for n in names]
        missing = [n for n, p in zip(names, paths) if not p.is_file()]
        if missing:
            raise DatasetUnreadable(f"the dataset's manifest names {len(missing)} file(s) that are not there, "
                                    f"e.g. {missing[0]}; curate it again")
        return [p for p in listed(paths) if p.resolve().is_relative_to(base)]

    evals = listed([run_dir / "eval.parquet"]) if run_dir is not None else []
    try:
        files = (manifest or Manifest.read(dataset_dir)).files
    except (OSError, ValueError):
        files = {}
    if files:  # the files the manifest names (an object-store run's live under a prefix of their own)
        return ScoredFiles(scored=named(files.get("scored", [])), rejected=named(files.get("rejected", [])),
                           eval=evals)
    return ScoredFiles(scored=parquet(dataset_dir / "scored"), rejected=parquet(dataset_dir / "rejected"),
                       eval=evals)


def read_manifest(layout: Layout, dataset: dict[str, Any]) -> Manifest | None:
    """The registered dataset's manifest, or None when its folder or manifest is gone or damaged."""
    try:
        return Manifest.read(layout.resolve(dataset["path"]))
    except (PathError, OSError, ValueError):
        return None


# --- statistics ------------------------------------------------------------------------------------

# (dataset id, file signature) -> the stats as JSON bytes, ready to send.
_cache: dict[tuple[str, str], bytes] = {}
_cache_lock = threading.Lock()


def cached_stats(dataset: dict[str, Any], files: ScoredFiles) -> bytes | None:
    """The stats from this process's memory, if computed before: no I/O beyond a stat() per file."""
    with _cache_lock:
        return _cache.get((dataset["id"], files.signature()))


def dataset_stats(layout: Layout, dataset: dict[str, Any], files: ScoredFiles, *, threads: int,
                  use_cache: bool = True) -> bytes:
    """``build_stats`` as JSON bytes, cached.

    A scored dataset never changes once written, so stats are computed once per file signature and
    kept in memory and beside the data (``.stats-v<STATS_VERSION>.json``), where other processes find them: the
    worker computes them right after curation, the API reads them.
    """
    signature = files.signature()
    key = (dataset["id"], signature)
    if use_cache:
        with _cache_lock:
            if key in _cache:
                return _cache[key]
        cached = _read_cached(layout, dataset, signature)
        if cached is not None:
            with _cache_lock:
                _cache[key] = cached
            return cached
    encoded = dumps(build_stats(files, read_manifest(layout, dataset), threads=threads)).encode()
    if use_cache:
        _write_cached(layout, dataset, encoded)
        with _cache_lock:
            _cache[key] = encoded
    return encoded


def build_stats(files: ScoredFiles, manifest: Manifest | None, *, threads: int) -> dict[str, Any]:
    """What ``GET /datasets/{id}/stats`` and ``beacon stats`` answer (``DatasetStats``), uncached.

    Quantiles and histograms are the manifest's (computed once, in the pipeline; DuckDB computes the
    histograms of a dataset curated before they were); the rest is DuckDB over the Parquet.

    Raises:
        PathError: there are no scored files. DatasetUnreadable: a Parquet file cannot be read.
    """
    signature = files.signature()
    stats = compute_stats(files, threads=threads, histograms=manifest.histograms if manifest else None)
    quantiles = manifest.quantiles if manifest else {}
    for score in ("drift", "interference", "risk"):
        if stats.get(score) is not None:
            stats[score]["quantiles"] = quantiles.get(score, {})
    # The manifest says which definition `drift` holds, for datasets curated before the column too.
    stats["drift"]["definition"] = (manifest.scoring if manifest else ScoringSpec()).drift_definition
    stats["manifest"] = manifest.model_dump(include={"dataset_id", "created_at", "counts", "rejected_by_stage",
                                                     "thresholds", "config_hash"}) if manifest else None
    stats["signature"] = signature
    return stats


@dataclass(frozen=True)
class LocalDataset:
    """A curated dataset folder on disk, or a `beacon run` folder (``dataset/`` + ``run/``)."""

    root: Path  # the folder given: every file below lies under it
    dataset_dir: Path
    run_dir: Path | None
    files: ScoredFiles
    manifest: Manifest


@contextlib.contextmanager
def open_dataset(path: str | Path) -> Iterator[LocalDataset]:
    """``local_dataset(path)``, or for an object-store URL, the dataset its manifest names copied into
    a temporary folder (through Beam's filesystems) for as long as the block runs.

    DuckDB reads the copy: its own S3 reader (the httpfs extension) would have to be downloaded at run
    time, which fails offline. The copy is what one read of the manifest names.

    Raises:
        FileNotFoundError / ValueError: as ``local_dataset``, or the URL's scheme has no filesystem.
    """
    if not storage.is_url(path):
        yield local_dataset(path)
        return
    with tempfile.TemporaryDirectory(prefix="beacon-dataset-") as tmp:
        yield local_dataset(stage_dataset(str(path), Path(tmp)))


def stage_dataset(url: str, into: Path) -> Path:
    """Copies the dataset at ``url`` (its manifest and the files it names) into the folder ``into``:
    the manifest is read once, so the copy is one commit's dataset even while another run commits."""
    dataset_url, manifest = Manifest.locate_read(url)
    manifest.write(into)
    names = [storage.relative(f, dataset_url) for role in ("scored", "rejected")
             for f in manifest.data_files(dataset_url, role)]
    for name in names:
        target = (into / name).resolve()
        if not target.is_relative_to(into.resolve()):
            raise ValueError(f"{dataset_url}: the manifest names a file outside the dataset: {name!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with storage.open_read(storage.join(dataset_url, name)) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return into


def local_dataset(path: str | Path) -> LocalDataset:
    """The files of the dataset in ``path`` (for the commands, which have no data root to confine to).

    Raises:
        FileNotFoundError: ``path`` holds no manifest, neither itself nor ``path/dataset`` (names it).
        ValueError: the manifest is damaged.
    """
    root = local_folder(path, "dataset")
    dataset_dir, manifest = Manifest.locate_read(root)
    run_dir = root / "run" if dataset_dir != root else None
    return LocalDataset(root=root, dataset_dir=dataset_dir, run_dir=run_dir, manifest=manifest,
                        files=_files_of(dataset_dir, run_dir, manifest=manifest))


def _stats_path(layout: Layout, dataset: dict[str, Any]) -> Path:
    return layout.resolve(dataset["path"]) / f".stats-v{STATS_VERSION}.json"


def _read_cached(layout: Layout, dataset: dict[str, Any], signature: str) -> bytes | None:
    try:
        raw = _stats_path(layout, dataset).read_bytes()
        return raw if json.loads(raw).get("signature") == signature else None
    except (OSError, ValueError, PathError, AttributeError):
        return None


def _write_cached(layout: Layout, dataset: dict[str, Any], encoded: bytes) -> None:
    try:
        path = _stats_path(layout, dataset)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(encoded)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only dataset folder: the in-memory cache still serves


def compute_stats(files: ScoredFiles, *, threads: int, histograms: dict | None = None) -> dict[str, Any]:
    """Stats of the scored Parquet files by DuckDB (no user SQL here, so no lock-down needed);
    ``histograms`` (the manifest's) are used as they are, the missing ones computed."""
    import duckdb

    con = duckdb.connect()
    try:
        con.execute(f"SET threads = {int(threads)}")
        if not files.scored:
            raise PathError("the dataset has no scored Parquet files")
        con.execute(f"CREATE VIEW scored AS SELECT * FROM read_parquet({sql_paths(files.scored)})")
        known = {name: [b.model_dump() for b in bins] for name, bins in (histograms or {}).items()}
        return _stats(con, rejected=_count(con, files.rejected), known=known)
    except duckdb.Error as e:  # a damaged or foreign Parquet file: the dataset's problem, not the server's
        raise DatasetUnreadable(f"the dataset's Parquet files cannot be read: {first_line(e)}") from None
    finally:
        con.close()


def sql_paths(paths: list[Path]) -> str:
    """A DuckDB list literal of paths (a view's definition cannot take parameters)."""
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def _count(con, paths: list[Path]) -> int:
    if not paths:
        return 0
    return con.execute("SELECT count(*) FROM read_parquet(?)", [[str(p) for p in paths]]).fetchone()[0]


def _stats(con, *, rejected: int, known: dict[str, list[dict]]) -> dict[str, Any]:
    (rows, kept, d_lo, d_hi, d_mean, i_lo, i_hi, i_mean, conflicted) = con.execute(
        """
        SELECT count(*), count(*) FILTER (WHERE keep),
               min(drift), max(drift), avg(drift), min(interference), max(interference), avg(interference),
               count(*) FILTER (WHERE len(conflicts_with) > 0)
        FROM scored
        """).fetchone()
    by_reason = {r: {"n": n, "drift_mean": m, "interference_mean": i} for r, n, m, i in con.execute(
        "SELECT reason, count(*), avg(drift), avg(interference) FROM scored GROUP BY reason ORDER BY reason"
    ).fetchall()}
    return {
        "rows": rows,
        "risk": _risk(con, known),
        "counts": {"scored": rows, "kept": kept, "rejected": rejected,
                   "by_reason": {r: v["n"] for r, v in by_reason.items()}, "with_conflicts": conflicted},
        "by_reason": by_reason,
        "drift": {"min": d_lo, "max": d_hi, "mean": d_mean,
                  "histogram": known.get("drift") or _histogram(con, "drift", d_lo, d_hi)},
        "interference": {"min": i_lo, "max": i_hi, "mean": i_mean,
                         "histogram": known.get("interference") or _histogram(con, "interference", i_lo, i_hi)},
        "top_conflicts": _top_conflicts(con) if conflicted else [],
    }


def _risk(con, known: dict[str, list[dict]]) -> dict[str, Any] | None:
    """How many kept facts are at risk of not being learned (None: a dataset curated before ``risk``)."""
    from scoring.risk import AT_RISK

    if "risk" not in {row[0] for row in con.execute("DESCRIBE scored").fetchall()}:
        return None
    lo, hi, mean, at_risk = con.execute(
        "SELECT min(risk), max(risk), avg(risk), count(*) FILTER (WHERE keep AND risk >= $cut) FROM scored",
        {"cut": AT_RISK}).fetchone()
    return {"threshold": AT_RISK, "at_risk": at_risk, "min": lo, "max": hi, "mean": mean,
            "histogram": known.get("risk") or _histogram(con, "risk", lo, hi)}


def _histogram(con, column: str, lo: float | None, hi: float | None) -> list[dict]:
    """``schemas.manifest.histogram_edges`` bins of ``column`` over [min, max], counted by DuckDB's
    ``histogram`` (the pipeline's way of counting them; for datasets whose manifest has none)."""
    if lo is None:
        return []
    edges = histogram_edges(lo, hi)
    (counts,) = con.execute(f"SELECT histogram({column}, $edges::DOUBLE[]) FROM scored", {"edges": edges}).fetchone()
    return [b.model_dump() for b in histogram(lo, edges, [int(counts.get(e, 0)) for e in edges])]


def _top_conflicts(con) -> list[dict[str, Any]]:
    """The conflicting pairs whose prompts are closest (the lower of the two facts' interference)."""
    rows = con.execute(
        f"""
        WITH ends AS MATERIALIZED (
            SELECT fact_id, prompt, target, interference, conflicts_with FROM scored
            WHERE len(conflicts_with) > 0
        ), pairs AS (
            SELECT DISTINCT least(fact_id, other) AS a, greatest(fact_id, other) AS b
            FROM (SELECT fact_id, unnest(conflicts_with) AS other FROM ends)
        )
        SELECT p.a, ea.prompt, ea.target, ea.interference, p.b, eb.prompt, eb.target, eb.interference
        FROM pairs p LEFT JOIN ends ea ON ea.fact_id = p.a LEFT JOIN ends eb ON eb.fact_id = p.b
        ORDER BY least(coalesce(ea.interference, eb.interference), coalesce(eb.interference, ea.interference))
                 DESC NULLS LAST, p.a, p.b
        LIMIT {TOP_CONFLICTS}
        """).fetchall()
    return [{"a": {"fact_id": a, "prompt": pa_, "target": ta, "interference": ia},
             "b": {"fact_id": b, "prompt": pb, "target": tb, "interference": ib},
             "interference": min(x for x in (ia, ib, float("inf")) if x is not None)
             if ia is not None or ib is not None else None}
            for a, pa_, ta, ia, b, pb, tb, ib in rows]


# --- artifacts -------------------------------------------------------------------------------------

def list_artifacts(job_dir: Path) -> list[dict[str, Any]]:
    """Files a job produced (run/ without its checkpoints, logs/), relative to the job folder."""
    found = []
    for sub in ("run", "logs"):
        base = job_dir / sub
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            rel = path.relative_to(job_dir)
            if (not path.is_file() or path.is_symlink() or "checkpoints" in rel.parts
                    or any(part.startswith(".") for part in rel.parts)):
                continue
            found.append({"path": rel.as_posix(), "bytes": path.stat().st_size})
    return found
