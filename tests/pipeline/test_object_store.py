"""Datasets on an object store, against a real S3 API server (moto's, started here on 127.0.0.1):
curate from and to s3://, refuse a rerun, overwrite, survive a run killed at its commit, train and
take stats and queries from the s3:// dataset, and lose nothing on the way (the same rows as the local
run of the same file)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MINI_FACTS = REPO / "tests" / "fixtures" / "mini_facts.jsonl"
# The bucket the root conftest's s3_env creates. Not imported from it: pytest drops a rootdir conftest
# from sys.modules when it loads tests/service/conftest.py, so `from conftest import` depends on order.
BUCKET = "beacon-test"


def _keys(prefix: str) -> list[str]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _manifest(prefix: str) -> dict:
    import boto3

    body = boto3.client("s3").get_object(Bucket=BUCKET, Key=f"{prefix}/manifest.json")["Body"].read()
    return json.loads(body)


def _named(manifest: dict) -> set[str]:
    """The bucket keys of the files ``manifest`` (of ``curated/``) names."""
    return {f"curated/{n}" for role in ("scored", "rejected") for n in manifest["files"][role]}


def _curate(out: str, *flags: str) -> int:
    from service.cli import main as beacon

    return beacon(["curate", f"s3://{BUCKET}/in/mini_facts.jsonl", "--out", out, "--probe-batch-size", "4",
                   *flags])


@pytest.fixture(scope="module")
def s3_dataset(s3_env) -> str:
    out = f"s3://{BUCKET}/curated"
    assert _curate(out) == 0
    return out


def _rows(dataset, drop=("source",)) -> list[dict]:
    from trainer.data import read_scored

    return [{k: v for k, v in r.items() if k not in drop} for r in read_scored(dataset).to_pylist()]


def test_an_s3_curation_holds_exactly_what_the_local_one_does(s3_dataset, curated):
    from schemas import Manifest

    remote, local = _manifest("curated"), Manifest.read(curated)
    assert remote["dataset_id"] == local.dataset_id
    counts = remote["counts"]
    assert counts["input"] == counts["scored"] + counts["rejected"] == local.counts.input
    assert counts == local.counts.model_dump()
    # The same scored rows, value for value (only `source` differs: the input's URL against its path).
    assert _rows(s3_dataset) == _rows(curated)
    assert {r["source"] for r in _rows(s3_dataset, drop=())} == {f"s3://{BUCKET}/in/mini_facts.jsonl"}
    # The bucket holds the manifest and exactly the files it names, under one run's prefix.
    named = [f"curated/{name}" for role in ("scored", "rejected") for name in remote["files"][role]]
    assert _keys("curated/") == sorted(["curated/manifest.json", *named])
    assert all(n.startswith("curated/_runs/") for n in named) and len({n.split("/")[2] for n in named}) == 1
    assert remote["files"]["rejected"] and counts["rejected"] > 0


def test_stats_and_queries_read_the_s3_dataset_like_the_local_one(s3_dataset, curated, capsys):
    from service.cli import main as beacon

    def stats(dataset) -> dict:
        assert beacon(["stats", str(dataset), "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        out.pop("signature")  # file paths and times
        out["manifest"].pop("created_at")
        return out

    assert stats(s3_dataset) == stats(curated)
    assert beacon(["query", s3_dataset, "select stage, count(*) as n from rejected group by stage order by stage"]) == 0
    remote = capsys.readouterr().out
    assert beacon(["query", str(curated), "select stage, count(*) as n from rejected group by stage order by stage"]) == 0
    assert remote.split("\n(")[0] == capsys.readouterr().out.split("\n(")[0]


def test_a_second_run_into_the_same_prefix_is_refused_and_changes_nothing(s3_dataset, capsys):
    before = _keys("curated/")
    assert _curate(s3_dataset) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "--overwrite" in err and s3_dataset in err
    assert _keys("curated/") == before


def test_a_run_killed_at_its_commit_leaves_the_previous_dataset_whole(s3_dataset, s3_env, monkeypatch):
    import pipeline.manifest

    before = _manifest("curated")
    old_files = _named(before)
    # A real SIGKILL at the worst moment: every data file of the new run written, its manifest not yet.
    killer = (
        "import os, signal, sys\n"
        "import schemas.storage as storage\n"
        "write = storage.write_bytes\n"
        "def dying(path, data):\n"
        f"    if str(path) == {s3_dataset + '/manifest.json'!r}:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    write(path, data)\n"
        "storage.write_bytes = dying\n"
        "from service.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", killer, "curate", f"s3://{BUCKET}/in/mini_facts.jsonl",
                           "--out", s3_dataset, "--overwrite", "--probe-batch-size", "4"],
                          cwd=REPO, env={**os.environ, **s3_env}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    keys = set(_keys("curated/"))
    orphans = {k for k in keys - old_files - {"curated/manifest.json"}}
    assert orphans and all(k.startswith("curated/_runs/") for k in orphans)  # the killed run's files
    assert any("/scored/part-" in k for k in orphans)  # it had written its data
    assert _manifest("curated") == before and old_files <= keys  # the old dataset, whole
    assert len(_rows(s3_dataset)) == before["counts"]["scored"]

    # The next commit replaces the old dataset's files; the killed run's are left while they are
    # young (they could be another run still writing), and removed once stale.
    assert _curate(s3_dataset, "--overwrite") == 0
    after = _manifest("curated")
    named = _named(after)
    assert set(_keys("curated/")) == named | orphans | {"curated/manifest.json"}
    assert not named & old_files and after["dataset_id"] == before["dataset_id"]
    monkeypatch.setattr(pipeline.manifest, "STALE_RUN_S", 0.0)
    assert _curate(s3_dataset, "--overwrite") == 0
    final = _manifest("curated")
    assert set(_keys("curated/")) == {"curated/manifest.json"} | _named(final)


def test_the_commit_names_only_the_sinks_complete_shards(s3_dataset):
    """Beam's temporary files below the role folder are never named, and a missing shard fails the
    commit before any manifest is written."""
    from pipeline.manifest import _parts
    from schemas import storage

    run = _manifest("curated")["files"]["scored"][0].rsplit("/", 2)[0]
    folder = f"{s3_dataset}/{run}/scored"
    storage.write_bytes(f"{folder}/beam-temp-part-x/0123.parquet", b"not a shard")
    try:
        assert [p.rsplit("/", 1)[1] for p in _parts(folder)] == ["part-00000-of-00001.parquet"]
        storage.write_bytes(f"{folder}/part-00002-of-00003.parquet", b"x")
        with pytest.raises(RuntimeError, match="incomplete"):
            _parts(folder)
    finally:
        storage.delete([f"{folder}/beam-temp-part-x/0123.parquet", f"{folder}/part-00002-of-00003.parquet"])


def test_beacon_train_and_eval_read_the_s3_dataset(s3_dataset, tmp_path, capsys):
    from service.cli import main as beacon

    run = tmp_path / "run"
    assert beacon(["train", s3_dataset, "--out", str(run), "--max-steps", "2"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["dataset"]["path"] == s3_dataset
    assert beacon(["eval", str(run)]) == 0  # finds the dataset at the URL the run recorded
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["kept"]["n"] == _manifest("curated")["counts"]["kept"]


def boto3_body(key: str) -> bytes:
    import boto3

    return boto3.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read()


def _published(prefix: str) -> tuple[dict, list[str]]:
    """A published run's ``files.json`` and every key under ``prefix``."""
    return json.loads(boto3_body(f"{prefix}/files.json")), _keys(prefix + "/")


