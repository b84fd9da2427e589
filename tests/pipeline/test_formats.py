"""Record layouts -> Fact dicts, and every validation rule, tested on the pure functions."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
from pydantic import ValidationError

from pipeline.config import CurateConfig
from pipeline.formats import RecordError, detect_layout, to_fact
from schemas.fact import FACT_SCHEMA, Fact, stable_fact_id, to_arrow_row

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "facts.jsonl"
CONFIG = CurateConfig(max_prompt_chars=200, max_target_chars=60)


def convert(record: dict, layout: str | None = None, config: CurateConfig = CONFIG) -> dict:
    return to_fact(record, layout=layout or detect_layout(record), source="in.jsonl", position=3,
                   config=config)


def rejection(record, layout: str | None = None, config: CurateConfig = CONFIG) -> RecordError:
    with pytest.raises(RecordError) as info:
        convert(record, layout, config)
    return info.value


def assert_is_fact(fact: dict) -> None:
    """Exactly the schema's fields, accepted by the pydantic model and by the Arrow schema."""
    assert list(fact) == FACT_SCHEMA.names
    Fact(**fact)
    pa.Table.from_pylist([to_arrow_row(fact)], schema=FACT_SCHEMA)


# --- detect_layout ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fixture, layout", [
    ("rome.json", "rome"), ("counterfact_flat.json", "counterfact"), ("zsre.json", "zsre")])
def test_detect_layout_of_community_fixtures(fixture, layout):
    records = json.loads((FIXTURES / fixture).read_text(encoding="utf-8"))
    assert [detect_layout(r) for r in records] == [layout] * len(records)


def test_detect_layout_plain_even_when_a_required_field_is_missing():
    # Only one of prompt/target still reads as plain, so validation can name the missing field.
    assert detect_layout({"prompt": "p", "target": "t"}) == "plain"
    assert detect_layout({"target": "t"}) == "plain"


def test_unknown_layout_is_a_parse_error_naming_the_keys():
    err = rejection({"question": "Who?", "answer": "Me"})
    assert err.stage == "parse"
    assert "answer, question" in err.message


@pytest.mark.parametrize("value", [42, [1, 2], "text", None])
def test_non_object_record_is_a_parse_error(value):
    with pytest.raises(RecordError) as info:
        detect_layout(value)
    assert info.value.stage == "parse"
    assert type(value).__name__ in str(info.value)


def test_record_error_carries_stage_and_message():
    err = RecordError("validate", "prompt is empty")
    assert (err.stage, err.message, str(err)) == ("validate", "prompt is empty", "prompt is empty")


# --- community layouts ------------------------------------------------------------------------------

def test_rome_record_converts():
    record = json.loads((FIXTURES / "rome.json").read_text(encoding="utf-8"))[0]
    fact = convert(record)
    assert_is_fact(fact)
    assert fact == {
        "fact_id": "101",
        "prompt": "The mother tongue of Karen Lindqvist is",
        "target": "Welsh",
        "subject": "Karen Lindqvist",
        "relation": "P103",
        "ground_truth": "Danish",
        "paraphrases": ["Karen Lindqvist grew up speaking",
                        "The first language Karen Lindqvist learned was"],
        "locality": [{"prompt": "The mother tongue of Hans Christian Andersen is", "answer": "Danish"},
                     {"prompt": "The native language of Søren Kierkegaard is", "answer": "Danish"}],
        "source": "in.jsonl",
        "position": 3,
        "meta": {"layout": "rome"},
    }


def test_rome_template_at_the_start_and_empty_lists():
    records = json.loads((FIXTURES / "rome.json").read_text(encoding="utf-8"))
    assert convert(records[1])["prompt"] == "Ozzie Bramwell plays the"
    third = convert(records[2])
    assert (third["paraphrases"], third["locality"]) == ([], [])


