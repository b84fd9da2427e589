"""The knowledge benchmark: its statistics (pure) and one tiny real run end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import knowledge  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures"


def test_auc_orders_and_ties():
    positive = np.array([0, 0, 1, 1])
    assert knowledge.auc(np.array([0.1, 0.2, 0.8, 0.9]), positive) == 1.0
    assert knowledge.auc(np.array([0.9, 0.8, 0.2, 0.1]), positive) == 0.0
    assert knowledge.auc(np.array([0.5, 0.5, 0.5, 0.5]), positive) == 0.5
    # One of 4 positive/negative pairs mis-ordered: 3/4.
    assert knowledge.auc(np.array([0.1, 0.7, 0.6, 0.9]), positive) == 0.75
    assert knowledge.auc(np.array([0.1, 0.2]), np.array([1, 1])) is None  # one class: undefined


def test_first_learned_takes_the_earliest_budget_and_marks_never():
    run = {"steps": {"10": {"efficacy": [1.0, 0.0, 0.0]}, "20": {"efficacy": [1.0, 1.0, 0.0]}}}
    assert knowledge.first_learned(run, [10, 20]).tolist() == [10.0, 20.0, 40.0]


def _facts() -> list[dict]:
    drift = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    return [{"fact_id": f"f{i}", "prompt": f"p{i}", "target": f"t{i}", "drift": d, "drift_expected": d,
             "shared_target": 1 if i in (2, 5) else 0, "keep": i != 3,
             "weight": 0.0 if i == 3 else 1.5 if i == 0 else 1.0} for i, d in enumerate(drift)]


def test_arms_differ_only_in_what_they_name():
    facts = _facts()
    plain = knowledge.arm_rows("plain", facts)
    assert [r["fact_id"] for r in plain] == [f["fact_id"] for f in facts]
    assert {r["weight"] for r in plain} == {1.0}
    curated = knowledge.arm_rows("curated", facts)
    assert "f3" not in {r["fact_id"] for r in curated} and curated[0]["weight"] == 1.5
    weighted = knowledge.arm_rows("weighted", facts)
    w = [r["weight"] for r in weighted]
    assert len(weighted) == len(facts) and np.isclose(np.mean(w), 1.0)
    assert w == sorted(w) and w[0] < w[-1]  # weighting: drift -> harder (higher drift) weighs more
    repeat = knowledge.arm_rows("repeat", facts)
    extra = [r["fact_id"] for r in repeat[len(facts):]]
    assert extra == ["f6", "f7"]  # the hardest quarter by drift, once more in the pool
    unique = knowledge.arm_rows("repeat_unique", facts)
    assert [r["fact_id"] for r in unique[len(facts):]] == ["f0", "f1", "f3", "f4", "f6", "f7"]
    with pytest.raises(ValueError, match="unknown arm 'nope'"):
        knowledge.arm_rows("nope", facts)


def test_a_filtering_arm_is_also_evaluated_at_equal_epochs():
    assert knowledge.eval_steps_of([40, 80], 100, "plain", 100) == [40, 80]
    assert knowledge.eval_steps_of([40, 80], 75, "curated", 100) == [30, 40, 60, 80]


def test_bad_arguments_are_named(capsys):
    with pytest.raises(SystemExit):
        knowledge.parse_args(["--data", "x", "--out", "y", "--budgets", "40,abc"])
    assert "--budgets must be comma-separated integers, got '40,abc'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        knowledge.parse_args(["--data", "x", "--out", "y", "--arms", "plain,magic"])
    assert "unknown arm(s) ['magic']" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_benchmark_end_to_end(tmp_path: Path):
    """12 records (4 broken), 2 budgets, 1 seed: every output exists, rejected facts count as not learned."""
    out = tmp_path / "kb"
    argv = ["--data", str(FIXTURES / "mini_facts.jsonl"), "--n", "12", "--budgets", "1,2", "--seeds", "1",
            "--arms", "plain,curated", "--eval-batch-size", "8", "--out", str(out)]
    assert knowledge.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    counts = results["dataset"]["counts"]
    assert counts["input"] == 12 and counts["scored"] + counts["rejected"] == 12
    # The default policy drops the conflict and the duplicate of the fixture: curated trains fewer
    # facts, so it is also reported at equal epochs.
    assert results["dataset"]["kept"] < counts["scored"]
    assert {"plain", "curated", "curated@epochs"} <= set(results["summary"])
    for arm in ("plain", "curated"):
        for budget in ("1", "2"):
            cell = results["summary"][arm][budget]["efficacy_all"]
            trainable = results["dataset"]["kept"] if arm == "curated" else counts["scored"]
            assert 0.0 <= cell["mean"] <= trainable / 12
            assert set(cell) == {"mean", "sd", "n"}
    run = json.loads((out / "runs" / "plain-0.json").read_text())
    learned = sum(run["steps"]["2"]["efficacy"])
    assert results["summary"]["plain"]["2"]["efficacy_all"]["mean"] == pytest.approx(learned / 12)
    assert set(results["auc"]) == set(knowledge.SIGNALS)
    assert set(results["auc"]["drift_expected"]) == {"1", "2"}
    for png in ("learning_curves.png", "accuracy_by_quartile.png"):
        assert (out / png).stat().st_size > 10_000
    assert "efficacy_all" in (out / "report.md").read_text()
    # A rerun reuses the cached runs; other settings in the same folder are refused.
    before = (out / "runs" / "plain-0.json").stat().st_mtime_ns
    assert knowledge.main(argv) == 0
    assert (out / "runs" / "plain-0.json").stat().st_mtime_ns == before
    with pytest.raises(SystemExit, match="other settings"):
        knowledge.main([*argv[:-2], "--lr", "0.01", "--out", str(out)])
