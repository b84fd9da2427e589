"""The dataset's manifest, built inside the graph, and the commit that makes a curated dataset visible.

``WriteManifest`` counts what the graph read, scored and rejected, takes the score quantiles and the
thresholds the policy applied, checks that nothing was lost (``input == scored + rejected``), and
writes ``manifest.json`` into the staging folder: one place builds every figure the manifest carries.
``commit`` adds the run's wall-clock timings (known only once the pipeline has finished) and swaps the
staging folder into place.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline.config import CurateConfig
from schemas import storage
from pipeline.quantiles import summary
from pipeline.inputs import InputSpec
from schemas import Counts, Manifest
from scoring.risk import AT_RISK
from schemas.manifest import (HISTOGRAM_SCORES, MANIFEST_FILE, HistogramBin, InputFile, histogram,
                              histogram_bin, histogram_edges)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Identity:
    """What the driver knows of the dataset before the graph runs."""

    dataset_id: str
    input_digest: str
    inputs: list[InputFile]
    config: CurateConfig
    runner: str

    @classmethod
    def of(cls, specs: list[InputSpec], config: CurateConfig, runner: str) -> "Identity":
        h = hashlib.sha256()
        for spec in specs:
            h.update(spec.sha256.encode())
        digest = h.hexdigest()
        return cls(dataset_id=dataset_id(digest, config.config_hash()), input_digest=digest,
                   inputs=[InputFile(path=s.path, sha256=s.sha256, bytes=s.size) for s in specs],
                   config=config, runner=runner)


def dataset_id(input_digest: str, config_hash: str) -> str:
    """The same inputs with the same scoring config are the same dataset."""
    return "ds_" + hashlib.sha256(f"{input_digest}:{config_hash}".encode()).hexdigest()[:12]


def histogram_edges_of(quantiles: list) -> dict[str, tuple[float, list[float]]]:
    """score -> (min, upper bin edges), from the quantile points (whose first and last are the exact
    min and max), for the scores the stats show."""
    return {name: (points[0], histogram_edges(points[0], points[-1]))
            for name, points in quantiles if name in HISTOGRAM_SCORES and points}


def score_bins(row: dict, edges: dict[str, tuple[float, list[float]]]):
    """((score, bin index), 1) for each histogram score of a scored row."""
    for name, (_, upper) in edges.items():
        yield (name, histogram_bin(upper, float(row[name]))), 1


def build_manifest(identity: Identity, *, read: int, reasons: list, stages: list, quantiles: list,
                   thresholds: list, at_risk: int = 0, bins: list | None = None) -> Manifest:
    """The manifest from the graph's counts; raises RuntimeError if a record was lost on the way."""
    from scoring.models import beacon_version, model_ref

    by_reason = {k: int(v) for k, v in sorted(reasons)}
    rejected_by_stage = {k: int(v) for k, v in sorted(stages)}
    scored, rejected = sum(by_reason.values()), sum(rejected_by_stage.values())
    if read != scored + rejected:  # a record lost on the way is a bug, never a silent gap
        raise RuntimeError(f"count identity broken: read {read} records but scored {scored} + rejected {rejected}")
    config = identity.config
    return Manifest(
        dataset_id=identity.dataset_id,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        beacon_version=beacon_version(),
        inputs=identity.inputs,
        input_digest=identity.input_digest,
        format=config.format,
        counts=Counts(input=read, scored=scored, rejected=rejected, kept=by_reason.get("kept", 0),
                      by_reason=by_reason, at_risk=at_risk),
        rejected_by_stage=rejected_by_stage,
        quantiles={name: summary(points) for name, points in sorted(quantiles) if points},
        histograms=_histograms(quantiles, bins or []),
        thresholds={k: v for t in thresholds for k, v in t.items() if v is not None},
        config=config.model_dump(mode="json"),
        config_hash=config.config_hash(),
        models={"lm": model_ref(config.model, "lm"), "encoder": model_ref(config.encoder, "encoder")},
        runner=identity.runner,
    )


def _histograms(quantiles: list, bins: list) -> dict[str, list[HistogramBin]]:
    counts = dict(bins)
    return {name: histogram(lo, upper, [int(counts.get((name, i), 0)) for i in range(len(upper))])
            for name, (lo, upper) in sorted(histogram_edges_of(quantiles).items())}


