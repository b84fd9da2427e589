"""A tiny real run on the bundled SmolLM2: train a few steps, evaluate, reload the adapter."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from trainer.config import EvalConfig, TrainConfig
from trainer.evaluate import evaluate
from trainer.train import train
from trainer_fixtures import scored_rows

RATES = ("efficacy", "efficacy_before", "efficacy_prob", "paraphrase", "locality", "locality_bleed",
         "pushed_away")


@pytest.mark.slow
def test_train_then_evaluate_then_reload(tiny_dataset: Path, tmp_path: Path, read_everywhere) -> None:
    run = tmp_path / "run"
    config = TrainConfig(max_steps=4, epochs=None, batch_size=4, learning_rate=3e-3, save_steps=2,
                         logging_steps=1, progress=False)
    result = train(tiny_dataset, run, config)
    assert (result.global_step, result.facts, result.resumed_from) == (4, 5, None)
    for path in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "config.json",
                 "checkpoints/checkpoint-4/optimizer.pt", "checkpoints/checkpoint-4/beacon_run.json",
                 "train_summary.json", "trace.parquet"):
        assert (run / path).is_file(), path
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["dataset"]["dataset_id"] == "ds-test" and recorded["train"]["learning_rate"] == 3e-3

    metrics = evaluate(run, EvalConfig(batch_size=8, progress=False))
    assert metrics == json.loads((run / "metrics.json").read_text())
    for group in (metrics, metrics["kept"], metrics["filtered"], *metrics["by_drift_quartile"].values()):
        for key in RATES:
            assert key in group and (group[key] is None or 0.0 <= group[key] <= 1.0), key
    assert (metrics["n"], metrics["filtered"]["n"]) == (5, 1)
    # Four steps move the trained targets up, and not the untrained one as much.
    assert metrics["kept"]["target_logprob_after"] > metrics["kept"]["target_logprob_before"] + 0.5

    # The trace: every visit a row. 5 kept facts in batches of 4 make epochs of a batch of 4 and one of 1.
    trace = pq.read_table(run / "trace.parquet").to_pylist()
    assert [sum(r["step"] == s for r in trace) for s in (1, 2, 3, 4)] == [4, 1, 4, 1]
    kept_ids = {r["fact_id"] for r in scored_rows() if r["keep"]}
    assert {r["fact_id"] for r in trace} <= kept_ids
    for r in trace:
        assert 0.0 <= r["target_prob_min"] <= r["target_prob_mean"] <= 1.0 and 0.0 <= r["distance"] <= 2.0
    assert metrics["training"]["traced"] == len({r["fact_id"] for r in trace})

    table = pq.read_table(run / "eval.parquet")
    by_id = {r["fact_id"]: r for r in table.to_pylist()}
    for fact_id, row in by_id.items():
        seen = [r for r in trace if r["fact_id"] == fact_id]
        assert row["trained_visits"] == (len(seen) or None)
        if not seen:
            assert row["first_learned_step"] is None and row["times_forgotten"] is None
    rows = scored_rows()
    assert table.num_rows == len(rows)
    assert dict(zip(table.column("fact_id").to_pylist(), table.column("kept").to_pylist())) == \
        {r["fact_id"]: r["keep"] for r in rows}
    query = (f"select count(*) from '{run}/eval.parquet' e "
             f"join '{tiny_dataset}/scored/*.parquet' s using (fact_id)")
    assert duckdb.connect().execute(query).fetchone()[0] == len(rows)
    # eval.parquet loads the same in every library people analyse results with.
    for library, (columns, read) in read_everywhere([run / "eval.parquet"]).items():
        assert columns == table.column_names and len(read) == len(rows), library
        assert sorted(r["fact_id"] for r in read) == sorted(r["fact_id"] for r in rows), library

    # The adapter on disk reproduces the evaluation: the same greedy answers, the same efficacy.
    from scoring.lm_scores import decode_answer, encode_pair, greedy_answers
    from trainer.metrics import starts_with_target
    from trainer.model_io import load_trained

    model, tokenizer = load_trained(run, "bundled:smollm2-135m-instruct")
    budgets = [len(encode_pair(tokenizer, r["prompt"], r["target"])[1]) + 2 for r in rows]
    answers = [decode_answer(tokenizer, a) for a in
               greedy_answers(model, tokenizer, [r["prompt"] for r in rows], budgets, batch_size=8)]
    assert answers == table.column("answer").to_pylist()
    assert [starts_with_target(a, r["target"]) for a, r in zip(answers, rows)] == \
        table.column("efficacy").to_pylist()


@pytest.mark.slow
def test_paraphrase_augmentation_trains_a_share_and_evaluates_the_rest(tmp_path: Path) -> None:
    from trainer_fixtures import write_dataset

    rows = scored_rows()
    for r in rows:
        r["paraphrases"] = [r["paraphrases"][0], r["paraphrases"][0] + " (asked again)"]
    rows[0]["paraphrases"] = rows[0]["paraphrases"][:1]  # one paraphrase: kept for evaluation
    dataset = write_dataset(tmp_path / "dataset", rows)
    run = tmp_path / "run"
    result = train(dataset, run, TrainConfig(max_steps=3, epochs=None, batch_size=3, progress=False,
                                             augment="paraphrases", paraphrase_share=0.5))
    assert (result.facts, result.examples) == (5, 9)  # 5 kept facts + 4 trained paraphrases
    traced = {r["fact_id"] for r in pq.read_table(run / "trace.parquet").to_pylist()}
    assert traced <= {f"f{i}" for i in range(5)} | {f"f{i}#para0" for i in range(1, 5)}
    assert "f0#para0" not in traced

    metrics = evaluate(run, EvalConfig(batch_size=8, progress=False))
    # Over the kept facts: f0 keeps its one paraphrase, f1..f4 their second (f5 is filtered).
    assert metrics["paraphrases"]["evaluated"] == 5 and metrics["paraphrases"]["trained_on"] == 4
    assert "held out only" in metrics["paraphrases"]["scope"]
    counts = pq.read_table(run / "eval.parquet").column("paraphrase_count").to_pylist()
    assert counts == [1, 1, 1, 1, 1, 1]
