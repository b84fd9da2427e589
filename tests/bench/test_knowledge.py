"""The knowledge benchmark: its statistics (pure) and one tiny real run end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.append(str(REPO / "bench"))

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
    assert "unknown arm 'magic'" in capsys.readouterr().err
    for bad, says in (("adaptive@k=0", "stable_visits"), ("adaptive@tau=2", "stable_prob"),
                      ("adaptive@q=1", "unknown option 'q=1'"), ("plain@k=2", "only adaptive"),
                      ("adaptive@replay=generic", "unknown option 'replay=generic'"),
                      ("adaptive@0.3", "unknown option '0.3'")):
        with pytest.raises(SystemExit):
            knowledge.parse_args(["--data", "x", "--out", "y", "--arms", f"plain,{bad}"])
        assert says in capsys.readouterr().err, bad


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
    # The closed-loop headline: steps to 90/95/100% (censored at the budget) and the arms at plain's 95%.
    for arm in ("plain", "curated"):
        assert set(results["steps_to"][arm]) == {"0.9", "0.95", "1.0"}
        for cell in results["steps_to"][arm].values():
            assert {"mean", "sd", "censored"} <= set(cell) and 1 <= cell["mean"] <= 2
        # 4 of the 12 records are rejected: 100% of the requested facts is out of reach, always censored.
        assert results["steps_to"][arm]["1.0"] == {**results["steps_to"][arm]["1.0"], "mean": 2.0, "censored": 1}
        assert {"mean", "sd"} <= set(results["at_plain95"][arm]["efficacy_all"])
    assert 1 <= results["plain95"]["step"] <= 2
    # Compute to 95%, paired against plain: seconds per step x steps to 95%, a positive multiple.
    ratio = results["closed_loop"]["compute_to_0.95"]["curated"]
    assert ratio["n"] == 1 and ratio["mean"] > 0
    assert "train s to 95% (× plain" in (out / "report.md").read_text()
    assert json.loads((out / "runs" / "plain-0.curve.json").read_text())["curve"].keys() == {"1", "2"}
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


def test_closed_loop_arms_share_plain_rows_and_differ_in_their_config():
    facts = _facts()
    for arm in ("plain+stop", "adaptive", "adaptive+locality", "adaptive+locality@0.3"):
        assert knowledge.arm_rows(arm, facts) == knowledge.arm_rows("plain", facts), arm
    assert knowledge.effective_config("adaptive") == {**knowledge.PLAIN_CONFIG, "schedule": "adaptive",
                                                      "stop_when_learned": True}
    assert knowledge.effective_config("adaptive+locality@0.3")["locality_weight"] == 0.3
    # A sweep's arm: the adaptive arm with the schedule knobs it names, nothing else changed.
    assert knowledge.arm_config("adaptive@k=3:tau=0.8:r=0") == {
        **knowledge.arm_config("adaptive"), "stable_visits": 3, "stable_prob": 0.8, "rehearse_rate": 0.0}
    assert knowledge.arm_config("adaptive+locality@0.3:k=1") == {
        **knowledge.arm_config("adaptive+locality"), "locality_weight": 0.3, "stable_visits": 1}
    assert knowledge.arm_rows("adaptive@k=3", facts) == knowledge.arm_rows("plain", facts)
    # Where the replay prompts come from: Beacon's generic prefixes as a replay file, or the default.
    from trainer.replay import GENERIC_FILE

    assert knowledge.arm_config("adaptive+locality@0.3:replay=generic") == {
        **knowledge.arm_config("adaptive+locality@0.3"), "replay": str(GENERIC_FILE)}
    assert knowledge.effective_config("adaptive+locality@0.3:replay=subjects") == knowledge.effective_config(
        "adaptive+locality@0.3")
    with pytest.raises(ValueError, match="replay='wiki'; known: subjects, generic"):
        knowledge.arm_config("adaptive+locality@0.3:replay=wiki")
    # Arms are told apart by their effective config: the replay source is part of it.
    assert (knowledge.effective_config("adaptive+locality@0.3:replay=generic")
            != knowledge.effective_config("adaptive+locality@0.3"))
    # A repeated option would let the last one win silently.
    with pytest.raises(ValueError, match="sets replay twice"):
        knowledge.arm_config("adaptive+locality@0.3:replay=generic:replay=subjects")
    with pytest.raises(ValueError, match="sets locality_weight twice"):
        knowledge.arm_config("adaptive+locality@0.3:0.5")
    # The locality term on plain's schedule: it differs from plain in the term alone, and from the
    # adaptive locality arm in the schedule alone; the schedule's knobs do not apply to it.
    assert knowledge.effective_config("plain+locality@0.3:replay=generic") == {
        **knowledge.PLAIN_CONFIG, "locality_weight": 0.3, "replay": str(GENERIC_FILE)}
    differs = {k for k, v in knowledge.effective_config("adaptive+locality@0.3").items()
               if knowledge.effective_config("plain+locality@0.3")[k] != v}
    assert differs == {"schedule", "stop_when_learned"}
    assert knowledge.arm_rows("plain+locality@0.3", facts) == knowledge.arm_rows("plain", facts)
    with pytest.raises(ValueError, match=r"unknown option 'k=1' \(replay=SOURCE or a locality weight\)"):
        knowledge.arm_config("plain+locality@0.3:k=1")
    with pytest.raises(ValueError, match=r"unknown option 'replay=generic' \(k=N, tau=X, r=X\)"):
        knowledge.arm_config("adaptive@replay=generic")
    with pytest.raises(ValueError, match="only adaptive, adaptive\\+locality, plain\\+locality take @options"):
        knowledge.arm_config("plain+stop@0.3")
    # default: the curated rows with TrainConfig's own defaults for every compared key.
    from trainer.config import TrainConfig

    assert knowledge.arm_rows("default", facts) == knowledge.arm_rows("curated", facts)
    assert knowledge.effective_config("default") == {k: TrainConfig.model_fields[k].default
                                                     for k in knowledge.PLAIN_CONFIG}


def test_steps_to_reads_the_trace_and_censors_at_the_budget():
    rows = [{"step": 1, "fact_id": "a", "learned": True}, {"step": 1, "fact_id": "b", "learned": False},
            {"step": 2, "fact_id": "b", "learned": True}, {"step": 3, "fact_id": "a", "learned": False},
            {"step": 4, "fact_id": "a", "learned": True}]
    share = knowledge.trace_learned_fraction(rows, requested=2, max_steps=5)
    assert share == [0.5, 1.0, 0.5, 1.0, 1.0]  # a fact counts by its latest visit
    assert knowledge.steps_to(share, 1.0) == (2, False)
    # Out of 4 requested (2 filtered or rejected), 100% is never reached: censored at the budget.
    assert knowledge.steps_to(knowledge.trace_learned_fraction(rows, 4, 5), 1.0) == (5, True)


def test_snapshots_are_taken_at_the_step_or_the_stop(tmp_path):
    for step in (10, 20, 27):
        (tmp_path / f"{step}.pt").write_bytes(b"")
    assert knowledge.snapshot_at(tmp_path, 20, 27) == (tmp_path / "20.pt", 20)
    assert knowledge.snapshot_at(tmp_path, 40, 27) == (tmp_path / "27.pt", 27)  # evaluated as it stopped
    with pytest.raises(FileNotFoundError, match="no snapshot at step 15"):
        knowledge.snapshot_at(tmp_path, 15, 27)
    with pytest.raises(FileNotFoundError, match="no snapshot at step 40"):
        knowledge.snapshot_at(tmp_path, 40, None)  # a run that did not stop has every 10th step


def test_curve_steps_to_takes_the_first_snapshot_and_censors_at_the_budget():
    curve = {"10": 0.5, "20": 0.92, "30": 0.97, "40": 0.95}
    assert knowledge.curve_steps_to(curve, 0.9, 40) == (20, False)
    assert knowledge.curve_steps_to(curve, 0.95, 40) == (30, False)
    assert knowledge.curve_steps_to(curve, 1.0, 40) == (40, True)
    stopped = {"10": 0.5, "20": 0.9, "23": 1.0}  # stopped at 23: read on the common grid, at 30
    assert knowledge.curve_steps_to(stopped, 1.0, 40) == (30, False)
