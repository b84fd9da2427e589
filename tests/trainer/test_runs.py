"""Publishing a run folder (``trainer.runs.publish_run``, ``fetch_run``, ``work_folder``), on local
folders: the object-store round trip is tests/pipeline/test_object_store.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.runs import PUBLISHED, fetch_run, publish_run, work_folder


def _run(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def test_a_republished_run_leaves_no_file_of_the_old_one_that_its_index_does_not_name(tmp_path):
    out = tmp_path / "published"
    first = _run(tmp_path / "a", {"config.json": "{}", "adapter/w.bin": "1", "trace.parquet": "t",
                                  "checkpoints/checkpoint-2/x": "c"})
    assert [e["path"] for e in publish_run(first, str(out), job_id="job_1")] == [
        "adapter/w.bin", "config.json", "trace.parquet"]  # never the checkpoints
    assert not (out / "checkpoints").exists()
    second = _run(tmp_path / "b", {"config.json": "{}", "adapter/w.bin": "22", "metrics.json": "{}"})
    publish_run(second, str(out))
    (out / "mine.txt").write_text("not the run's")  # named by no index: left alone
    publish_run(second, str(out))
    index = json.loads((out / PUBLISHED).read_text())
    assert index == {"job_id": None, "files": [{"path": "adapter/w.bin", "bytes": 2},
                                               {"path": "config.json", "bytes": 2},
                                               {"path": "metrics.json", "bytes": 2}]}
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "adapter/w.bin", "config.json", "files.json", "metrics.json", "mine.txt"]

    fetched = tmp_path / "fetched"
    assert fetch_run(str(out), fetched) is None
    assert (fetched / "adapter" / "w.bin").read_text() == "22" and not (fetched / "mine.txt").exists()


def test_an_index_naming_a_file_outside_the_run_is_not_fetched(tmp_path):
    out = _run(tmp_path / "published", {PUBLISHED: json.dumps({"files": [{"path": "../secret", "bytes": 1}]})})
    with pytest.raises(ValueError, match="outside the run"):
        fetch_run(str(out), tmp_path / "fetched")
    with pytest.raises(FileNotFoundError, match="a run published by"):
        fetch_run(str(tmp_path / "nothing"), tmp_path / "fetched")


def test_each_url_has_one_working_folder_under_beacon_work_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BEACON_WORK_DIR", str(tmp_path / "w"))
    a = work_folder("s3://bucket/runs/r1")
    assert a == work_folder("s3://bucket/runs/r1/") and a.parent == tmp_path / "w" and a.name.startswith("r1-")
    assert a != work_folder("s3://other/runs/r1")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BEACON_WORK_DIR", "rel")
    assert work_folder("s3://bucket/runs/r1").parent == tmp_path / "rel"  # absolute: a rerun elsewhere resumes