def test_beacon_train_publishes_to_s3_and_refuses_another_config_there(s3_dataset, tmp_path, capsys):
    from service.cli import main as beacon

    out, work = f"s3://{BUCKET}/runs/r1", tmp_path / "work"
    argv = ["train", s3_dataset, "--out", out, "--work", str(work), "--max-steps", "2", "--save-steps", "1"]
    assert beacon(argv) == 0
    assert f"published -> {out}/" in capsys.readouterr().out
    index, keys = _published("runs/r1")
    assert sorted([f"runs/r1/{e['path']}" for e in index["files"]] + ["runs/r1/files.json"]) == keys
    assert "runs/r1/adapter/adapter_config.json" in keys and "runs/r1/trace.parquet" in keys
    assert not any("/checkpoints/" in k for k in keys) and (work / "checkpoints" / "checkpoint-2").is_dir()
    sizes = {e["path"]: e["bytes"] for e in index["files"]}
    assert sizes["train_summary.json"] == (work / "train_summary.json").stat().st_size

    assert beacon(argv) == 0  # the same command again: already trained in its working folder, republished
    assert _published("runs/r1")[1] == keys
    # Another config from a fresh working folder (another machine): the URL's config.json refuses it.
    assert beacon([*argv[:4], "--work", str(tmp_path / "other"), "--max-steps", "3"]) == 2
    err = capsys.readouterr().err
    assert f"the run in {out} was started with another config" in err and "max_steps: 2 -> 3" in err, err
    assert not (tmp_path / "other" / "adapter").exists()
    assert beacon(["eval", str(work)]) == 0  # the working folder is a run folder, its dataset the URL
    # The published run itself: fetched, evaluated, its results published back and indexed.
    assert beacon(["eval", out]) == 0
    index, keys = _published("runs/r1")
    assert {"runs/r1/eval.parquet", "runs/r1/metrics.json"} <= set(keys)
    assert sorted([f"runs/r1/{e['path']}" for e in index["files"]] + ["runs/r1/files.json"]) == keys
    metrics = json.loads(boto3_body("runs/r1/metrics.json"))
    assert metrics["run"]["run_dir"] == out and metrics["kept"] == json.loads((work / "metrics.json").read_text())["kept"]
    assert beacon(["eval", f"s3://{BUCKET}/runs/none"]) == 2
    assert "is s3://beacon-test/runs/none a run published by" in capsys.readouterr().err