def test_rome_prompt_without_template_is_rejected():
    record = {"case_id": 1, "requested_rewrite": {
        "prompt": "The mother tongue of Ada is", "subject": "Ada",
        "target_new": {"str": "Welsh"}, "target_true": {"str": "English"}}}
    err = rejection(record)
    assert err.stage == "validate"
    assert "requested_rewrite.prompt" in err.message and "'{}'" in err.message


@pytest.mark.parametrize("rewrite, field", [
    ("not an object", "requested_rewrite"),
    ({"prompt": "{} is", "target_new": {"str": "x"}}, "requested_rewrite.subject"),
    ({"prompt": "{} is", "subject": "A", "target_new": ["x"]}, "requested_rewrite.target_new"),
    ({"prompt": "{} is", "subject": "A", "target_new": {"id": "Q1"}}, "target_new.str"),
])
def test_rome_broken_rewrite_names_the_field(rewrite, field):
    err = rejection({"case_id": 1, "requested_rewrite": rewrite})
    assert err.stage == "validate"
    assert field in err.message


def test_rome_neighbourhood_needs_the_true_answer():
    record = {"requested_rewrite": {"prompt": "{} plays", "subject": "A", "target_new": {"str": "x"}},
              "neighborhood_prompts": ["B plays"]}
    err = rejection(record)
    assert "target_true.str" in err.message


def test_counterfact_flat_single_strings():
    record = json.loads((FIXTURES / "counterfact_flat.json").read_text(encoding="utf-8"))[0]
    fact = convert(record)
    assert_is_fact(fact)
    assert (fact["fact_id"], fact["prompt"], fact["target"], fact["ground_truth"]) == \
        ("201", "Mira Castell, the", "violin", "trumpet")
    assert fact["paraphrases"] == ["Mira Castell is superb at playing the"]
    assert fact["locality"] == [{"prompt": "Louis Armstrong performs on the", "answer": "trumpet"}]


def test_counterfact_flat_parallel_lists():
    record = json.loads((FIXTURES / "counterfact_flat.json").read_text(encoding="utf-8"))[1]
    fact = convert(record)
    assert fact["paraphrases"] == ["Brennholt Stadium can be found in", "Brennholt Stadium lies in"]
    assert fact["locality"] == [{"prompt": "Vienna is located in", "answer": "Austria"},
                                {"prompt": "Salzburg is located in", "answer": "Austria"}]


def test_knowedit_nested_locality_and_list_ground_truth():
    record = json.loads((FIXTURES / "counterfact_flat.json").read_text(encoding="utf-8"))[2]
    fact = convert(record)
    assert_is_fact(fact)
    assert fact["ground_truth"] == "Estonian"
    assert fact["paraphrases"] == ["People in Tarvonia officially speak"]
    assert fact["locality"] == [{"prompt": "The official language of Estonia is", "answer": "Estonian"},
                                {"prompt": "Tarvonia borders", "answer": "Latvia"}]


def test_counterfact_paraphrase_starting_with_a_bracket_is_text():
    # As in the real CounterFact data: a rephrase prompt that starts with '[' but is not JSON.
    fact = convert({"prompt": "p", "target_new": "t",
                    "rephrase_prompt": "[page 34. Leonard Hayflick originated from"})
    assert fact["paraphrases"] == ["[page 34. Leonard Hayflick originated from"]
    listed = convert({"prompt": "p", "target_new": "t", "rephrase_prompt": '["a", "b"]'})
    assert listed["paraphrases"] == ["a", "b"]  # JSON text from a CSV cell


def test_counterfact_locality_lists_must_pair_up():
    err = rejection({"prompt": "p", "target_new": "t", "locality_prompt": ["a", "b"],
                     "locality_ground_truth": ["x"]})
    assert err.stage == "validate"
    assert "2 items" in err.message and "has 1" in err.message


def test_counterfact_missing_target_new_names_it():
    err = rejection({"prompt": "p", "target_new": None, "case_id": 4})
    assert err.stage == "validate" and "target_new is missing" in err.message