def _write(path: str, identity: Identity, read: int, reasons: list, stages: list, quantiles: list,
           thresholds: list, at_risk: int, bins: list) -> None:
    manifest = build_manifest(identity, read=read, reasons=reasons, stages=stages, quantiles=quantiles,
                              thresholds=thresholds, at_risk=at_risk, bins=bins)
    with FileSystems.create(path) as f:
        f.write(manifest.model_dump_json(indent=2).encode())


class WriteManifest(beam.PTransform):
    """``{read: one count of the records read, scored: scored rows, rejected: dead letters,
    quantiles: (name, points), thresholds: one dict}`` -> ``<staging>/manifest.json``."""

    def __init__(self, staging: str, identity: Identity):
        super().__init__()
        self._path = f"{staging.rstrip('/')}/{MANIFEST_FILE}"
        self._identity = identity

    def expand(self, inputs):
        count = beam.combiners.Count
        read = inputs["read"]
        reasons = (inputs["scored"] | "Reason" >> beam.Map(lambda r: r["reason"])
                   | "CountReasons" >> count.PerElement())
        stages = (inputs["rejected"] | "Stage" >> beam.Map(lambda r: r["stage"])
                  | "CountStages" >> count.PerElement())
        at_risk = (inputs["scored"] | "AtRisk" >> beam.Filter(lambda r: r["keep"] and r["risk"] >= AT_RISK)
                   | "CountAtRisk" >> count.Globally())
        # The histograms the stats show, in the graph: bins from the quantiles' min and max.
        edges = (inputs["quantiles"] | "HistogramEdges" >> beam.combiners.ToList()
                 | "EdgesOf" >> beam.Map(histogram_edges_of))
        bins = (inputs["scored"]
                | "Bin" >> beam.FlatMap(score_bins, beam.pvalue.AsSingleton(edges))
                | "CountBins" >> beam.CombinePerKey(sum))
        identity = self._identity
        return (
            read.pipeline
            | "ManifestPath" >> beam.Create([self._path])
            | "Write" >> beam.Map(
                _write, identity, beam.pvalue.AsSingleton(read), beam.pvalue.AsList(reasons),
                beam.pvalue.AsList(stages), beam.pvalue.AsList(inputs["quantiles"]),
                beam.pvalue.AsList(inputs["thresholds"]), beam.pvalue.AsSingleton(at_risk),
                beam.pvalue.AsList(bins)))


_PART = re.compile(r"part-(\d+)-of-(\d+)\.parquet")


def _parts(folder: str | Path) -> list[str]:
    """The sink's shards directly in ``folder`` (``part-NNNNN-of-MMMMM.parquet``; never Beam's
    temporary files below it), checked complete: every shard of the count their names give.

    Raises:
        RuntimeError: a shard is missing (the run's files are not what its sink wrote).
    """
    found: dict[int, str] = {}
    totals: set[int] = set()
    for path in storage.list_files(folder):
        match = _PART.fullmatch(storage.relative(path, folder))
        if match:
            found[int(match[1])] = path
            totals.add(int(match[2]))
    if found and (len(totals) != 1 or sorted(found) != list(range(totals.pop()))):
        raise RuntimeError(f"the shards under {folder} are incomplete or mixed: {sorted(found)}")
    return [found[k] for k in sorted(found)]


def _with_files(staging: str | Path, manifest: Manifest, base: str | Path) -> Manifest:
    """``manifest`` naming the staged data files, relative to ``base`` (the rejected ones only when
    there is a rejected record: an empty dataset's writer still leaves an empty file)."""
    files = {role: [storage.relative(f, base) for f in _parts(storage.join(staging, role))]
             for role in ("scored", "rejected")}
    if manifest.counts.rejected == 0:
        files["rejected"] = []
    if manifest.counts.scored and not files["scored"]:
        raise RuntimeError(f"the run scored {manifest.counts.scored} facts but wrote no scored file under {staging}")
    return manifest.model_copy(update={"files": files})


def commit(staging: Path, out: Path, timings: dict[str, float]) -> Manifest:
    """Record ``timings`` and the data files in the staged manifest, then swap the staging folder
    into ``out`` (a local folder).

    The old dataset is removed only after the new one is in place, so readers never see half of one.
    """
    manifest = Manifest.read(staging).model_copy(update={"timings": timings})
    if manifest.counts.rejected == 0:
        shutil.rmtree(staging / "rejected", ignore_errors=True)
    manifest = _with_files(staging, manifest, staging)
    manifest.write(staging)
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return manifest


