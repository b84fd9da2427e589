"""Outputs trained here, published to an object store: what a job with ``output_url`` and
`beacon run --out s3://…` leave behind. ``URL/dataset/`` is committed as `beacon curate --out URL`
commits (its files under a run prefix, the manifest last: ``pipeline.manifest.publish``), ``URL/run/``
is the run folder without its checkpoints, ``files.json`` last (``trainer.runs.publish_run``), and any
other named file (the report) is copied beside them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from schemas import storage


def publish_outputs(dataset_dir: Path, run_dir: Path, target: str, *, job_id: str | None = None,
                    files: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Publishes the committed dataset ``dataset_dir`` and the run ``run_dir`` under ``target``.
    Returns what was published: the URL, the dataset id and how many run files."""
    from pipeline.manifest import publish
    from trainer.runs import publish_run

    manifest = publish(dataset_dir, storage.join(target, "dataset"))
    run_files = publish_run(run_dir, storage.join(target, "run"), job_id=job_id)
    for path in files:
        storage.copy_file(path, storage.join(target, path.name))
    return {"url": target, "dataset_id": manifest.dataset_id, "run_files": len(run_files)}
