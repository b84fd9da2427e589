"""Each pyarrow schema and its pydantic model describe the same record."""

import json
import types
import typing

import pyarrow as pa
import pytest
from pydantic import BaseModel

from schemas import (FACT_SCHEMA, REJECTED_SCHEMA, SCORED_SCHEMA, Counts, Fact, Manifest, Rejected,
                     ScoredFact, ScoringSpec)
from schemas.fact import stable_fact_id, to_arrow_row, upgrade_meta
from schemas.manifest import InputFile, ModelRef

FACT = dict(fact_id="f1", prompt="The capital of Freedonia is", target="Marlow", subject="Freedonia",
            relation="capital", ground_truth="Fredonia City", paraphrases=["Freedonia's capital is"],
            locality=[{"prompt": "The capital of France is", "answer": "Paris"}], source="a.jsonl",
            position=0, meta={"origin": "test"})
SCORED = dict(FACT, prediction="Paris", drift=0.3, drift_definition="expected", drift_sentence=0.4, drift_lm=0.5, drift_expected=0.3, drift_rank=0.2,
              target_logprob=-3.2, target_rank=12, interference=0.42, neighbors=1, conflicts_with=["f9"],
              shared_target=2, risk=0.3, duplicate_of=None, keep=True, reason="kept", weight=1.0,
              config_hash="abc")
MANIFEST = Manifest(
    dataset_id="ds_1", created_at="2026-11-30T00:00:00+00:00", beacon_version="0.1.0",
    inputs=[InputFile(path="a.jsonl", sha256="00", bytes=10)], input_digest="11", format="auto",
    counts=Counts(input=3, scored=2, rejected=1, kept=1, by_reason={"kept": 1, "duplicate": 1}),
    rejected_by_stage={"parse": 1}, quantiles={"drift": {"q0.5": 0.3}}, thresholds={"max_drift": 0.9},
    config={"model": "x", "weight_clip": [0.2, 5.0]}, config_hash="abc",
    models={"lm": ModelRef(name="bundled:x", path="/p", revision="1")}, runner="FnApiRunner",
    timings={"total": 1.5})

PAIRS = [(FACT_SCHEMA, Fact), (SCORED_SCHEMA, ScoredFact), (REJECTED_SCHEMA, Rejected)]


def _optional(annotation) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in typing.get_args(annotation)


@pytest.mark.parametrize("schema,model", PAIRS, ids=lambda x: getattr(x, "__name__", "schema"))
def test_same_fields_in_same_order(schema: pa.Schema, model: type[BaseModel]):
    assert schema.names == list(model.model_fields)


@pytest.mark.parametrize("schema,model", PAIRS, ids=lambda x: getattr(x, "__name__", "schema"))
def test_nullability_agrees(schema: pa.Schema, model: type[BaseModel]):
    for field in schema:
        assert field.nullable == _optional(model.model_fields[field.name].annotation), field.name


@pytest.mark.parametrize("schema,model,row", [
    (FACT_SCHEMA, Fact, FACT), (SCORED_SCHEMA, ScoredFact, SCORED),
    (REJECTED_SCHEMA, Rejected, dict(source="a", position=3, raw="{", stage="parse", error="bad")),
])
def test_a_valid_record_round_trips_through_arrow(schema, model, row):
    validated = model(**row).model_dump()
    table = pa.Table.from_pylist([to_arrow_row(validated)], schema=schema)
    # What a reader gets back (meta as key/value structs) validates into the same record.
    assert model(**table.to_pylist()[0]) == model(**row)


def test_manifest_reads_back_what_it_wrote_and_its_scoring_defaults(tmp_path):
    MANIFEST.write(tmp_path)
    assert Manifest.read(tmp_path) == MANIFEST
    # Keys an older manifest lacks take ScoringSpec's defaults, the ones the pipeline would write now.
    assert MANIFEST.scoring == ScoringSpec(model="x")
    assert MANIFEST.scoring.drift_definition == "rank"


def test_a_missing_or_damaged_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="beacon curate"):
        Manifest.read(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid manifest"):
        Manifest.read(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({**MANIFEST.model_dump(), "counts": {"input": "x"}}))
    with pytest.raises(ValueError, match="counts.input"):
        Manifest.read(tmp_path)


def test_scored_reason_must_be_known():
    with pytest.raises(ValueError):
        ScoredFact(**dict(SCORED, reason="because"))


def test_stable_fact_id_depends_on_prompt_and_target_only():
    assert stable_fact_id("p", "t") == stable_fact_id("p", "t")
    assert stable_fact_id("p", "t") != stable_fact_id("p", "u")
    assert stable_fact_id("ab", "c") != stable_fact_id("a", "bc")


def test_meta_of_an_older_dataset_reads_as_the_current_type():
    # Datasets curated before meta became key/value structs carry an Arrow map; readers upgrade it.
    old = pa.table({"fact_id": ["a", "b"],
                    "meta": pa.array([[("origin", "x"), ("n", "1")], []], pa.map_(pa.string(), pa.string()))})
    upgraded = upgrade_meta(old)
    assert upgraded.schema.field("meta").type == FACT_SCHEMA.field("meta").type
    assert [Fact(prompt="p", target="t", source="s", position=0, meta=r["meta"]).meta
            for r in upgraded.to_pylist()] == [{"origin": "x", "n": "1"}, {}]
    assert upgrade_meta(upgraded) is upgraded