def test_beacon_run_publishes_dataset_run_and_report_to_s3(s3_env, tmp_path, capsys):
    from service.cli import main as beacon

    out, work = f"s3://{BUCKET}/runs/whole", tmp_path / "work"
    argv = ["run", str(MINI_FACTS), "--out", out, "--work", str(work), "--max-steps", "2",
            "--probe-batch-size", "4"]
    assert beacon(argv) == 0
    printed = capsys.readouterr().out
    keys = _keys("runs/whole/")
    assert "runs/whole/dataset/manifest.json" in keys and "runs/whole/report.html" in keys
    index, run_keys = _published("runs/whole/run")
    assert len(index["files"]) + 1 == len(run_keys) and "runs/whole/run/metrics.json" in run_keys
    local = json.loads((work / "dataset" / "manifest.json").read_text())
    assert _manifest("runs/whole/dataset")["dataset_id"] == local["dataset_id"]
    hints = printed.split("\nnext:\n", 1)[1].strip().splitlines()
    assert out in hints[0] and str(work) in hints[1] and str(work) in hints[2]
    assert beacon(["stats", out]) == 0  # reads the published run's dataset/
    assert str(local["counts"]["kept"]) in capsys.readouterr().out
    # A published run made elsewhere is not replaced without --overwrite, before any work.
    assert beacon([*argv[:4], "--work", str(tmp_path / "elsewhere"), *argv[6:]]) == 2
    assert "holds a published run" in capsys.readouterr().err and not (tmp_path / "elsewhere").exists()
    # A publish that died before its index, from elsewhere with another config: refused before training.
    import boto3

    boto3.client("s3").delete_object(Bucket=BUCKET, Key="runs/whole/run/files.json")
    assert beacon([*argv[:4], "--work", str(tmp_path / "elsewhere"), "--max-steps", "3", *argv[8:]]) == 2
    err = capsys.readouterr().err
    assert f"the run in {out}/run was started with another config" in err and "max_steps: 2 -> 3" in err, err
    assert not (tmp_path / "elsewhere" / "run").exists()


