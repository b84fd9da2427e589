"""TrainConfig validation, config files, and the resume check that names the differing keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.config import EvalConfig, TrainConfig, load_eval_config, load_train_config
from trainer.data import DatasetInfo
from trainer.train import check_resume, run_record

INFO = DatasetInfo(path="/d", dataset_id="ds1", config_hash="h1", manifest_sha256="x",
                   model="bundled:smollm2-135m-instruct", chat_template=False,
                   drift_definition="expected", encoder=None)


def test_defaults_are_valid_and_resolve_from_the_dataset() -> None:
    record = run_record(TrainConfig(), INFO)
    assert record["train"]["model"] == "bundled:smollm2-135m-instruct"
    assert record["train"]["chat_template"] is False
    assert record["dataset"]["dataset_id"] == "ds1"


@pytest.mark.parametrize("kwargs, names", [
    ({"epochs": 2.0, "max_steps": 10}, ["epochs", "max_steps"]),
    ({"epochs": None}, ["epochs", "max_steps"]),
    ({"warmup_steps": 5}, ["warmup_steps", "lr_scheduler"]),
    ({"epochs": None, "max_steps": 4, "warmup_steps": 4, "lr_scheduler": "linear"},
     ["warmup_steps", "max_steps"]),
    ({"target_modules": []}, ["target_modules"]),
])
def test_cross_field_errors_name_the_fields(kwargs: dict, names: list[str]) -> None:
    with pytest.raises(ValueError) as e:
        TrainConfig(**kwargs)
    for name in names:
        assert name in str(e.value)


def test_config_file_sections_and_flag_overrides(tmp_path: Path) -> None:
    path = tmp_path / "beacon.yaml"
    path.write_text("curate:\n  max_drift_quantile: 0.9\ntrain:\n  epochs: 3\n  lora_rank: 4\n"
                    "eval:\n  batch_size: 4\n")
    config = load_train_config(path, {"max_steps": 7})
    assert (config.lora_rank, config.max_steps, config.epochs) == (4, 7, None)  # --max-steps replaces epochs
    assert load_train_config(path).epochs == 3
    assert load_eval_config(path).batch_size == 4
    assert load_eval_config(None) == EvalConfig()
    with pytest.raises(ValueError, match="lora_rank"):
        load_train_config(None, {"lora_rank": 0})
    flat = tmp_path / "train.json"
    flat.write_text(json.dumps({"learning_rate": 0.002}))  # a file holding only train keys
    assert load_train_config(flat).learning_rate == 0.002
    with pytest.raises(ValueError, match="no_such_key"):
        flat.write_text(json.dumps({"train": {"no_such_key": 1}}))
        load_train_config(flat)


def test_resume_check_names_every_differing_key() -> None:
    old = run_record(TrainConfig(learning_rate=1e-3, lora_rank=8), INFO)
    check_resume(old, run_record(TrainConfig(save_steps=7, logging_steps=3), INFO))  # no effect on learning
    with pytest.raises(ValueError) as e:
        check_resume(old, run_record(TrainConfig(learning_rate=2e-3, lora_rank=4), INFO))
    assert "learning_rate" in str(e.value) and "lora_rank" in str(e.value) and "seed" not in str(e.value)
    other = DatasetInfo(**{**INFO.__dict__, "dataset_id": "ds2"})
    with pytest.raises(ValueError, match="dataset_id"):
        check_resume(old, run_record(TrainConfig(), other))
