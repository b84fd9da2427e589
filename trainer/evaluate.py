"""``beacon eval R``: which facts the model learned, which it did not, and what it broke.

Loads the base model with the run's saved adapter (so the numbers are reproducible from the files),
evaluates every fact of the dataset, kept and filtered, once with the adapter disabled (the base model)
and once with it, and writes ``R/eval.parquet`` (one row per fact, joins the scored dataset on
``fact_id``) and ``R/metrics.json``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from schemas import ScoringSpec, storage
from schemas.manifest import local_folder
from trainer.config import EvalConfig, TrainConfig
from trainer.data import read_dataset_info, read_scored
from trainer.files import write_json, write_parquet
from trainer.metrics import EVAL_SCHEMA, build_metrics, drift_quartiles, starts_with_target
from trainer.runs import RUN_CONFIG, SUMMARY, fetch_run, publish_run, read_json

log = logging.getLogger(__name__)

BLANK_ANSWER_TOKENS = 8  # base-answer tokens compared on a locality prompt whose recorded answer is blank


def evaluate(run_dir: str | Path, config: EvalConfig | None = None, *,
             dataset_dir: str | Path | None = None) -> dict[str, Any]:
    """Evaluate a trained run; writes ``eval.parquet`` and ``metrics.json`` into it and returns the metrics.

    ``run_dir`` may be the URL of a published run (``beacon train --out URL``, a job's ``run/``): its
    files are fetched into a temporary folder, evaluated there and published back, ``files.json`` last.

    Raises:
        FileNotFoundError: the run or its adapter is missing.
        ValueError: ``dataset_dir`` is not the dataset the run was trained on.
    """
    config = config or EvalConfig()
    if not storage.is_url(run_dir):
        folder = local_folder(run_dir, "run")
        return _evaluate(folder, config, dataset_dir, shown=str(folder.resolve()))
    import tempfile

    url = storage.check_prefix(str(run_dir), "run")
    with tempfile.TemporaryDirectory(prefix=".beacon-eval.") as tmp:
        job_id = fetch_run(url, Path(tmp))
        metrics = _evaluate(Path(tmp), config, dataset_dir, shown=url)
        publish_run(Path(tmp), url, job_id=job_id)
    return metrics


def _evaluate(run_dir: Path, config: EvalConfig, dataset_dir: str | Path | None, *, shown: str) -> dict[str, Any]:
    started = time.perf_counter()
    run_path = run_dir / RUN_CONFIG
    if not run_path.is_file():
        raise FileNotFoundError(f"{run_path} not found: is {shown} a run written by `beacon train`?")
    run = json.loads(run_path.read_text())
    train_config = TrainConfig.model_validate(run["train"])
    dataset_dir = dataset_dir or run["dataset"]["path"]  # a folder or an object-store URL: no Path
    info = read_dataset_info(dataset_dir)
    if info.dataset_id != run["dataset"]["dataset_id"]:
        raise ValueError(f"{dataset_dir} is dataset {info.dataset_id}, but {shown} was trained on "
                         f"{run['dataset']['dataset_id']}; pass --dataset with the right one")
    chat = bool(train_config.chat_template)
    table = read_scored(dataset_dir, manifest=info.manifest)
    facts = table.to_pylist()
    paraphrases = {"evaluated": sum(len(f.get("paraphrases") or []) for f in facts if f["keep"]), "trained_on": 0,
                   "scope": "every paraphrase (none was trained on)"}
    if train_config.augment == "paraphrases":  # measure only the ones training never saw
        from trainer.augment import split_paraphrases

        split = [split_paraphrases(f.get("paraphrases"), train_config.paraphrase_share) for f in facts]
        facts = [{**f, "paraphrases": held} for f, (_, held) in zip(facts, split)]
        # Counted over the kept (trained) facts, the scope of the accuracy reported beside it.
        paraphrases = {"evaluated": sum(len(h) for (_, h), f in zip(split, facts) if f["keep"]),
                       "trained_on": sum(len(t) for (t, _), f in zip(split, facts) if f["keep"]),
                       "scope": f"held out only (augment: paraphrases, share {train_config.paraphrase_share})"}

    from trainer.model_io import load_trained

    model, tokenizer = load_trained(run_dir, train_config.model)
    scores = _score(model, tokenizer, facts, config, chat, info.scoring)

    n = len(facts)
    drift = np.asarray([f["drift"] for f in facts], dtype=float)
    pushed = scores["drift_after"] > scores["drift_before"] + config.pushed_away_epsilon
    columns = {
        "fact_id": [f["fact_id"] for f in facts],
        "kept": [bool(f["keep"]) for f in facts],
        "reason": [f["reason"] for f in facts],
        "weight": [float(f["weight"]) for f in facts],
        "drift": drift,
        "drift_quartile": drift_quartiles(drift),
        "target": [f["target"] for f in facts],
        "drift_definition": [info.scoring.drift_definition] * n,
        "pushed_away": pushed,
        **{k: v for k, v in scores.items() if k in EVAL_SCHEMA.names},
        **_trace_columns(run_dir, [f["fact_id"] for f in facts], config.pushed_away_epsilon),
    }
    result = pa.Table.from_pydict({name: columns[name] for name in EVAL_SCHEMA.names}, schema=EVAL_SCHEMA)
    trained = read_json(run_dir / SUMMARY) or {}
    metrics = build_metrics(result, drift_definition=info.scoring.drift_definition,
                            pushed_away_epsilon=config.pushed_away_epsilon, run={
                                "run_dir": shown, "dataset": str(dataset_dir),
                                "dataset_id": info.dataset_id, "dataset_config_hash": info.config_hash,
                                "base_model": train_config.model, "adapter": storage.join(shown, "adapter"),
                                "global_step": trained.get("global_step"),
                                "eval_seconds": round(time.perf_counter() - started, 1)})
    metrics["paraphrases"] = paraphrases
    if "drift_expected" in table.column_names:
        # The pipeline scores with scoring.lm_scores too: its drift_expected should match ours.
        diff = np.abs(np.asarray(table.column("drift_expected").to_pylist(), dtype=float)
                      - scores["drift_expected_before"])
        metrics["checks"] = {"drift_expected_vs_dataset_max_abs_diff": float(diff.max()) if n else None}
    write_parquet(result, run_dir / "eval.parquet")
    write_json(run_dir / "metrics.json", metrics)
    return metrics


def _trace_columns(run_dir: Path, fact_ids: list[str], margin: float) -> dict[str, list]:
    """Each fact's training history from ``R/trace.parquet`` (all null when the run kept none)."""
    import pyarrow.parquet as pq

    from trainer.trace import TRACE_FILE, summarise

    path = run_dir / TRACE_FILE
    per_fact = summarise(pq.read_table(path), margin=margin) if path.is_file() else {}
    keys = {"trained_visits": "visits", "first_learned_step": "first_learned_step",
            "times_forgotten": "times_forgotten", "pushed_away_in_training": "pushed_away_in_training"}
    return {column: [per_fact[f][key] if f in per_fact else None for f in fact_ids]
            for column, key in keys.items()}


def _score(model: Any, tokenizer: Any, facts: list[dict[str, Any]], config: EvalConfig, chat: bool,
           scoring: ScoringSpec) -> dict[str, Any]:
    """Every per-fact number, base (adapter disabled) then fine-tuned."""
    plan = EvalPlan.build(tokenizer, facts, config, chat, scoring)
    with model.disable_adapter():
        base = score_base(model, tokenizer, plan)
    return score_after(model, tokenizer, plan, base)


@dataclass
class EvalPlan:
    """What is evaluated for a list of facts: prompts, their answer budgets, paraphrase/locality prompts.

    Built once; the base model is scored once (``score_base``) and every trained state against it
    (``score_after``): ``beacon eval`` does it once, the knowledge benchmark at every budget.
    """

    facts: list[dict[str, Any]]
    config: EvalConfig
    chat: bool
    scoring: ScoringSpec  # the dataset's: drift is measured by its definition, answers at its probe length
    prompts: list[str]
    targets: list[str]
    budget: list[int]  # answer tokens compared for efficacy: target tokens + extra_new_tokens
    probe: int  # answer tokens the pipeline's probe used (answer-based drift)
    para_owner: list[int]
    para_prompts: list[str]
    loc_owner: list[int]
    loc_prompts: list[str]
    loc_span: list[int]  # base-answer tokens compared on each locality prompt

    @classmethod
    def build(cls, tokenizer: Any, facts: list[dict[str, Any]], config: EvalConfig, chat: bool,
              scoring: ScoringSpec) -> "EvalPlan":
        from scoring.lm_scores import encode_pair

        prompts = [f["prompt"] for f in facts]
        targets = [f["target"] for f in facts]
        # Compared span: the base model's answer over as many tokens as the recorded answer (its slot).
        return cls(
            facts=facts, config=config, chat=chat, scoring=scoring, prompts=prompts, targets=targets,
            budget=[len(encode_pair(tokenizer, p, t, chat_template=chat)[1]) + config.extra_new_tokens
                    for p, t in zip(prompts, targets)],
            probe=scoring.probe_max_new_tokens,
            para_owner=[i for i, f in enumerate(facts) for _ in (f.get("paraphrases") or [])],
            para_prompts=[p for f in facts for p in (f.get("paraphrases") or [])],
            loc_owner=[i for i, f in enumerate(facts) for _ in (f.get("locality") or [])],
            loc_prompts=[lp["prompt"] for f in facts for lp in (f.get("locality") or [])],
            loc_span=[config.locality_new_tokens or _answer_span(tokenizer, lp["prompt"], lp.get("answer"), chat)
                      for f in facts for lp in (f.get("locality") or [])])

    @property
    def gen_budget(self) -> list[int]:  # long enough for both efficacy and the probe's answer
        return [max(b, self.probe) for b in self.budget]

    @property
    def loc_budget(self) -> list[int]:
        return [max(span, self.budget[i]) for span, i in zip(self.loc_span, self.loc_owner)]

    def desc(self, label: str) -> str | None:
        return label if self.config.progress else None

    def probe_texts(self, tokenizer: Any, answers: list[list[int]]) -> list[str]:
        from scoring.lm_scores import decode_answer

        return [decode_answer(tokenizer, a[:self.probe]) for a in answers]

    def drift(self, model: Any, tokenizer: Any, answers: list[str], scores: dict[str, Any]) -> np.ndarray:
        """Drift by the dataset's definition: the function the pipeline scored it with."""
        from scoring.drift import drift_by_definition

        return drift_by_definition(self.scoring.drift_definition, answers=answers, targets=self.targets,
                                   scores=scores, model=model, tokenizer=tokenizer,
                                   encoder=self.scoring.encoder)


def score_base(model: Any, tokenizer: Any, plan: EvalPlan) -> dict[str, Any]:
    """The base model's answers, target scores, locality answers and drift (call with the adapter off)."""
    from scoring.lm_scores import greedy_answers, score_targets

    bs, chat = plan.config.batch_size, plan.chat
    log.info("evaluating %d facts with the base model", len(plan.facts))
    ids = greedy_answers(model, tokenizer, plan.prompts, plan.gen_budget, bs, chat_template=chat,
                         desc=plan.desc("base: answers"))
    scores = score_targets(model, tokenizer, plan.prompts, plan.targets, bs, chat_template=chat,
                           desc=plan.desc("base: target scores"))
    loc_ids = greedy_answers(model, tokenizer, plan.loc_prompts, plan.loc_budget, bs, chat_template=chat,
                             desc=plan.desc("base: locality"))
    drift = plan.drift(model, tokenizer, plan.probe_texts(tokenizer, ids), scores)
    return {"ids": ids, "scores": scores, "loc_ids": loc_ids, "drift": drift}


def score_after(model: Any, tokenizer: Any, plan: EvalPlan, base: dict[str, Any]) -> dict[str, Any]:
    """Every per-fact eval column of the model as it is now, against ``score_base``'s numbers."""
    from scoring.lm_scores import decode_answer, greedy_answers, score_targets, token_agreement

    bs, chat, facts, targets = plan.config.batch_size, plan.chat, plan.facts, plan.targets
    log.info("evaluating %d facts with the adapter", len(facts))
    ids = greedy_answers(model, tokenizer, plan.prompts, plan.gen_budget, bs, chat_template=chat,
                         desc=plan.desc("answers"))
    after = score_targets(model, tokenizer, plan.prompts, targets, bs, chat_template=chat,
                          desc=plan.desc("target scores"))
    gt_rows = [i for i, f in enumerate(facts) if f.get("ground_truth")]
    gt = score_targets(model, tokenizer, [plan.prompts[i] for i in gt_rows],
                       [facts[i]["ground_truth"] for i in gt_rows], bs, chat_template=chat,
                       desc=plan.desc("ground-truth scores"))["target_logprob"]
    para_ids = greedy_answers(model, tokenizer, plan.para_prompts, [plan.budget[i] for i in plan.para_owner],
                              bs, chat_template=chat, desc=plan.desc("paraphrases"))
    loc_ids = greedy_answers(model, tokenizer, plan.loc_prompts, plan.loc_budget, bs, chat_template=chat,
                             desc=plan.desc("locality answers"))
    agreement = token_agreement(model, tokenizer, plan.loc_prompts,
                                [a[:n] for a, n in zip(base["loc_ids"], plan.loc_span)], bs,
                                chat_template=chat, desc=plan.desc("locality agreement"))
    drift_after = plan.drift(model, tokenizer, plan.probe_texts(tokenizer, ids), after)

    n = len(facts)
    answer = [decode_answer(tokenizer, a[:b]) for a, b in zip(ids, plan.budget)]
    answer_before = [decode_answer(tokenizer, a[:b]) for a, b in zip(base["ids"], plan.budget)]
    gt_logprob: list[float | None] = [None] * n
    efficacy_prob: list[bool | None] = [None] * n
    for j, i in enumerate(gt_rows):
        gt_logprob[i] = float(gt[j])
        efficacy_prob[i] = bool(after["target_logprob"][i] > gt[j])
    para_hits = [starts_with_target(decode_answer(tokenizer, a), targets[i])
                 for a, i in zip(para_ids, plan.para_owner)]
    # Bleed is a change: the locality prompt now answers with the target and did not before.
    bleed = [starts_with_target(decode_answer(tokenizer, a), targets[i])
             and not starts_with_target(decode_answer(tokenizer, b), targets[i])
             for a, b, i in zip(loc_ids, base["loc_ids"], plan.loc_owner)]
    return {
        "answer": answer,
        "answer_before": answer_before,
        "efficacy": [starts_with_target(a, t) for a, t in zip(answer, targets)],
        "efficacy_before": [starts_with_target(a, t) for a, t in zip(answer_before, targets)],
        "efficacy_prob": efficacy_prob,
        "target_logprob_before": base["scores"]["target_logprob"],
        "target_logprob_after": after["target_logprob"],
        "ground_truth_logprob_after": gt_logprob,
        "target_rank_after": after["target_rank"],
        "paraphrase_count": _counts(plan.para_owner, n),
        "paraphrase": _per_fact(plan.para_owner, para_hits, n),
        "locality_count": _counts(plan.loc_owner, n),
        "locality": _per_fact(plan.loc_owner, list(agreement), n),
        "locality_bleed": _per_fact(plan.loc_owner, bleed, n),
        "drift_before": base["drift"],
        "drift_after": drift_after,
        "drift_expected_before": base["scores"]["drift_expected"],
        "drift_expected_after": after["drift_expected"],
    }


def _answer_span(tokenizer: Any, prompt: str, answer: str | None, chat: bool) -> int:
    """Tokens of a recorded locality answer (as a target after its prompt); a blank one counts as 8."""
    from scoring.lm_scores import encode_pair

    if not (answer or "").strip():
        return BLANK_ANSWER_TOKENS
    return len(encode_pair(tokenizer, prompt, answer, chat_template=chat)[1])


def _counts(owner: list[int], n: int) -> list[int]:
    return np.bincount(np.asarray(owner, dtype=np.int64), minlength=n).tolist()


def _per_fact(owner: list[int], values: list[Any], n: int) -> list[float | None]:
    sums, counts = np.zeros(n), np.zeros(n)
    for i, v in zip(owner, values):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            continue
        sums[i] += float(v)
        counts[i] += 1
    return [float(s / c) if c else None for s, c in zip(sums, counts)]