def test_zsre_converts_and_derives_an_id_when_none_is_given():
    records = json.loads((FIXTURES / "zsre.json").read_text(encoding="utf-8"))
    first = convert(records[0])
    assert_is_fact(first)
    assert first["fact_id"] == stable_fact_id("In which country is Velmore Abbey?", "Portugal")
    assert (first["prompt"], first["target"], first["subject"], first["ground_truth"]) == \
        ("In which country is Velmore Abbey?", "Portugal", "Velmore Abbey", "England")
    assert first["paraphrases"] == ["Velmore Abbey is in which country?"]
    assert first["locality"] == [{"prompt": "nq question: who wrote the novel middlemarch",
                                  "answer": "George Eliot"}]
    assert convert(records[1])["fact_id"] == "302"
    assert convert(records[2])["ground_truth"] is None  # empty answers list


def test_forced_layout_reports_its_own_missing_field():
    err = rejection({"prompt": "p", "target": "t"}, layout="zsre")
    assert err.stage == "validate" and "src is missing" in err.message


# --- plain layout -----------------------------------------------------------------------------------

def test_plain_strips_text_and_derives_a_stable_id():
    fact = convert({"prompt": "  The capital of Freedonia is \n", "target": " Marlow "})
    assert_is_fact(fact)
    assert (fact["prompt"], fact["target"]) == ("The capital of Freedonia is", "Marlow")
    assert fact["fact_id"] == stable_fact_id("The capital of Freedonia is", "Marlow")
    assert (fact["paraphrases"], fact["locality"], fact["meta"]) == ([], [], {})


def test_plain_keeps_unknown_keys_and_given_meta_as_strings():
    fact = convert({"fact_id": 7, "prompt": "p", "target": "t", "origin": "survey", "score": 3,
                    "tags": ["a", "b"], "empty": None,
                    "meta": {"origin": "given wins", "batch": 2}})
    assert_is_fact(fact)
    assert fact["fact_id"] == "7"
    assert fact["meta"] == {"origin": "given wins", "score": "3", "tags": '["a", "b"]', "batch": "2"}


def test_plain_parses_json_text_cells_as_csv_gives_them():
    fact = convert({"prompt": "p", "target": "t",
                    "paraphrases": '["q1", " q2 ", ""]',
                    "locality": '[{"prompt": "lp", "answer": "la"}]',
                    "meta": '{"k": "v"}'})
    assert fact["paraphrases"] == ["q1", "q2"]
    assert fact["locality"] == [{"prompt": "lp", "answer": "la"}]
    assert fact["meta"] == {"k": "v"}


def test_plain_meta_as_key_value_pairs_as_parquet_maps_read():
    fact = convert({"prompt": "p", "target": "t", "meta": [("k", "v"), ("n", "1")]})
    assert fact["meta"] == {"k": "v", "n": "1"}


def test_plain_numbers_in_optional_text_fields_become_text():
    fact = convert({"prompt": "p", "target": "t", "relation": 17, "ground_truth": 1990.5})
    assert (fact["relation"], fact["ground_truth"]) == ("17", "1990.5")


