"""Scored rows -> examples with the bundled model's real tokenizer (no weights loaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.data import IGNORE_INDEX, WeightedCollator, build_examples, read_dataset_info, read_scored
from scoring.lm_scores import encode_pair, encode_prompt

from trainer_fixtures import scored_rows, write_dataset


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from scoring.models import resolve_lm

    return AutoTokenizer.from_pretrained(resolve_lm("bundled:smollm2-135m-instruct"))


def row(prompt: str, target: str, weight: float = 1.0) -> dict:
    return {"fact_id": "f", "prompt": prompt, "target": target, "weight": weight}


def test_loss_only_on_target_and_eos_with_the_leading_space(tokenizer) -> None:
    (ex,) = build_examples([row("The Eiffel Tower is in", "Rome")], tokenizer, chat_template=False,
                           add_eos=True, max_seq_len=64)
    target = [t for t in ex.labels if t != IGNORE_INDEX]
    assert tokenizer.decode(target) == " Rome" + tokenizer.eos_token
    assert target[-1] == tokenizer.eos_token_id  # eos is learned even though eos == pad here
    n_prompt = ex.labels.index(target[0])
    assert ex.input_ids[:n_prompt] == encode_prompt(tokenizer, "The Eiffel Tower is in")
    # The parts equal the joint tokenisation for an ordinary prompt.
    assert ex.input_ids[:-1] == tokenizer("The Eiffel Tower is in Rome")["input_ids"]


def test_trailing_space_of_the_prompt_moves_onto_the_target(tokenizer) -> None:
    assert encode_pair(tokenizer, "The Eiffel Tower is in ", " Rome") == \
        encode_pair(tokenizer, "The Eiffel Tower is in", "Rome")
    # After a newline the answer starts the line: no space.
    _, target = encode_pair(tokenizer, "Q: Where is the Eiffel Tower?\nA:\n", "Rome")
    assert tokenizer.decode(target) == "Rome"


def test_a_target_that_would_be_cut_is_an_error(tokenizer) -> None:
    with pytest.raises(ValueError, match=r"fact f: .*max_seq_len=6"):
        build_examples([row("The Eiffel Tower is located in", "Rome")], tokenizer, chat_template=False,
                       add_eos=True, max_seq_len=6)


def test_chat_template_wraps_the_prompt_and_the_answer_has_no_leading_space(tokenizer) -> None:
    (ex,) = build_examples([row("Where is the Eiffel Tower?", "Rome")], tokenizer, chat_template=True,
                           add_eos=True, max_seq_len=128)
    target = [t for t in ex.labels if t != IGNORE_INDEX]
    assert tokenizer.decode(target) == "Rome" + tokenizer.eos_token
    prompt = tokenizer.decode(ex.input_ids[:len(ex.input_ids) - len(target)])
    assert "Where is the Eiffel Tower?" in prompt and prompt.endswith("assistant\n")


def test_weights_pass_through_or_are_ignored(tokenizer) -> None:
    rows = [row("A is", "b", 0.5), row("C is", "d", 1.5)]
    assert [e.weight for e in build_examples(rows, tokenizer, chat_template=False, add_eos=True,
                                             max_seq_len=32)] == [0.5, 1.5]
    assert [e.weight for e in build_examples(rows, tokenizer, chat_template=False, add_eos=True,
                                             max_seq_len=32, use_weights=False)] == [1.0, 1.0]
    batch = WeightedCollator(tokenizer.pad_token_id)(
        [{"input_ids": e.input_ids, "labels": e.labels, "weight": e.weight}
         for e in build_examples(rows, tokenizer, chat_template=False, add_eos=True, max_seq_len=32)])
    assert batch["weight"].tolist() == [0.5, 1.5]
    assert batch["attention_mask"].sum().item() == sum(len(r) for r in batch["input_ids"].tolist()) - \
        (batch["attention_mask"] == 0).sum().item()


def test_reads_the_dataset_and_its_manifest_through_the_one_reader(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", scored_rows(), config={"drift_definition": "lm"})
    info = read_dataset_info(root)
    assert (info.dataset_id, info.config_hash, info.scoring.drift_definition) == ("ds-test", "cfg0", "lm")
    table = read_scored(root)
    assert table.num_rows == len(scored_rows()) and table.column("fact_id").to_pylist()[0] == "f0"
    with pytest.raises(FileNotFoundError, match="beacon curate"):
        read_dataset_info(tmp_path / "missing")
    (root / "manifest.json").write_text(json.dumps({"dataset_id": "x"}))  # not a manifest
    with pytest.raises(ValueError, match="not a valid manifest"):
        read_dataset_info(root)


def test_a_manifest_without_scoring_keys_reads_the_pipelines_defaults(tmp_path: Path) -> None:
    """Regression: a manifest lacking drift_definition was read as 'expected' while the default is 'rank'."""
    from pipeline.config import CurateConfig
    from schemas import Manifest

    root = write_dataset(tmp_path / "d", scored_rows())
    manifest = Manifest.read(root)
    manifest.model_copy(update={"config": {}}).write(root)
    scoring = read_dataset_info(root).scoring
    defaults = CurateConfig()
    assert scoring.drift_definition == defaults.drift_definition == "rank"
    assert (scoring.model, scoring.encoder, scoring.chat_template, scoring.probe_max_new_tokens) == (
        defaults.model, defaults.encoder, defaults.chat_template, defaults.probe_max_new_tokens)
