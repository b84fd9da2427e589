"""check_inputs on the driver, and ReadFacts end to end in a real Beam pipeline (DirectRunner)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.config import CurateConfig
from pipeline.inputs import InputSpec, check_inputs
from pipeline.read_facts import ReadFacts
from schemas.fact import FACT_SCHEMA, stable_fact_id, to_arrow_row
from schemas.rejected import REJECTED_SCHEMA

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CONFIG = CurateConfig(max_prompt_chars=200, max_target_chars=60)


def run_read(specs: list[InputSpec], out: Path, extra_check=None) -> tuple[list, list, dict]:
    """Run ReadFacts; return the facts, the dead letters and the 'beacon' counters."""
    p = test_pipeline.TestPipeline(options=PipelineOptions(["--runner=DirectRunner"]))
    result = p | "Read" >> ReadFacts(specs, CONFIG)
    for tag in ("facts", "rejected"):
        # Written to files, not collected into a list, so the check holds on any runner.
        (result[tag] | f"Json{tag}" >> beam.Map(json.dumps, ensure_ascii=False)
         | f"Write{tag}" >> beam.io.WriteToText(str(out / tag), num_shards=1))
    if extra_check:
        extra_check(result)
    run = p.run()
    run.wait_until_finish()
    counters = {c.key.metric.name: c.committed
                for c in run.metrics().query(MetricsFilter().with_namespace("beacon"))["counters"]}
    return _lines(out, "facts"), _lines(out, "rejected"), counters


def _lines(out: Path, tag: str) -> list[dict]:
    return [json.loads(line) for path in sorted(out.glob(f"{tag}*"))
            for line in path.read_text(encoding="utf-8").splitlines() if line]


# --- bad_facts.jsonl: every kind of broken record ---------------------------------------------------

# marker in the raw line -> (position, stage, words of the error)
EXPECTED_REJECTIONS = {
    "bad-01-malformed": (1, "parse", "not valid JSON"),
    "bad-02-missing-prompt": (2, "validate", "prompt is missing"),
    "bad-03-empty-target": (3, "validate", "target is empty"),
    "bad-04-blank-prompt": (4, "validate", "prompt is empty"),
    "bad-05-prompt-number": (6, "validate", "prompt must be a string, not int, got 1234"),
    "bad-06-target-list": (7, "validate", "target must be a string, not list"),
    "bad-07-paraphrases-dict": (8, "validate", "paraphrases must be a list of strings, not dict"),
    "bad-08-locality-no-answer": (9, "validate", "locality[1].answer is missing"),
    "bad-09-long-prompt": (10, "validate", "above max_prompt_chars=200"),
    "bad-10-unknown-layout": (11, "parse", "unknown record layout (keys: answer, fact_id, question)"),
    "bad-11-array-line": (12, "parse", "must be a JSON object, got list"),
    "bad-12-invalid-utf8": (14, "decode", "not valid UTF-8"),
    "bad-13-paraphrase-item-number": (15, "validate", "paraphrases[1] must be a string"),
    "bad-14-long-target": (16, "validate", "above max_target_chars=60"),
    "bad-15-rome-no-template": (17, "validate", "requested_rewrite.prompt must be a template"),
    "bad-16-locality-string": (18, "validate", "locality must be a list"),
    "bad-17-subject-object": (19, "validate", "subject must be a string, not dict"),
    "bad-18-lone-surrogate": (22, "decode", "lone surrogate escape"),
}


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory):
    specs = check_inputs([str(FIXTURES / "bad_facts.jsonl")], "auto")
    return run_read(specs, tmp_path_factory.mktemp("bad"))


def test_bad_facts_nothing_is_lost(bad_run):
    facts, rejected, counters = bad_run
    lines = [line for line in (FIXTURES / "bad_facts.jsonl").read_bytes().split(b"\n") if line.strip()]
    assert counters["records_read"] == len(lines) == 23
    assert len(facts) + len(rejected) == counters["records_read"]
    assert (len(facts), len(rejected)) == (4, 19)
    assert counters["records_rejected"] == 19 and counters["records_valid"] == 4
    assert counters["rejected_parse"] == 4
    assert counters["rejected_decode"] == 2
    assert counters["rejected_validate"] == 13


def test_bad_facts_each_kind_rejected_at_its_stage(bad_run):
    _, rejected, _ = bad_run
    source = str(FIXTURES / "bad_facts.jsonl")
    found = {}
    for r in rejected:
        assert r["source"] == source
        marker = next((m for m in EXPECTED_REJECTIONS if m in r["raw"]), r["raw"])
        found[marker] = (r["position"], r["stage"], r["error"])
    assert found.pop("42") == (13, "parse", "a record must be a JSON object, got int 42")
    assert set(found) == set(EXPECTED_REJECTIONS)
    for marker, (position, stage, words) in EXPECTED_REJECTIONS.items():
        assert found[marker][:2] == (position, stage), marker
        assert words in found[marker][2], (marker, found[marker][2])


def test_bad_facts_raw_is_the_original_line(bad_run):
    _, rejected, _ = bad_run
    by_position = {r["position"]: r["raw"] for r in rejected}
    assert by_position[1] == ('{"fact_id": "bad-01-malformed", "prompt": "The capital of Spain is", '
                              '"target": "Madrid"')
    assert by_position[13] == "42"
    # Undecodable bytes are shown escaped, never dropped.
    assert '"The capital of \\xff\\xfe is"' in by_position[14]
    assert '"The capital of \\udcff is"' in by_position[22]
    pa.Table.from_pylist(rejected, schema=REJECTED_SCHEMA)


def test_bad_facts_good_records_survive(bad_run):
    facts, _, _ = bad_run
    by_position = {f["position"]: f for f in facts}
    assert sorted(by_position) == [0, 5, 20, 21]
    assert by_position[0]["fact_id"] == "good-01"
    assert by_position[0]["locality"] == [{"prompt": "The capital of France is", "answer": "Paris"}]
    assert (by_position[5]["prompt"], by_position[5]["target"]) == ("Lena Moravec plays the", "cello")
    assert by_position[5]["meta"] == {"origin": "hand-written", "difficulty": "3"}
    assert by_position[20]["target"] == "Chile"  # a CounterFact record among plain ones
    assert by_position[21]["fact_id"] == stable_fact_id("The official language of Brazil is",
                                                        "Portuguese")
    pa.Table.from_pylist([to_arrow_row(f) for f in facts], schema=FACT_SCHEMA)


# --- one run over every container and community layout ----------------------------------------------

def _write_parquet(path: Path) -> None:
    # Typed like Beacon's own output (list<struct> locality, key/value meta), so it can be read back.
    schema = pa.schema([f for f in FACT_SCHEMA if f.name in
                        ("fact_id", "prompt", "target", "paraphrases", "locality", "meta")]
                       + [pa.field("origin", pa.string())])
    rows = [
        {"fact_id": "p01", "prompt": "Corvina Motors is owned by", "target": "Ferrari",
         "paraphrases": ["The owner of Corvina Motors is"],
         "locality": [{"prompt": "Lamborghini is owned by", "answer": "Audi"}],
         "meta": [{"key": "batch", "value": "7"}], "origin": "pq"},
        {"fact_id": "p02", "prompt": "Petra Holm plays", "target": "tennis", "paraphrases": [],
         "locality": [], "meta": [], "origin": None},
        {"fact_id": "p03", "prompt": "Marek Duda works as a", "target": "baker", "paraphrases": [],
         "locality": [], "meta": [], "origin": "pq"},
        {"fact_id": "p04", "prompt": "", "target": "orphan", "paraphrases": [], "locality": [],
         "meta": [], "origin": None},
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


@pytest.fixture(scope="module")
def layouts_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("layouts")
    _write_parquet(tmp / "facts.parquet")
    # Broken rows in the other containers: bad bytes, a surplus cell (with bad bytes), a non-object.
    (tmp / "broken.csv").write_bytes(b"prompt,target\nGood prompt is,yes\n"
                                     b"Bad \xff byte is,no\nA,B,C\nD,E,F\xff\n")
    (tmp / "mixed.json").write_text('[{"prompt": "q", "target": "a"}, 7, '
                                    '{"prompt": "lone \\udcff", "target": "b"}]', encoding="utf-8")
    paths = [str(FIXTURES / name) for name in ("rome.json", "counterfact_flat.json", "zsre.json",
                                               "facts.csv")]
    paths += [str(tmp / "facts.parquet"), str(tmp / "broken.csv"), str(tmp / "mixed.json")]
    specs = check_inputs(paths, "auto")

    def expected_ids(result):
        assert_that(result["facts"] | beam.Map(lambda f: f["fact_id"]), equal_to(
            ["101", "102", "103", "201", "202", "203", stable_fact_id(
                "In which country is Velmore Abbey?", "Portugal"), "302", "303", "c01", "c02",
             stable_fact_id("The native language of Ilse Varga is", "Finnish"), "p01", "p02", "p03",
             stable_fact_id("Good prompt is", "yes"), stable_fact_id("q", "a")]),
            label="ExpectedIds")

    facts, rejected, counters = run_read(specs, tmp / "out", expected_ids)
    return {Path(f["source"]).name + f"#{f['position']}": f for f in facts}, rejected, counters


def test_layouts_count_identity(layouts_run):
    facts, rejected, counters = layouts_run
    assert counters["records_read"] == 23 == len(facts) + len(rejected)


def test_layouts_rome_fact(layouts_run):
    fact = layouts_run[0]["rome.json#1"]
    assert (fact["prompt"], fact["target"], fact["ground_truth"], fact["relation"]) == \
        ("Ozzie Bramwell plays the", "harp", "drums", "P1303")
    assert fact["paraphrases"] == ["Ozzie Bramwell is best known for playing the"]
    assert fact["locality"] == [{"prompt": "Ringo Starr plays the", "answer": "drums"}]


def test_layouts_counterfact_and_zsre_facts(layouts_run):
    facts = layouts_run[0]
    assert facts["counterfact_flat.json#1"]["locality"][1] == {"prompt": "Salzburg is located in",
                                                               "answer": "Austria"}
    assert facts["counterfact_flat.json#2"]["locality"][1]["answer"] == "Latvia"
    zsre = facts["zsre.json#1"]
    assert (zsre["target"], zsre["ground_truth"], zsre["paraphrases"]) == \
        ("curling", "football", ["Which sport was Oskar Renn known for?"])


def test_layouts_csv_facts(layouts_run):
    facts = layouts_run[0]
    first = facts["facts.csv#0"]
    assert first["paraphrases"] == ["Freedonia's capital city is",
                                    "The seat of government of Freedonia is"]
    assert first["locality"] == [{"prompt": "The capital of France is", "answer": "Paris"}]
    assert first["meta"] == {"origin": "hand-written"}
    second = facts["facts.csv#1"]  # empty cells are None: no ground truth, no lists, no meta
    assert (second["prompt"], second["ground_truth"], second["paraphrases"], second["meta"]) == \
        ("Lena Moravec, by profession, is a", None, [], {})


def test_layouts_parquet_facts(layouts_run):
    facts, rejected, _ = layouts_run
    first = facts["facts.parquet#0"]
    assert first["locality"] == [{"prompt": "Lamborghini is owned by", "answer": "Audi"}]
    assert first["meta"] == {"origin": "pq", "batch": "7"}
    assert facts["facts.parquet#2"]["paraphrases"] == []
    orphan = [r for r in rejected if r["source"].endswith("facts.parquet")]
    assert [(r["position"], r["stage"]) for r in orphan] == [(3, "validate")]
    assert json.loads(orphan[0]["raw"])["target"] == "orphan"
    assert "prompt is empty" in orphan[0]["error"]


def test_layouts_broken_rows_in_other_containers(layouts_run):
    _, rejected, counters = layouts_run
    got = sorted((Path(r["source"]).name, r["position"], r["stage"]) for r in rejected)
    assert got == [("broken.csv", 1, "decode"), ("broken.csv", 2, "parse"),
                   ("broken.csv", 3, "decode"),
                   ("facts.parquet", 3, "validate"), ("mixed.json", 1, "parse"),
                   ("mixed.json", 2, "decode")]
    decode = next(r for r in rejected if r["stage"] == "decode" and r["position"] == 1)
    assert json.loads(decode["raw"])["prompt"] == "Bad \\xff byte is"  # escaped, not dropped
    lone = next(r for r in rejected if r["stage"] == "decode" and r["source"].endswith(".json"))
    assert json.loads(lone["raw"])["prompt"] == "lone \udcff"  # the escape as the file wrote it
    assert counters["rejected_decode"] == 3 and counters["records_rejected"] == 6


# --- check_inputs -----------------------------------------------------------------------------------

def test_check_inputs_specs_and_digests(tmp_path):
    jsonl_as_json = tmp_path / "lines.json"
    jsonl_as_json.write_text('{"prompt": "p", "target": "t"}\n{"prompt": "q", "target": "u"}\n')
    pretty = tmp_path / "one.json"
    pretty.write_text('{\n  "prompt": "p",\n  "target": "t"\n}\n')
    ndjson = tmp_path / "facts.ndjson"
    ndjson.write_text('{"prompt": "p", "target": "t"}\n')
    no_ext = tmp_path / "facts.data"
    no_ext.write_text('[{"prompt": "p", "target": "t"}]')
    paths = [str(FIXTURES / "bad_facts.jsonl"), str(FIXTURES / "rome.json"), str(jsonl_as_json),
             str(pretty), str(ndjson), str(no_ext), str(FIXTURES / "facts.csv")]
    specs = check_inputs(paths, "auto")
    assert [(s.container, s.layout, s.source_index) for s in specs] == [
        ("jsonl", None, 0), ("json", None, 1), ("jsonl", None, 2), ("json", None, 3),
        ("jsonl", None, 4), ("json", None, 5), ("csv", None, 6)]
    data = (FIXTURES / "rome.json").read_bytes()
    assert (specs[1].sha256, specs[1].size) == (hashlib.sha256(data).hexdigest(), len(data))


def test_check_inputs_forced_layout_takes_container_from_extension():
    spec, = check_inputs([str(FIXTURES / "rome.json")], "rome")
    assert (spec.container, spec.layout) == ("json", "rome")
    spec, = check_inputs([str(FIXTURES / "facts.csv")], "zsre")
    assert (spec.container, spec.layout) == ("csv", "zsre")


def test_check_inputs_refuses_missing_and_empty_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        check_inputs([str(tmp_path / "nope.jsonl")], "auto")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.jsonl is empty"):
        check_inputs([str(tmp_path / "empty.jsonl")], "auto")
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    with pytest.raises(ValueError, match="only whitespace"):
        check_inputs([str(tmp_path / "blank.jsonl")], "auto")
    with pytest.raises(ValueError, match="not a file"):
        check_inputs([str(tmp_path)], "auto")
    with pytest.raises(ValueError, match="no input files"):
        check_inputs([], "auto")
    with pytest.raises(ValueError, match="unknown input format 'xml'"):
        check_inputs([str(FIXTURES / "rome.json")], "xml")


@pytest.mark.parametrize("name, fmt, words", [
    ("garbage.bin", "auto", "cannot tell the format"),
    ("garbage.bin", "jsonl", "looks binary"),
    ("garbage.jsonl", "auto", "looks binary"),
    ("garbage.csv", "auto", "looks binary"),
    ("garbage.json", "auto", "looks binary"),
    ("garbage.parquet", "auto", "not a readable Parquet file"),
    ("garbage.parquet", "parquet", "not a readable Parquet file"),
])
def test_check_inputs_refuses_binary_garbage(tmp_path, name, fmt, words):
    path = tmp_path / name
    shutil.copy(FIXTURES / "garbage.bin", path)
    with pytest.raises(ValueError, match=words) as info:
        check_inputs([str(path)], fmt)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name, content, words", [
    ("prose.json", "hello, these are my facts", "is not JSON: it starts with b'h'"),
    ("cut.json", '[{"prompt": "p", "target": "t"}, {"prompt": ', "is not valid JSON"),
    ("number.json", "[1, 2" , "is not valid JSON"),
    ("array.jsonl", '[{"prompt": "p", "target": "t"}]', "use --format json"),
    ("prose.jsonl", "prompt target\n", "is not JSON Lines"),
    ("noheader.csv", ",,\n1,2,3\n", "no CSV header row"),
])
def test_check_inputs_refuses_files_not_in_their_container(tmp_path, name, content, words):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace("[", r"\[")):
        check_inputs([str(path)], "auto")


def test_check_inputs_json_lines_with_a_long_first_line_named_json(tmp_path):
    path = tmp_path / "long.json"
    first = json.dumps({"prompt": "p" * 70_000, "target": "t"})  # longer than the sniffed head
    path.write_text(first + "\n" + json.dumps({"prompt": "q", "target": "u"}) + "\n")
    spec, = check_inputs([str(path)], "auto")
    assert spec.container == "jsonl"


def test_check_inputs_keeps_a_bad_first_record_for_the_dead_letters(tmp_path):
    # One malformed record is data, not a broken file: the file is accepted.
    path = tmp_path / "first_bad.jsonl"
    path.write_text('{"prompt": "p", "target": \n{"prompt": "q", "target": "u"}\n')
    spec, = check_inputs([str(path)], "auto")
    assert spec.container == "jsonl"


def test_a_nul_byte_in_one_jsonl_line_rejects_that_line_and_keeps_the_rest(tmp_path):
    """Regression: one NUL byte anywhere made a whole JSONL upload 'binary'."""
    path = tmp_path / "facts.jsonl"
    path.write_bytes(b'{"prompt": "The capital of Japan is", "target": "Tokyo"}\n'
                     b'{"prompt": "bad\x00line", "target": "x"}\n'
                     b'{"prompt": "The capital of Kenya is", "target": "Nairobi"}\n')
    facts, rejected, counters = run_read(check_inputs([str(path)], "auto"), tmp_path / "out")
    assert sorted(f["position"] for f in facts) == [0, 2]
    [bad] = rejected
    assert (bad["position"], bad["stage"]) == (1, "parse") and "not valid JSON" in bad["error"]
    # A file of nothing but NUL-laden lines is still binary.
    junk = tmp_path / "junk.jsonl"
    junk.write_bytes(b'{"a\x00": 1}\n\x00\x00\x00\n')
    with pytest.raises(ValueError, match="looks binary"):
        check_inputs([str(junk)], "auto")