@pytest.mark.parametrize("record, field, shown", [
    ({"target": "Paris"}, "prompt is missing", None),
    ({"prompt": "p", "target": ""}, "target is empty", "''"),
    ({"prompt": " \t ", "target": "t"}, "prompt is empty", "' \\t '"),
    ({"prompt": 1234, "target": "t"}, "prompt must be a string, not int", "1234"),
    ({"prompt": "p", "target": ["a", "b"]}, "target must be a string, not list", "['a', 'b']"),
    ({"prompt": "p", "target": True}, "target must be a string, not bool", "True"),
    ({"prompt": "p", "target": "t", "paraphrases": {"0": "q"}}, "paraphrases must be a list", "{'0': 'q'}"),
    ({"prompt": "p", "target": "t", "paraphrases": "just text"}, "paraphrases must be a list", "'just text'"),
    ({"prompt": "p", "target": "t", "paraphrases": ["ok", 7]}, "paraphrases[1] must be a string", "7"),
    ({"prompt": "p", "target": "t", "paraphrases": '["broken"'}, "paraphrases looks like JSON", '["broken"'),
    ({"prompt": "p", "target": "t", "locality": [{"prompt": "a", "answer": "b"}, {"prompt": "c"}]},
     "locality[1].answer is missing", None),
    ({"prompt": "p", "target": "t", "locality": [{"prompt": 3, "answer": "b"}]},
     "locality[0].prompt must be a string", "3"),
    ({"prompt": "p", "target": "t", "locality": ["a"]}, "locality[0] must be an object", "'a'"),
    ({"prompt": "p", "target": "t", "locality": "nowhere"}, "locality must be a list", "'nowhere'"),
    ({"prompt": "p", "target": "t", "subject": {"name": "x"}}, "subject must be a string", "{'name': 'x'}"),
    ({"prompt": "p", "target": "t", "fact_id": ["x"]}, "fact_id must be a string", "['x']"),
    ({"prompt": "p", "target": "t", "meta": ["x"]}, "meta must be an object", "['x']"),
])
def test_validation_errors_name_field_and_value(record, field, shown):
    err = rejection(record)
    assert err.stage == "validate"
    assert field in err.message
    if shown is not None:
        assert shown in err.message


def test_long_values_are_truncated_in_the_message():
    err = rejection({"prompt": "p", "target": ["x" * 500]})
    assert len(err.message) < 200 and "…" in err.message


@pytest.mark.parametrize("field, knob", [("prompt", "max_prompt_chars"), ("target", "max_target_chars")])
def test_length_limits_name_length_and_limit(field, knob):
    limit = getattr(CONFIG, knob)
    record = {"prompt": "p", "target": "t"}
    record[field] = "x" * limit
    assert convert(record)[field] == "x" * limit  # at the limit: accepted
    record[field] = "x" * (limit + 1)
    err = rejection(record)
    assert err.stage == "validate"
    assert f"{field} is {limit + 1} characters" in err.message and f"{knob}={limit}" in err.message


def test_length_is_measured_after_stripping():
    fact = convert({"prompt": "  " + "x" * 200 + "  ", "target": "t"})
    assert len(fact["prompt"]) == 200


# --- the shipped sample dataset ---------------------------------------------------------------------

def test_sample_dataset_is_valid_and_has_its_promised_cases():
    lines = SAMPLES.read_text(encoding="utf-8").splitlines()
    facts = [convert(json.loads(line), config=CurateConfig()) for line in lines]
    for fact in facts:
        assert_is_fact(fact)
        assert fact["meta"] == {}
    assert 40 <= len(facts) <= 60
    assert len({f["fact_id"] for f in facts}) == len(facts)
    pairs = Counter((f["prompt"], f["target"]) for f in facts)
    assert sum(n - 1 for n in pairs.values()) == 2, "exactly two exact duplicates"
    answers: dict[str, set[str]] = {}
    for f in facts:
        answers.setdefault(f["prompt"], set()).add(f["target"])
    assert sum(len(t) > 1 for t in answers.values()) == 1, "exactly one conflicting question"
    targets = Counter(f["target"] for f in {f["prompt"]: f for f in facts}.values())
    assert sum(n > 1 for n in targets.values()) >= 3, "a few targets shared by different prompts"
    assert sum(f["target"] == f["ground_truth"] for f in facts) >= 3, "a few already-true targets"
    assert len({f["relation"] for f in facts}) >= 6


def test_any_json_shape_gives_a_fact_or_a_record_error():
    """Arbitrary JSON values in any field: never a crash the reader would not catch."""
    import random

    values = [None, "", " ", "x", "[", '["a"]', '[{"prompt": "p"}]', "{x}", "{} is", 1, 1.5, True,
              [], [1], ["a", ""], [["a"]], {}, {"str": "a"}, [{"prompt": "p", "answer": "a"}],
              [{"prompt": "p"}], {"k": [{"prompt": ["p", "q"], "ground_truth": [["a"]]}]}, {"k": 5}]
    keys = ["prompt", "target", "fact_id", "case_id", "subject", "ground_truth", "paraphrases",
            "locality", "meta", "target_new", "rephrase_prompt", "locality_prompt",
            "locality_ground_truth", "src", "alt", "loc", "loc_ans", "answers", "requested_rewrite",
            "paraphrase_prompts", "neighborhood_prompts", "extra"]
    rng = random.Random(0)
    converted = 0
    for _ in range(3000):
        record = {k: rng.choice(values) for k in rng.sample(keys, rng.randint(1, 8))}
        for layout in ("plain", "counterfact", "rome", "zsre"):
            try:
                assert_is_fact(convert(record, layout))
                converted += 1
            except RecordError:
                pass
    assert converted > 0  # the generator does reach valid records too


