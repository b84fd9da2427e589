"""TrainConfig validation and the resume check that names the differing keys (config files:
tests/schemas/test_config_file.py)."""

from __future__ import annotations

import pytest

from schemas import ScoringSpec
from trainer.config import TrainConfig
from trainer.data import DatasetInfo
from trainer.train import check_resume, run_record

INFO = DatasetInfo(path="/d", dataset_id="ds1", config_hash="h1", manifest_sha256="x",
                   scoring=ScoringSpec(drift_definition="expected"))


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


def test_one_length_given_replaces_the_other_in_one_place() -> None:
    assert (TrainConfig(max_steps=7).epochs, TrainConfig(epochs=2).max_steps) == (None, None)
    assert TrainConfig.from_layers({"epochs": 3}, {"max_steps": 7}).model_dump(
        include={"epochs", "max_steps"}) == {"epochs": None, "max_steps": 7}  # a flag replaces the file's
    assert TrainConfig.from_layers({"max_steps": 3}, {"lora_rank": 4}).max_steps == 3
    with pytest.raises(ValueError, match="exactly one of epochs and max_steps"):
        TrainConfig.from_layers({"epochs": 3, "max_steps": 7})


def test_non_finite_numbers_are_refused_naming_the_field() -> None:
    for field in ("learning_rate", "epochs", "lora_alpha", "semantic_weight"):
        with pytest.raises(ValueError, match=f"{field}: .*(finite|less than or equal)"):  # refused, named
            TrainConfig.from_layers({field: float("inf")})
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.from_layers({"learning_rate": float("nan")})


def test_resume_check_names_every_differing_key() -> None:
    old = run_record(TrainConfig(learning_rate=1e-3, lora_rank=8), INFO)
    check_resume(old, run_record(TrainConfig(save_steps=7, logging_steps=3), INFO))  # no effect on learning
    with pytest.raises(ValueError) as e:
        check_resume(old, run_record(TrainConfig(learning_rate=2e-3, lora_rank=4), INFO))
    assert "learning_rate" in str(e.value) and "lora_rank" in str(e.value) and "seed" not in str(e.value)
    other = DatasetInfo(**{**INFO.__dict__, "dataset_id": "ds2"})
    with pytest.raises(ValueError, match="dataset_id"):
        check_resume(old, run_record(TrainConfig(), other))