def test_beacon_export_reads_and_writes_object_stores(s3_dataset, tmp_path, capsys):
    import boto3
    from datasets import load_from_disk

    from service.cli import main as beacon

    local = tmp_path / "x.jsonl"
    assert beacon(["export", s3_dataset, "--format", "jsonl", "--out", str(local)]) == 0
    rows = [json.loads(line) for line in local.read_text().splitlines()]
    assert len(rows) == _manifest("curated")["counts"]["kept"]
    # To the bucket: the same bytes as the local export; a second export is refused, --overwrite replaces.
    out = f"s3://{BUCKET}/exports/x.jsonl"
    assert beacon(["export", s3_dataset, "--format", "jsonl", "--out", out]) == 0
    assert f"-> {out}" in capsys.readouterr().out
    body = boto3.client("s3").get_object(Bucket=BUCKET, Key="exports/x.jsonl")["Body"].read()
    assert body == local.read_bytes()
    assert beacon(["export", s3_dataset, "--format", "jsonl", "--out", out]) == 2
    assert f"{out} exists" in capsys.readouterr().err
    # A folder format replacing the file: the folder's objects, the old file gone; datasets loads it.
    assert beacon(["export", s3_dataset, "--format", "hf", "--out", out, "--overwrite"]) == 0
    keys = _keys("exports/")
    assert "exports/x.jsonl" not in keys and "exports/x.jsonl/dataset_info.json" in keys
    fetched = tmp_path / "fetched"
    for key in keys:
        (fetched / key).parent.mkdir(parents=True, exist_ok=True)
        boto3.client("s3").download_file(BUCKET, key, str(fetched / key))
    assert load_from_disk(str(fetched / "exports" / "x.jsonl"))["fact_id"] == [r["fact_id"] for r in rows]
    # Never into the dataset it reads.
    assert beacon(["export", s3_dataset, "--format", "jsonl", "--out", f"{s3_dataset}/x.jsonl"]) == 2
    assert "lies inside the dataset" in capsys.readouterr().err


def test_a_missing_bucket_is_one_sentence_before_any_model_runs(s3_env, capsys):
    started = time.monotonic()
    assert _curate("s3://no-such-bucket-here/curated") == 2
    err = capsys.readouterr().err
    assert "bucket 'no-such-bucket-here' does not exist" in err and "s3://no-such-bucket-here/curated" in err
    assert time.monotonic() - started < 30  # no model was loaded for it


def test_an_s3_endpoint_that_does_not_answer_is_one_sentence_in_seconds(unused_port, monkeypatch, capsys):
    """Beam's S3 client alone retries with exponential backoff for minutes before it says anything."""
    from service.cli import main as beacon

    endpoint = f"http://127.0.0.1:{unused_port}"  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    started = time.monotonic()
    assert beacon(["curate", str(MINI_FACTS), "--out", f"s3://{BUCKET}/x", f"--s3_endpoint_url={endpoint}",
                   "--s3_region_name=us-east-1"]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach the S3 endpoint {endpoint}" in err and len(err.strip().splitlines()) == 1, err
    assert time.monotonic() - started < 60


def test_a_bucket_root_or_a_glob_is_refused_as_out(s3_env, capsys):
    assert _curate(f"s3://{BUCKET}") == 2
    assert "not the bucket itself" in capsys.readouterr().err
    assert _curate(f"s3://{BUCKET}/cur[12]") == 2
    assert "glob character" in capsys.readouterr().err


@pytest.mark.parametrize("url, says", [("gs://bucket/curated", "apache-beam[gcp]"),
                                       ("azfs://account/container/curated", "apache-beam[azure]"),
                                       ("nope://bucket/curated", "Beam has no filesystem for nope://")])
def test_a_scheme_without_a_filesystem_names_the_package_that_adds_it(url, says, capsys):
    from service.cli import main as beacon

    assert beacon(["curate", str(MINI_FACTS), "--out", url]) == 2
    err = capsys.readouterr().err
    assert says in err and url in err
    assert beacon(["stats", url]) == 2
    assert says in capsys.readouterr().err
