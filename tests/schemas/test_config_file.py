"""One config-file reader for every command: any subset of sections, flags over the file, errors that
name the file, the section and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import CurateConfig
from schemas.config_file import load_sections
from trainer.config import EvalConfig, TrainConfig

ALL = {"curate": CurateConfig, "train": TrainConfig, "eval": EvalConfig}


def test_sections_and_flag_overrides(tmp_path: Path) -> None:
    path = tmp_path / "beacon.yaml"
    path.write_text("curate:\n  max_drift_quantile: 0.9\n  weighting: drift\ntrain:\n  epochs: 3\n  lora_rank: 4\n"
                    "eval:\n  batch_size: 4\n")
    got = load_sections(path, ALL, {"curate": {"weighting": "inverse_drift", "lsh_bands": None},
                                    "train": {"max_steps": 7}})
    assert got["curate"].max_drift_quantile == 0.9 and got["curate"].weighting == "inverse_drift"
    assert (got["train"].lora_rank, got["train"].max_steps, got["train"].epochs) == (4, 7, None)
    assert got["eval"].batch_size == 4
    assert load_sections(None, ALL) == {"curate": CurateConfig(), "train": TrainConfig(), "eval": EvalConfig()}


@pytest.mark.parametrize("text", ["train:\n  max_steps: 5\n", "eval:\n  batch_size: 2\n",
                                  "curate:\n  lsh_bands: 4\n", "{}\n"])
def test_any_subset_of_sections_works_for_every_command(tmp_path: Path, text: str) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(text)
    for name in ALL:  # beacon curate / train / eval, each with its one section
        load_sections(path, {name: ALL[name]})
    load_sections(path, ALL)  # beacon run, all three


def test_a_file_without_sections_is_the_one_section_a_command_reads(tmp_path: Path) -> None:
    flat = tmp_path / "train.json"
    flat.write_text(json.dumps({"learning_rate": 0.002}))
    assert load_sections(flat, {"train": TrainConfig})["train"].learning_rate == 0.002
    with pytest.raises(ValueError, match="outside a section; put them under curate:, train:, eval:"):
        load_sections(flat, ALL)


def test_a_key_in_the_wrong_section_names_the_section_the_key_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text("curate:\n  learning_rate: 0.001\n")
    with pytest.raises(ValueError, match=r"invalid curate config in .*f\.yaml: learning_rate: Extra inputs"):
        load_sections(path, ALL)
    path.write_text("trian:\n  max_steps: 3\n")
    with pytest.raises(ValueError, match="unknown section 'trian'"):
        load_sections(path, {"train": TrainConfig})
    path.write_text("train: 3\n")
    with pytest.raises(ValueError, match="section 'train' must be a mapping"):
        load_sections(path, {"train": TrainConfig})


def test_unreadable_files_and_bad_values_are_errors_naming_them(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        load_sections(tmp_path / "missing.json", ALL)
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_sections(tmp_path / "bad.json", ALL)
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_sections(tmp_path / "list.yaml", ALL)
    with pytest.raises(ValueError, match="invalid curate config: lsh_bands"):
        load_sections(None, {"curate": CurateConfig}, {"curate": {"lsh_bands": 0}})
    (tmp_path / "inf.yaml").write_text("curate:\n  max_drift: .inf\n")
    with pytest.raises(ValueError, match="max_drift: .*finite"):
        load_sections(tmp_path / "inf.yaml", {"curate": CurateConfig})


def test_a_null_in_the_file_is_a_value_and_an_absent_flag_is_not(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text("train:\n  save_total_limit: null\n")  # keep every checkpoint
    assert load_sections(path, {"train": TrainConfig})["train"].save_total_limit is None
    got = load_sections(path, {"train": TrainConfig}, {"train": {"save_total_limit": None, "lora_rank": 4}})
    assert got["train"].save_total_limit is None and got["train"].lora_rank == 4
