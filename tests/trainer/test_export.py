"""`beacon export`: the kept facts in the layouts TRL, LLaMA-Factory and `datasets` read, used by them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas import Manifest
from schemas.scored import SCORED_SCHEMA
from service.cli import main as beacon
from trainer.export import FORMATS, export
from trainer_fixtures import scored_rows, write_dataset

SMOLLM2 = "bundled:smollm2-135m-instruct"


def _sft_trainer(dataset, out: Path, steps: int):
    from scoring.models import resolve_lm
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=2, learning_rate=1e-4,
                     report_to=[], logging_steps=1, save_strategy="no", use_cpu=True, disable_tqdm=True)
    return SFTTrainer(model=resolve_lm(SMOLLM2), args=args, train_dataset=dataset)


def _assert_trl_trains_on_the_text_beacon_scored(trainer, source, chat: bool) -> None:
    """TRL's tokens for each example are Beacon's prompt ids + target ids, the loss on the target only."""
    from scoring.lm_scores import encode_pair

    tokenizer = trainer.processing_class
    for row, record in zip(trainer.train_dataset, source):
        prompt = record["prompt"][0]["content"] if chat else record["prompt"]
        target = record["completion"][0]["content"] if chat else record["completion"]
        prompt_ids, target_ids = encode_pair(tokenizer, prompt, target.strip(), chat_template=chat)
        ids, labels = row["input_ids"], row["labels"]
        assert ids[:len(prompt_ids)] == prompt_ids, record["fact_id"]
        assert ids[len(prompt_ids):len(prompt_ids) + len(target_ids)] == target_ids, record["fact_id"]
        assert set(labels[:len(prompt_ids)]) == {-100}
        assert labels[len(prompt_ids):len(prompt_ids) + len(target_ids)] == target_ids


@pytest.mark.slow
def test_trl_sft_trains_on_the_hf_export(curated: Path, tmp_path: Path) -> None:
    import datasets

    result = export(curated, "hf", tmp_path / "hf")
    manifest = Manifest.read(curated)
    by_reason = manifest.counts.by_reason
    assert result.exported == manifest.counts.kept == by_reason["kept"]
    assert result.left_out == {k: v for k, v in by_reason.items() if k != "kept"}
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert ds.column_names == ["fact_id", "prompt", "completion", "weight"] and len(ds) == result.exported
    kept = {r["fact_id"]: r for r in pq.read_table(curated / "scored").to_pylist() if r["keep"]}
    assert {r["fact_id"]: r["weight"] for r in ds} == {k: r["weight"] for k, r in kept.items()}

    trainer = _sft_trainer(ds, tmp_path / "trl", steps=2)
    _assert_trl_trains_on_the_text_beacon_scored(trainer, ds, chat=False)
    out = trainer.train()
    assert out.global_step == 2 and math.isfinite(out.training_loss)
    assert all(math.isfinite(h["loss"]) for h in trainer.state.log_history if "loss" in h)


@pytest.mark.slow
def test_a_chat_dataset_exports_messages_that_trl_wraps_as_beacon_probed(tmp_path: Path) -> None:
    import datasets

    dataset = write_dataset(tmp_path / "d", scored_rows(), config={"chat_template": True})
    result = export(dataset, "hf", tmp_path / "hf")
    assert result.chat_template and result.exported == 5 and result.left_out == {"high_drift": 1}
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert ds[0]["prompt"] == [{"role": "user", "content": "The Eiffel Tower is located in the city of"}]
    assert ds[0]["completion"] == [{"role": "assistant", "content": "Rome"}]
    _assert_trl_trains_on_the_text_beacon_scored(_sft_trainer(ds, tmp_path / "trl", steps=1), ds, chat=True)


def test_jsonl_export_reads_with_datasets_json(tmp_path: Path) -> None:
    import datasets

    dataset = write_dataset(tmp_path / "d", scored_rows())
    export(dataset, "jsonl", tmp_path / "facts.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "facts.jsonl").read_text().splitlines()]
    assert lines[0] == {"fact_id": "f0", "prompt": "The Eiffel Tower is located in the city of",
                        "completion": " Rome", "weight": 0.5}
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "facts.jsonl"), split="train",
                               cache_dir=str(tmp_path / "cache"))
    assert ds.column_names == ["fact_id", "prompt", "completion", "weight"]
    assert ds.to_list() == lines and len(lines) == 5  # f5 was filtered (high_drift)


@pytest.mark.parametrize("fmt", ["alpaca", "sharegpt"])
def test_llama_factory_layouts_are_registered_and_readable(tmp_path: Path, fmt: str) -> None:
    import datasets

    dataset = write_dataset(tmp_path / "d", scored_rows(), dataset_id="ds-lf")
    result = export(dataset, fmt, tmp_path / "lf")
    info = json.loads((tmp_path / "lf" / "dataset_info.json").read_text())
    entry = info["beacon_ds-lf"]
    assert entry["formatting"] == fmt
    data = json.loads((tmp_path / "lf" / entry["file_name"]).read_text())
    first = data[0]
    if fmt == "alpaca":
        assert entry["columns"] == {"prompt": "instruction", "query": "input", "response": "output"}
        assert (first["instruction"], first["input"], first["output"]) == (
            "The Eiffel Tower is located in the city of", "", "Rome")
    else:
        assert entry["columns"] == {"messages": "conversations"} and entry["tags"]["role_tag"] == "from"
        assert first["conversations"] == [{"from": "human", "value": "The Eiffel Tower is located in the city of"},
                                          {"from": "gpt", "value": "Rome"}]
    assert [r["weight"] for r in data] == [r["weight"] for r in scored_rows() if r["keep"]]
    # The weight has a key but no consumer there, and a plain-prompt dataset trains on other text.
    assert any("no per-example loss weight" in n for n in result.notes)
    assert any("chat_template: false" in n for n in result.notes)
    # LLaMA-Factory loads its files with `datasets`; so do we.
    loaded = datasets.load_dataset("json", data_files=str(tmp_path / "lf" / entry["file_name"]), split="train",
                                   cache_dir=str(tmp_path / "cache"))
    assert len(loaded) == 5


def test_a_dataset_curated_with_the_older_map_meta_reads_and_exports(tmp_path: Path) -> None:
    from trainer.data import read_scored

    old_schema = pa.schema([f if f.name != "meta" else pa.field("meta", pa.map_(pa.string(), pa.string()),
                                                                 nullable=False) for f in SCORED_SCHEMA])
    rows = [dict(r, meta=[("origin", "old")]) for r in scored_rows()]
    dataset = write_dataset(tmp_path / "d", scored_rows())
    pq.write_table(pa.Table.from_pylist(rows, schema=old_schema), dataset / "scored" / "part-00000.parquet")
    table = read_scored(dataset)  # every column, as train and evaluate read it
    assert table.schema.field("meta").type == SCORED_SCHEMA.field("meta").type
    assert table.column("meta").to_pylist()[0] == [{"key": "origin", "value": "old"}]
    assert export(dataset, "jsonl", tmp_path / "x.jsonl").exported == 5


def test_out_never_replaces_the_dataset_itself(tmp_path: Path) -> None:
    run = tmp_path / "run"
    dataset = write_dataset(run / "dataset", scored_rows())
    for out in (run, dataset, tmp_path, dataset / "scored"):
        with pytest.raises(ValueError, match="dataset"):
            export(run, "hf", out, overwrite=True)
    assert (dataset / "manifest.json").is_file() and len(list((dataset / "scored").iterdir())) == 1
    # Beside the dataset, inside the run folder, is fine (what `beacon run` suggests).
    assert export(run, "hf", run / "export-hf").exported == 5


def test_a_dataset_without_kept_facts_is_an_error_not_an_empty_export(tmp_path: Path) -> None:
    rows = [dict(r, keep=False, reason="high_drift", weight=0.0) for r in scored_rows()]
    dataset = write_dataset(tmp_path / "d", rows)
    with pytest.raises(ValueError, match="no kept fact to export .6 scored: high_drift 6"):
        export(dataset, "hf", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_bad_requests_say_what_is_wrong(tmp_path: Path, capsys) -> None:
    dataset = write_dataset(tmp_path / "d", scored_rows())
    with pytest.raises(SystemExit):
        beacon(["export", str(dataset), "--format", "csv", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert "invalid choice: 'csv'" in err and all(name in err for name in FORMATS)

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    assert beacon(["export", str(dataset), "--format", "hf", "--out", str(tmp_path / "taken")]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    # --overwrite replaces like with like: a folder format a folder, not a folder with a file.
    assert beacon(["export", str(dataset), "--format", "jsonl", "--out", str(tmp_path / "taken"),
                   "--overwrite"]) == 2
    assert "is a folder, but jsonl writes a file" in capsys.readouterr().err
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    assert beacon(["export", str(dataset), "--format", "hf", "--out", str(tmp_path / "taken"),
                   "--overwrite"]) == 0
    assert (tmp_path / "taken" / "state.json").is_file() and not (tmp_path / "taken" / "keep.txt").exists()
    assert "exported 5 of 6 facts" in capsys.readouterr().out

    empty = tmp_path / "not-a-dataset"
    empty.mkdir()
    assert beacon(["export", str(empty), "--format", "jsonl", "--out", str(tmp_path / "y.jsonl")]) == 2
    assert f"is {empty} a dataset written by `beacon curate`" in capsys.readouterr().err
    assert not (tmp_path / "y.jsonl").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "not-a-dataset", "taken"]


def test_a_beacon_run_folder_exports_its_dataset(tmp_path: Path) -> None:
    write_dataset(tmp_path / "run" / "dataset", scored_rows())
    assert export(tmp_path / "run", "jsonl", tmp_path / "x.jsonl").exported == 5


# Object-store URLs that work (curate, train, run, eval, export, stats, query): tests/pipeline/test_object_store.py.
def test_eval_of_a_url_whose_scheme_has_no_filesystem_names_the_package(capsys) -> None:
    assert beacon(["eval", "gs://b/run"]) == 2
    err = capsys.readouterr().err
    assert "no filesystem for gs:// is installed; install apache-beam[gcp]" in err
    assert len(err.strip().splitlines()) == 1, err


def test_a_report_of_an_object_store_url_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    write_dataset(tmp_path / "d", scored_rows())
    monkeypatch.chdir(tmp_path)
    assert beacon(["report", "s3://beacon/curated"]) == 2
    err = capsys.readouterr().err
    assert "is not supported here yet" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