# On an object store there is no rename: a run writes its files under a prefix of its own inside the
# dataset, and the manifest, written last in one PUT, is the commit.
RUNS_PREFIX = "_runs"
# A run prefix no manifest names, untouched this long, is a killed run's: the next commit removes it.
# (A younger one may be another run still writing.)
STALE_RUN_S = 6 * 3600


def remote_staging(out: str) -> str:
    """The run-unique prefix a run into ``out`` (a URL) writes its files under."""
    return storage.join(out, RUNS_PREFIX, uuid.uuid4().hex[:12])


def remote_leftovers(out: str) -> list[str]:
    """What in ``out`` (a URL) makes it a non-empty output: anything but the files of runs that never
    committed (a run killed before its manifest leaves those, and they are removed later)."""
    files = storage.list_files(out)
    if Manifest.exists_in(out):
        return files
    prefix = storage.join(out, RUNS_PREFIX) + "/"
    return [f for f in files if not f.startswith(prefix)]


def commit_remote(staging: str, out: str, timings: dict[str, float]) -> Manifest:
    """Commit a run staged under ``staging`` (inside ``out``, a URL) by writing ``out/manifest.json``
    last, naming exactly the run's shards (checked complete); then remove what it replaced: the
    previous manifest's files, the old local-style ``scored/`` and ``rejected/`` folders, and run
    prefixes no manifest names that are older than ``STALE_RUN_S``. Other files under ``out`` are
    left alone.

    A reader goes through the manifest, so before the manifest's PUT it sees the old dataset whole
    and after it the new one. Files are only ever deleted after a newer manifest replaced the one
    naming them, so concurrent runs into one prefix end with the last one's dataset, whole. A reader
    that read the old manifest just before a swap may find its files gone a moment later. Nothing
    after the PUT raises: a failed clean-up is logged and retried by the next commit.
    """
    staged = Manifest.read(staging).model_copy(update={"timings": timings})
    manifest = _with_files(staging, staged, out)
    try:
        old = Manifest.read(out)
    except (FileNotFoundError, ValueError):
        old = None
    manifest.write(out)  # the commit
    try:
        _remove_replaced(out, staging, manifest, old)
    except Exception as e:  # noqa: BLE001 - the dataset is committed; leftovers are the next commit's
        log.warning("committed %s, but could not remove the files it replaced: %s", out, e)
    return manifest


def publish(dataset: Path, out: str) -> Manifest:
    """Copies the committed local dataset ``dataset`` to ``out`` (a URL) and commits it there as a run
    into ``out`` would be (``commit_remote``): its files under a run prefix of their own, the manifest
    last. The same dataset id and rows; a reader of ``out`` sees what it held before, or this whole."""
    manifest = Manifest.read(dataset)
    staging = remote_staging(out)
    for names in manifest.files.values():
        for name in names:
            storage.copy_file(dataset / name, storage.join(staging, name))  # scored/part-…: the same layout
    manifest.write(staging)
    return commit_remote(staging, out, manifest.timings)


def _remove_replaced(out: str, staging: str, manifest: Manifest, old: Manifest | None) -> None:
    keep = {storage.join(out, n) for names in manifest.files.values() for n in names}
    doomed = {storage.join(out, n) for names in old.files.values() for n in names} if old is not None else set()
    runs, local_layout = storage.join(out, RUNS_PREFIX) + "/", (storage.join(out, "scored") + "/",
                                                                 storage.join(out, "rejected") + "/")
    by_run: dict[str, list[str]] = {}
    newest: dict[str, float] = {}
    for path, mtime in storage.list_files_with_times(out):  # one listing of the prefix
        if path.startswith(runs):
            run = path[len(runs):].split("/", 1)[0]
            by_run.setdefault(run, []).append(path)
            newest[run] = max(newest.get(run, 0.0), mtime or 0.0)
        elif path.startswith(local_layout):
            doomed.add(path)  # a dataset of the local layout, copied up, that this one replaces
    this_run, now = staging.rstrip("/").rsplit("/", 1)[-1], time.time()
    for run, paths in by_run.items():
        if run == this_run:
            doomed |= set(paths)  # the staged manifest and any temp files; its shards are kept
        elif now - newest[run] > STALE_RUN_S:
            doomed |= set(paths)
    storage.delete(sorted(doomed - keep))