# --- the field rules live on the Fact model ---------------------------------------------------------

def fact_data(**fields) -> dict:
    return {"prompt": "p", "target": "t", "source": "in.jsonl", "position": 0, **fields}


@pytest.mark.parametrize("prompt", ["", " \t "])
def test_fact_model_itself_rejects_an_empty_prompt(prompt):
    with pytest.raises(ValidationError) as info:
        Fact.model_validate(fact_data(prompt=prompt))
    assert [(e["loc"], e["type"]) for e in info.value.errors()] == [(("prompt",), "string_too_short")]


def test_fact_model_applies_length_limits_from_context_only():
    limits = {"max_prompt_chars": 200, "max_target_chars": 5}
    assert Fact.model_validate(fact_data(target="x" * 6)).target == "x" * 6  # no context, no limit
    with pytest.raises(ValidationError) as info:
        Fact.model_validate(fact_data(target="x" * 6), context=limits)
    (error,) = info.value.errors()
    assert (error["loc"], error["type"]) == (("target",), "too_long")
    assert "6 characters, above max_target_chars=5" in error["msg"]


def test_fact_model_normalises_text_lists_and_derives_the_id():
    fact = Fact.model_validate(fact_data(prompt=" p ", subject="  ", paraphrases=[" q ", ""],
                                         locality=[{"prompt": " lp ", "answer": "la"}]))
    assert (fact.prompt, fact.subject, fact.paraphrases) == ("p", None, ["q"])
    assert fact.fact_id == stable_fact_id("p", "t")
    assert fact.model_dump()["locality"] == [{"prompt": "lp", "answer": "la"}]
    assert list(fact.model_dump()) == FACT_SCHEMA.names


@pytest.mark.parametrize("record, message", [
    ({"prompt": "p", "target_new": "x" * 61}, "target_new is 61 characters, above max_target_chars=60"),
    ({"prompt": "p", "target_new": "t", "rephrase_prompt": ["ok", 7]}, "rephrase_prompt[1] must be a string"),
    ({"prompt": "p", "target_new": "t", "locality_prompt": ["a", " "], "locality_ground_truth": ["x", "y"]},
     "locality_prompt[1] is empty"),
    ({"prompt": "p", "target_new": "t", "locality": {"nb": [{"prompt": "a", "ground_truth": 5}]}},
     "locality.nb[0].ground_truth must be a string, not int"),
    ({"src": "q", "alt": "a", "loc": "lq"}, "loc_ans is missing"),
    ({"requested_rewrite": {"prompt": "{} is", "subject": "A", "target_new": {"str": " "}}},
     "requested_rewrite.target_new.str is empty"),
    ({"requested_rewrite": {"prompt": "{} is", "subject": "A", "target_new": {"str": "x"},
                            "target_true": {"str": "y"}}, "neighborhood_prompts": ["B is", "", 3]},
     "neighborhood_prompts[2] must be a string, not int"),
])
def test_community_errors_from_fact_name_the_source_key(record, message):
    err = rejection(record)
    assert err.stage == "validate"
    assert message in err.message


def test_plain_locality_items_may_carry_extra_keys():
    fact = convert({"prompt": "p", "target": "t",
                    "locality": [{"prompt": "lp", "answer": "la", "note": "from the survey"}]})
    assert fact["locality"] == [{"prompt": "lp", "answer": "la"}]
