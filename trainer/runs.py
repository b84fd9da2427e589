"""A run folder's files, read without torch: what the service and ``beacon train`` ask of a run.

``R/config.json`` (the config, dataset id and manifest hash; compared on every resume),
``R/checkpoints/checkpoint-N/`` (adapter, optimizer, scheduler, RNG, trainer state, ``beacon_run.json``),
``R/adapter/`` (peft ``save_pretrained``), ``R/train_summary.json``, ``R/trace.parquet``
(``trainer.trace``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

RUN_CONFIG = "config.json"
CHECKPOINT_MARKER = "beacon_run.json"
SUMMARY = "train_summary.json"


def last_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The newest checkpoint whose save finished: its trainer_state.json parses and Beacon's marker,
    written after the trace, is there (a kill between the two resumes from the checkpoint before)."""
    found = _complete_checkpoints(checkpoints)
    return max(found, key=lambda x: x[0])[1] if found else None


def _complete_checkpoints(checkpoints: Path) -> list[tuple[int, Path, dict]]:
    if not checkpoints.is_dir():
        return []
    found = []
    for path in checkpoints.iterdir():
        m = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if not m or not path.is_dir():
            continue
        state = read_json(path / "trainer_state.json")
        if state is not None and (path / CHECKPOINT_MARKER).is_file():  # else: killed while saving
            found.append((int(m.group(1)), path, state))
    return found


def checkpoint_step(path: Path) -> int:
    """The optimizer step a ``checkpoint-N`` folder was saved at."""
    return int(path.name.rsplit("-", 1)[-1])


def training_progress(run_dir: str | Path) -> tuple[int, int]:
    """(step, max_steps) of the run's newest complete checkpoint; (0, 0) before the first."""
    found = _complete_checkpoints(Path(run_dir) / "checkpoints")
    if not found:
        return 0, 0
    step, _, state = max(found, key=lambda x: x[0])
    return step, int(state.get("max_steps") or 0)


def is_trained(run_dir: str | Path) -> bool:
    """Whether the run reached its last step (or stop_when_learned ended it) and saved its adapter."""
    run_dir = Path(run_dir)
    summary = read_json(run_dir / SUMMARY)
    return bool(summary and (summary.get("global_step") == summary.get("max_steps")
                             or summary.get("stopped_when_learned"))
                and (run_dir / "adapter" / "adapter_config.json").is_file())


def read_json(path: Path) -> Any:
    """A JSON file's content, or None if it is missing or does not parse."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


PUBLISHED = "files.json"  # a published run's index, written last: the run's files and their sizes


def publish_run(run_dir: Path, out: str, *, job_id: str | None = None) -> list[dict[str, Any]]:
    """Copies the run folder ``run_dir`` to ``out`` (a URL or a folder) without its checkpoints (they
    are for resuming here, and the bulk of a run), then writes ``out/files.json`` naming every file
    copied with its size: a reader that finds the index finds the run whole. Publishing again (a
    rerun, a retried job, an evaluation) removes the old index first, so no index names files being
    overwritten, and then the files the old index named that the new one does not. Returns the
    index's entries."""
    from schemas import storage

    index_path = storage.join(out, PUBLISHED)
    old = _published_files(index_path)
    if old is not None:
        storage.delete([index_path])
    entries = []
    for path in sorted(p for p in Path(run_dir).rglob("*") if p.is_file()):
        relative = path.relative_to(run_dir).as_posix()
        if relative.split("/", 1)[0] == "checkpoints" or relative == PUBLISHED:
            continue
        entries.append({"path": relative, "bytes": storage.copy_file(path, storage.join(out, relative))})
    index = {"job_id": job_id, "files": entries}
    storage.write_bytes(index_path, json.dumps(index, indent=2).encode())
    gone = sorted((old or set()) - {e["path"] for e in entries})
    storage.delete([storage.join(out, p) for p in gone if _inside(p)])
    return entries


def _published_files(index_path: str) -> set[str] | None:
    """The paths the index at ``index_path`` names; None where there is none (or it does not parse)."""
    from schemas import storage

    if not storage.exists(index_path):
        return None
    try:
        return {e["path"] for e in json.loads(storage.read_bytes(index_path)).get("files", [])}
    except (ValueError, TypeError, KeyError, AttributeError):
        return set()


def _inside(relative: str) -> bool:
    """Whether an index's path stays inside the run (not absolute, no ``..``)."""
    from pathlib import PurePosixPath

    path = PurePosixPath(relative)
    return not path.is_absolute() and ".." not in path.parts


def work_folder(url: str, work: str | Path | None = None) -> Path:
    """The local folder a run published to ``url`` is trained (and resumed) in: ``work`` if given,
    else ``$BEACON_WORK_DIR/<name>-<hash of url>/``, by default under ``~/.cache/beacon/runs/``. The
    same URL always maps to the same folder, so rerunning the command resumes there."""
    if work is not None:
        return Path(work)
    root = Path(os.environ.get("BEACON_WORK_DIR") or Path.home() / ".cache" / "beacon" / "runs").expanduser().resolve()
    url = url.rstrip("/")
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", url.rsplit("/", 1)[-1])[:40] or "run"
    return root / f"{name}-{hashlib.sha256(url.encode()).hexdigest()[:12]}"


def read_published_config(url: str) -> dict[str, Any] | None:
    """The ``config.json`` of the run published at ``url``, or None where none is there."""
    from schemas import storage

    path = storage.join(url, RUN_CONFIG)
    if not storage.exists(path):
        return None
    try:
        return json.loads(storage.read_bytes(path))
    except ValueError as e:
        raise ValueError(f"{path} is not a run's config ({e}); remove it or use another --out") from None


def fetch_run(url: str, folder: Path) -> str | None:
    """Copies the run published at ``url`` (the files its ``files.json`` names) into ``folder``; returns
    the job id the index records (None for `beacon train --out URL`).

    Raises:
        FileNotFoundError: ``url`` holds no published run.
        ValueError: its index names a file outside the run (``..`` or an absolute path).
    """
    from schemas import storage

    index_path = storage.join(url, PUBLISHED)
    if not storage.exists(index_path):
        raise FileNotFoundError(f"{index_path} not found: is {url} a run published by `beacon train --out "
                                "URL`, `beacon run --out URL` or a job's output_url?")
    index = json.loads(storage.read_bytes(index_path))
    for entry in index.get("files", []):
        if not _inside(entry["path"]):
            raise ValueError(f"{index_path} names {entry['path']!r}, outside the run; refusing to fetch it")
        storage.copy_file(storage.join(url, entry["path"]), Path(folder) / entry["path"])
    return index.get("job_id")
