"""Knowledge-learning benchmark: does Beacon's curation make LoRA learn more facts at the same compute,
and which pre-training scores predict the facts it fails to learn?

    .venv/bin/python bench/knowledge.py --data ../shared/data/counterfact-val.json --n 256 \\
        --budgets 40,80,120,160 --seeds 3 --model bundled:smollm2-135m-instruct --out bench/results/knowledge

1. Sample ``--n`` records (``--sample-seed``) and curate them with ``beacon curate``'s defaults: every
   signal (drift_sentence / drift_lm / drift_expected, target log-prob and rank -- drift_rank is
   monotone in target_rank, so it shares its AUC --, interference, conflicts, shared targets) and the default policy (keep / reason / weight) come from the pipeline.
2. Score the base model once (``trainer.evaluate.score_base``): what every trained state is compared to.
3. For every arm x seed, one LoRA run of ``max(budgets)`` optimizer steps; at each budget the model is
   evaluated as it is at that step (``trainer.evaluate.score_after``, the definitions ``beacon eval``
   reports). Evaluating neither changes a weight nor draws a random number, so every budget is a
   checkpoint of the same run. Every arm shares the base model, LoRA settings, optimizer, batch size,
   steps, seeds and formatting; only the thing an arm names differs:

   - ``plain``: every requested fact, weight 1.
   - ``weighted``: every fact, loss weight from Beacon's drift weighting (``weighting: drift``) on
     the dataset's ``drift`` column (its ``drift_definition``, recorded in the manifest).
   - ``curated``: Beacon's default policy, as ``beacon curate`` wrote it (keep + weight). A filtering
     arm is also evaluated at equal *epochs* (budget x kept / requested steps) as ``curated@epochs``.
   - ``repeat``: every fact, weight 1; the hardest quarter by ``drift_expected`` is twice in the
     sampling pool (per-fact repetition by predicted difficulty, same total steps).
   - ``repeat_unique``: every fact, weight 1; facts whose target no other fact shares
     (``shared_target == 0``, the strongest predictor of "learned late") are twice in the pool.
   - ``semantic``: every fact, weight 1, plus the semantic auxiliary loss (``semantic_weight`` 0.1:
     1 - cos(sum_v p(v) E[v], E[target token]) at each target position, in the LM's embedding space).
   - ``plain+stop``: plain, ending once every fact is learned and stable (``stop_when_learned``).
   - ``adaptive``: every fact, weight 1, the closed-loop schedule (``schedule: adaptive``: batches
     filled with facts not learned and stable yet) and ``stop_when_learned``.
   - ``adaptive+locality``: ``adaptive`` plus the locality KL on replay prompts (``locality_weight`` 1).
   - ``plain+locality``: plain's schedule and length plus the same locality KL: tells the term's
     effects from the adaptive schedule's.
   - ``default``: exactly what ``beacon curate`` + ``beacon train`` do with no options (the curated
     rows, TrainConfig's defaults for the keys above); copied from the arm it equals, if any.

   Efficacy is always also reported over *all* requested facts (``efficacy_all``): a fact filtered
   out or rejected counts as not learned.
4. Signals: for the ``plain`` arm, per seed, the AUC of each signal for "not learned by budget b"
   (oriented so that higher = predicted harder) and its Spearman correlation with the first budget at
   which the fact is learned.

5. Closed loop: from each run's trace, the steps until 90%, 95% and 100% of the requested facts are
   learned (``steps_to``, censored at the budget), and every arm evaluated at the step where plain
   reaches 95% (``at_plain95``, from LoRA snapshots taken every ``SNAPSHOT_EVERY`` steps; an arm that
   stopped earlier is evaluated as it stopped).

Writes ``OUT/results.json`` (per arm x budget x seed, and mean/sd), ``OUT/report.md`` (the tables for
BENCHMARKS.md) and PNG plots (learning curves; plain accuracy by signal quartile). Runs are cached in
``OUT/runs/``: rerunning with the same settings skips the runs already done. What the runs on
CounterFact found, and the exact commands: BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pickle
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from schemas.scoring_spec import DEFAULT_LM  # noqa: E402

log = logging.getLogger("bench.knowledge")

ARMS = ("plain", "weighted", "curated", "repeat", "repeat_unique", "semantic",
        "plain+stop", "adaptive", "adaptive+locality", "plain+locality", "default")
SEMANTIC_WEIGHT = 0.1  # the semantic arm's auxiliary-loss weight (TrainConfig.semantic_weight)
LOCALITY_WEIGHT = 1.0  # the locality arms' KL weight (TrainConfig.locality_weight)
# What each closed-loop arm sets on top of the shared settings (TrainConfig keys). ``default`` is
# TrainConfig's own defaults for these keys: exactly what ``beacon train`` does with no options.
ARM_CONFIG = {
    "plain+stop": {"stop_when_learned": True},
    "adaptive": {"schedule": "adaptive", "stop_when_learned": True},
    "adaptive+locality": {"schedule": "adaptive", "stop_when_learned": True, "locality_weight": LOCALITY_WEIGHT},
    "plain+locality": {"locality_weight": LOCALITY_WEIGHT},
}
LOCALITY_ARMS = ("adaptive+locality", "plain+locality")  # they take @W and @replay=SOURCE
ADAPTIVE_ARMS = ("adaptive", "adaptive+locality")  # they take the schedule's knobs, @k=N:tau=X:r=X
FRACTIONS = ("0.9", "0.95", "1.0")  # steps_to: steps until this share of the requested facts is learned
SNAPSHOT_EVERY = 10  # LoRA weights kept every this many steps, to evaluate at plain's 95% step later
# (--snapshot-every sets it for the run, children included: they parse the same arguments)
# Pre-training signals and their "harder" direction (+1: higher value = predicted harder to learn).
SIGNALS = {
    "drift_sentence": 1, "drift_lm": 1, "drift_expected": 1, "target_logprob": -1, "target_rank": 1,
    "interference": 1, "neighbors": 1, "conflicts": 1, "shared_target": 1,
}
# Per-fact metrics kept at every budget (means over all requested facts unless named otherwise).
FACT_METRICS = ("efficacy", "efficacy_prob", "paraphrase", "locality", "locality_bleed", "pushed_away")
COMPARED = ("efficacy_all", "paraphrase", "locality", "locality_bleed")
SUMMARY_METRICS = ("efficacy_all", "efficacy_trained", "efficacy_prob", "paraphrase", "locality",
                   "locality_bleed", "pushed_away")


# --- 1. the facts and their scores -----------------------------------------------------------------

def sample_lines(path: Path, n: int, seed: int, fmt: str = "auto") -> list[bytes]:
    """``n`` records of any file ``beacon curate`` reads (seeded sample), each as one JSON line.

    Read with the pipeline's own readers; JSON Lines are kept as raw lines, unparsed, so a broken
    record reaches ``beacon curate`` and is rejected there with its error, and counts as requested
    and not learned.
    """
    from pipeline.inputs import check_inputs
    from pipeline.read_facts import iter_payloads, payload_line

    lines = [payload_line(p) for p in iter_payloads(check_inputs([str(path)], fmt)[0])]
    if len(lines) < n:
        raise ValueError(f"--n {n} but {path} has only {len(lines)} records")
    random.Random(seed).shuffle(lines)
    return lines[:n]


def prepare(args: argparse.Namespace, out: Path) -> Path:
    """Sample ``n`` records and curate them with Beacon's defaults; returns the dataset folder."""
    dataset = out / "dataset"
    from schemas import Manifest

    if Manifest.exists_in(dataset):
        log.info("reusing the curated sample in %s", dataset)
        return dataset
    from pipeline.config import CurateConfig
    from pipeline.run import curate

    sample = out / "facts.jsonl"
    # The sample is JSON Lines whatever the input's container; a forced layout still applies.
    config = CurateConfig(model=args.model, format="jsonl" if args.format in ("json", "csv", "parquet")
                          else args.format)
    lines = (override_lines(args, out, config) if args.override_pool else
             sample_lines(Path(args.data), args.n, args.sample_seed, args.format))
    sample.write_bytes(b"".join(line + b"\n" for line in lines))
    log.info("curating %d sampled facts with %s", args.n, args.model)
    manifest = curate([str(sample)], str(dataset), config)
    log.info("curated: %s", manifest.counts)
    return dataset


def override_lines(args: argparse.Namespace, out: Path, config) -> list[bytes]:
    """The override regime's sample: of ``--override-pool`` sampled records, curated once with
    Beacon's defaults, the first ``n`` (in sample order) whose base-model answer already starts with
    the record's ``ground_truth``, so the edit must replace a known answer rather than fill a gap."""
    from pipeline.run import curate
    from schemas import Manifest
    from trainer.data import read_scored
    from trainer.metrics import starts_with_target

    pool = sample_lines(Path(args.data), args.override_pool, args.sample_seed, args.format)
    (out / "pool.jsonl").write_bytes(b"".join(line + b"\n" for line in pool))
    asked = {"data": str(args.data), "pool": len(pool), "sample_seed": args.sample_seed, "model": args.model}
    probed = out / "override_pool.json"
    if Manifest.exists_in(out / "pool") and probed.exists() and json.loads(probed.read_text()).get("asked") == asked:
        log.info("override regime: reusing the probed pool in %s", out / "pool")
    else:
        shutil.rmtree(out / "pool", ignore_errors=True)
        log.info("override regime: probing a pool of %d sampled records", len(pool))
        curate([str(out / "pool.jsonl")], str(out / "pool"), config)
    rows = read_scored(out / "pool", columns=["position", "prediction", "ground_truth"]).to_pylist()
    known = sorted(r["position"] for r in rows
                   if r["ground_truth"] and starts_with_target(r["prediction"] or "", r["ground_truth"]))
    log.info("override regime: %d of %d pool records are answered with their ground truth", len(known), len(pool))
    probed.write_text(json.dumps({"asked": asked, "scored": len(rows), "override": len(known)}))
    if len(known) < args.n:
        raise SystemExit(f"--override-pool {args.override_pool} holds only {len(known)} records the base model "
                         f"answers with their ground truth; --n is {args.n}: give a larger pool or a smaller --n")
    return [pool[i] for i in known[:args.n]]


def arm_rows(arm: str, facts: list[dict]) -> list[dict]:
    """The training rows (fact_id, prompt, target, weight) of an arm, repeated where the arm repeats."""
    from pipeline.config import CurateConfig
    from pipeline.policy import raw_weight
    from pipeline.quantiles import quantile

    def row(f: dict, weight: float) -> dict:
        return {"fact_id": f["fact_id"], "prompt": f["prompt"], "target": f["target"], "weight": weight}

    if arm in ("plain", "semantic", "plain+stop", *ADAPTIVE_ARMS, *LOCALITY_ARMS) or "@" in arm:
        return [row(f, 1.0) for f in facts]  # they differ from plain in the loss or the schedule, not the rows
    if arm in ("curated", "default"):  # default: what `beacon curate` wrote, as `beacon train` reads it
        return [row(f, f["weight"]) for f in facts if f["keep"]]
    if arm == "weighted":  # the pipeline's weighting function, every fact kept, normalised to mean 1
        config = CurateConfig(weighting="drift")
        drift = sorted(f["drift"] for f in facts)
        raw = [raw_weight(f["drift"], config, quantile(drift, 0.5)) for f in facts]
        mean = sum(raw) / len(raw)
        return [row(f, w / mean) for f, w in zip(facts, raw)]
    if arm == "repeat":
        cut = np.quantile([f["drift_expected"] for f in facts], 0.75)
        return [row(f, 1.0) for f in facts] + [row(f, 1.0) for f in facts if f["drift_expected"] > cut]
    if arm == "repeat_unique":
        return [row(f, 1.0) for f in facts] + [row(f, 1.0) for f in facts if f["shared_target"] == 0]
    raise ValueError(f"unknown arm {arm!r}; known: {', '.join(ARMS)}")


def signal_values(facts: list[dict]) -> dict[str, np.ndarray]:
    """Every pre-training signal per fact, oriented so that higher = predicted harder."""
    raw = {name: [len(f["conflicts_with"]) if name == "conflicts" else f[name] for f in facts]
           for name in SIGNALS}
    return {name: SIGNALS[name] * np.asarray(v, dtype=float) for name, v in raw.items()}


PLAIN_CONFIG = {"schedule": "plain", "stop_when_learned": False, "locality_weight": 0.0, "semantic_weight": 0.0,
                "replay": None}


def effective_config(arm: str) -> dict[str, Any]:
    """Every key an arm may set, with plain's value where it sets none (arms are compared by it)."""
    return {**PLAIN_CONFIG, **arm_config(arm)}


def arm_config(arm: str) -> dict[str, Any]:
    """The TrainConfig keys an arm sets beyond the shared settings."""
    from trainer.config import TrainConfig

    if arm == "default":
        return {k: TrainConfig.model_fields[k].default for k in PLAIN_CONFIG}
    if arm == "semantic":
        return {"semantic_weight": SEMANTIC_WEIGHT}
    base, overrides = parse_arm(arm)
    return {**ARM_CONFIG.get(base, {}), **overrides}


# A sweep's knobs after an adaptive arm's ``@`` (``adaptive@k=3:tau=0.8``), and the TrainConfig key each sets.
SCHEDULE_KNOBS = {"k": "stable_visits", "tau": "stable_prob", "r": "rehearse_rate"}
# A locality arm's replay prompts (``adaptive+locality@0.3:replay=generic``): the trainer's default (the
# taught templates filled with other facts' subjects) or only the generic prefixes shipped with Beacon
# (trainer.replay.GENERIC_FILE) given as a user's --replay file: the arm differs in the prompts' source.
REPLAY_SOURCES = ("subjects", "generic")


def parse_arm(arm: str) -> tuple[str, dict[str, Any]]:
    """(the arm's name, the TrainConfig keys its ``@`` suffix sets). ``ARM@OPT:OPT…`` where OPT is,
    for an adaptive arm (``ADAPTIVE_ARMS``), ``k=N``, ``tau=X`` or ``r=X`` (stable_visits, stable_prob,
    rehearse_rate), and for a locality arm (``LOCALITY_ARMS``) a bare number W (locality_weight) or
    ``replay=subjects|generic`` (where the replay prompts come from, ``REPLAY_SOURCES``).

    Raises:
        ValueError: an unknown arm, option or value (the message names it).
    """
    from trainer.config import TrainConfig

    base, at, suffix = arm.partition("@")
    if base not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; known: {', '.join(ARMS)}")
    if not at:
        return base, {}
    if base not in (*ADAPTIVE_ARMS, *LOCALITY_ARMS) or not suffix:
        raise ValueError(f"arm {arm!r}: only {', '.join(sorted({*ADAPTIVE_ARMS, *LOCALITY_ARMS}))} take @options")
    overrides: dict[str, Any] = {}
    for option in suffix.split(":"):
        name, eq, value = option.partition("=")
        if not eq and base in LOCALITY_ARMS:
            name, value = "locality_weight", option
        elif name == "replay" and base in LOCALITY_ARMS:
            if value not in REPLAY_SOURCES:
                raise ValueError(f"arm {arm!r}: replay={value!r}; known: {', '.join(REPLAY_SOURCES)}")
            from trainer.replay import GENERIC_FILE

            value = str(GENERIC_FILE) if value == "generic" else None  # None: the trainer's own default
        elif name in SCHEDULE_KNOBS and base in ADAPTIVE_ARMS:
            name = SCHEDULE_KNOBS[name]
        else:
            known = [*(["k=N, tau=X, r=X"] if base in ADAPTIVE_ARMS else []),
                     *(["replay=SOURCE or a locality weight"] if base in LOCALITY_ARMS else [])]
            raise ValueError(f"arm {arm!r}: unknown option {option!r} ({', '.join(known)})")
        if name in overrides:  # a later one would silently win
            raise ValueError(f"arm {arm!r}: {option!r} sets {name} twice")
        overrides[name] = value
    try:
        checked = TrainConfig.model_validate({**ARM_CONFIG[base], **overrides})
    except ValueError as e:
        raise ValueError(f"arm {arm!r}: {e}") from None
    return base, {k: getattr(checked, k) for k in overrides}


# --- 2. one arm x seed -------------------------------------------------------------------------------

def load_plan(dataset: Path, model_spec: str, eval_batch_size: int) -> tuple[Any, Any, Any, list[dict]]:
    from scoring.models import load_lm
    from trainer.config import EvalConfig
    from trainer.data import read_dataset_info, read_scored
    from trainer.evaluate import EvalPlan

    info = read_dataset_info(dataset)
    facts = read_scored(dataset).to_pylist()
    model, tokenizer, _ = load_lm(model_spec)
    plan = EvalPlan.build(tokenizer, facts, EvalConfig(batch_size=eval_batch_size, progress=False),
                          info.scoring.chat_template, info.scoring)
    return model, tokenizer, plan, facts


def base_scores(args: argparse.Namespace, out: Path, dataset: Path) -> Path:
    """The base model's answers and scores on every fact, computed once for all runs."""
    path = out / "base.pkl"
    if not path.is_file():
        from trainer.evaluate import score_base

        model, tokenizer, plan, _ = load_plan(dataset, args.model, args.eval_batch_size)
        started = time.perf_counter()
        base = score_base(model, tokenizer, plan)
        log.info("scored the base model in %.0f s", time.perf_counter() - started)
        path.write_bytes(pickle.dumps(base))
    return path


def run_one(args: argparse.Namespace, arm: str, seed: int, dataset: Path, out: Path, path: Path) -> None:
    """Train one arm with one seed and evaluate at every eval step; writes ``path`` (JSON).

    The per-fact trace is kept (``steps_to`` is read from it) and the LoRA weights every
    ``SNAPSHOT_EVERY`` steps (``evaluate_at`` scores them at plain's 95% step once plain is known).
    An arm that stops early (``stop_when_learned``) is evaluated as it stopped at every later budget.
    """
    import torch
    from transformers import TrainerCallback

    from trainer.config import TrainConfig
    from trainer.evaluate import score_after
    from trainer.setup import build_trainer
    from trainer.trace import FactTrace

    torch.set_num_threads(args.threads)
    model, tokenizer, plan, facts = load_plan(dataset, args.model, args.eval_batch_size)
    base = pickle.loads((out / "base.pkl").read_bytes())
    rows = arm_rows(arm, facts)
    eval_steps = eval_steps_of(args.budgets, len(rows), arm, args.n)
    config = TrainConfig(model=args.model, max_steps=max(eval_steps), epochs=None, seed=seed,
                         batch_size=args.batch_size, learning_rate=args.lr, lora_rank=args.lora_rank,
                         lora_alpha=2.0 * args.lora_rank, progress=False, logging_steps=10**6,
                         chat_template=plan.chat, **arm_config(arm))
    record: dict[str, Any] = {"arm": arm, "seed": seed, "train_rows": len(rows), "config": arm_config(arm),
                              "trained_ids": sorted({r["fact_id"] for r in rows}), "steps": {},
                              "eval_seconds": 0.0}
    snapshots = out / "snapshots" / f"{arm}-{seed}"
    snapshots.mkdir(parents=True, exist_ok=True)

    def evaluate(model: Any, step: int) -> None:
        started = time.perf_counter()
        record["steps"][str(step)] = eval_record(score_after(model, tokenizer, plan, base), plan)
        record["eval_seconds"] += time.perf_counter() - started
        log.info("%s seed %d step %d: efficacy %.3f", arm, seed, step,
                 float(np.mean(record["steps"][str(step)]["efficacy"])))

    class EvaluateAtBudgets(TrainerCallback):
        def on_step_end(self, targs: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step % SNAPSHOT_EVERY == 0 or state.global_step in (*eval_steps, config.max_steps):
                save_snapshot(kwargs["model"], snapshots / f"{state.global_step}.pt")
            if state.global_step in eval_steps:
                evaluate(kwargs["model"], state.global_step)

    # The product's own setup (seeded LoRA init, examples, weighted Trainer) on the loaded base model.
    trace = FactTrace()
    setup = build_trainer(config, rows, out / "tmp" / f"{arm}-{seed}", base=(model, tokenizer),
                          callbacks=[EvaluateAtBudgets()], trace=trace, facts=facts, save_strategy="no")
    started = time.perf_counter()
    setup.trainer.train()
    record["seconds"] = time.perf_counter() - started
    stopped = setup.trainer.state.global_step
    record["stopped_at"] = stopped if stopped < config.max_steps else None
    if record["stopped_at"] is not None:  # evaluated as it stopped, at every budget it did not reach
        save_snapshot(setup.model, snapshots / f"{stopped}.pt")
        later = [s for s in eval_steps if s > stopped]
        if later:
            evaluate(setup.model, later[0])
            for s in later[1:]:
                record["steps"][str(s)] = record["steps"][str(later[0])]
    record["train_seconds"] = record["seconds"] - record["eval_seconds"]
    record["replay"] = ({"prompts": len(setup.replay), "source": setup.replay.source, "file": config.replay}
                        if setup.replay is not None else None)
    record["trace_learned"] = trace_learned_fraction(trace.rows, args.n, config.max_steps)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def eval_record(cols: dict[str, Any], plan: Any) -> dict[str, list]:
    eps = plan.config.pushed_away_epsilon
    pushed = np.asarray(cols["drift_after"]) > np.asarray(cols["drift_before"]) + eps
    return {**{m: [None if v is None else float(v) for v in cols[m]] for m in FACT_METRICS if m != "pushed_away"},
            "pushed_away": pushed.astype(float).tolist()}


def save_snapshot(model: Any, path: Path) -> None:
    import torch

    torch.save({k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}, path)


def load_snapshot(model: Any, path: Path) -> None:
    """Put a ``save_snapshot`` file's LoRA weights into ``model`` (a fresh ``with_lora`` one), for evaluation."""
    import torch

    result = model.load_state_dict(torch.load(path), strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{path} holds weights this model has not: {result.unexpected_keys[:3]}")
    model.eval()


def snapshot_at(snapshots: Path, step: int, stopped_at: int | None) -> tuple[Path, int]:
    """The LoRA weights a run had at ``step``: that step's snapshot, or its last if it stopped before."""
    taken = sorted(int(p.stem) for p in snapshots.glob("*.pt"))
    if step in taken:
        return snapshots / f"{step}.pt", step
    if stopped_at is not None and taken and taken[-1] == stopped_at and step > stopped_at:
        return snapshots / f"{stopped_at}.pt", stopped_at
    raise FileNotFoundError(f"{snapshots} has no snapshot at step {step} (taken every {SNAPSHOT_EVERY})")


def efficacy_curve(args: argparse.Namespace, arm: str, seed: int, dataset: Path, out: Path, path: Path) -> None:
    """Efficacy over all requested facts at every LoRA snapshot of a run (greedy answers only, as
    ``beacon eval`` decides ``efficacy``): the learning curve at ``SNAPSHOT_EVERY``-step resolution.

    The trace says "learned" at each fact's last visit, which lags the model by up to an epoch and
    lags less for facts visited more often (the adaptive schedule's): steps read from it would favour
    adaptive. This curve measures every arm the same way, on the model as it is at the step."""
    import torch

    from scoring.lm_scores import decode_answer, greedy_answers
    from trainer.config import TrainConfig
    from trainer.metrics import starts_with_target
    from trainer.model_io import with_lora

    torch.set_num_threads(args.threads)
    model, tokenizer, plan, _ = load_plan(dataset, args.model, args.eval_batch_size)
    run = json.loads((out / "runs" / f"{arm}-{seed}.json").read_text())
    trained = set(run["trained_ids"])
    model = with_lora(model, TrainConfig(lora_rank=args.lora_rank, lora_alpha=2.0 * args.lora_rank))
    snapshots = out / "snapshots" / f"{arm}-{seed}"
    curve, per_fact = {}, {}  # step -> share of the requested facts; step -> each fact's efficacy
    for step in sorted(int(p.stem) for p in snapshots.glob("*.pt")):
        load_snapshot(model, snapshots / f"{step}.pt")
        ids = greedy_answers(model, tokenizer, plan.prompts, plan.budget, plan.config.batch_size,
                             chat_template=plan.chat)
        hits = [starts_with_target(decode_answer(tokenizer, a[:b]), t) and f["fact_id"] in trained
                for a, b, t, f in zip(ids, plan.budget, plan.targets, plan.facts)]
        curve[str(step)] = sum(hits) / args.n
        per_fact[str(step)] = [int(h) for h in hits]
    path.write_text(json.dumps({"arm": arm, "seed": seed, "stopped_at": run.get("stopped_at"), "curve": curve,
                                "efficacy": per_fact}))


def curve_steps_to(curve: dict[str, float], fraction: float, budget: int) -> tuple[int, bool]:
    """(first step of the common grid whose efficacy reaches ``fraction``, censored at the budget).

    Every arm is read on the same grid of ``SNAPSHOT_EVERY`` steps: a run that stopped at step 73 is
    read at 80 (it no longer changes), so stopping earns no finer resolution than plain has."""
    for step in sorted(curve, key=int):
        if curve[step] >= fraction - 1e-12:
            return min(budget, SNAPSHOT_EVERY * math.ceil(int(step) / SNAPSHOT_EVERY)), False
    return budget, True


def trace_learned_fraction(rows: list[dict], requested: int, max_steps: int) -> list[float]:
    """Per step 1..max_steps: the share of the requested facts whose latest visit so far was learned.

    A fact trained under several examples (never here) would count once; facts never visited count
    as not learned. After an early stop the last value holds (the model no longer changes).
    """
    state: dict[str, bool] = {}
    by_step: dict[int, list[dict]] = {}
    for r in rows:
        by_step.setdefault(r["step"], []).append(r)
    out = []
    for step in range(1, max_steps + 1):
        for r in by_step.get(step, []):
            state[r["fact_id"]] = bool(r["learned"])
        out.append(sum(state.values()) / requested)
    return out


def steps_to(fraction_by_step: list[float], fraction: float) -> tuple[int, bool]:
    """(first step at which the learned share reaches ``fraction``, censored): censored at the budget."""
    for step, value in enumerate(fraction_by_step, 1):
        if value >= fraction - 1e-12:
            return step, False
    return len(fraction_by_step), True


def evaluate_at(args: argparse.Namespace, arm: str, seed: int, step: int, dataset: Path, out: Path,
                path: Path) -> None:
    """Score an arm's LoRA weights as they were at ``step`` (plain's 95% step); writes ``path``."""
    import torch

    from trainer.config import TrainConfig
    from trainer.evaluate import score_after
    from trainer.model_io import with_lora

    torch.set_num_threads(args.threads)
    model, tokenizer, plan, _ = load_plan(dataset, args.model, args.eval_batch_size)
    base = pickle.loads((out / "base.pkl").read_bytes())
    run = json.loads((out / "runs" / f"{arm}-{seed}.json").read_text())
    snapshot, taken = snapshot_at(out / "snapshots" / f"{arm}-{seed}", step, run.get("stopped_at"))
    model = with_lora(model, TrainConfig(lora_rank=args.lora_rank, lora_alpha=2.0 * args.lora_rank))
    load_snapshot(model, snapshot)
    record = {"arm": arm, "seed": seed, "step": step, "snapshot_step": taken,
              **eval_record(score_after(model, tokenizer, plan, base), plan)}
    path.write_text(json.dumps(record))


def eval_steps_of(budgets: list[int], rows: int, arm: str, requested: int) -> list[int]:
    """The budgets, and for an arm that trains fewer facts, the same budgets at equal epochs."""
    steps = set(budgets)
    if arm == "curated" and rows < requested:
        steps |= {equal_epoch_step(b, rows, requested) for b in budgets}
    return sorted(steps)


def equal_epoch_step(budget: int, rows: int, requested: int) -> int:
    """The step at which ``rows`` training rows have had as many epochs as ``requested`` at ``budget``."""
    return max(1, round(budget * rows / requested))


# --- 3. aggregate ---------------------------------------------------------------------------------

def auc(score: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of ``score`` for ``positive`` (Mann-Whitney U, ties count half)."""
    from scipy.stats import rankdata

    pos, n_pos = positive.astype(bool), int(positive.sum())
    n_neg = len(positive) - n_pos
    if not n_pos or not n_neg:
        return None
    ranks = rankdata(score)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def mean_sd(values: list[float | None]) -> dict[str, float | None]:
    v = [x for x in values if x is not None and not np.isnan(x)]
    if not v:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}


def per_run_metrics(run: dict, step: int, fact_ids: list[str], requested: int) -> dict[str, float | None]:
    s = run["steps"][str(step)]
    eff = np.asarray(s["efficacy"], dtype=float)
    trained_ids = set(run["trained_ids"])
    trained = np.asarray([f in trained_ids for f in fact_ids])

    def mean_of(name: str) -> float | None:
        v = [x for x in s[name] if x is not None]
        return float(np.mean(v)) if v else None

    return {
        # Over every requested fact: a fact filtered out or rejected counts as not learned.
        "efficacy_all": float(eff[trained].sum() / requested),
        "efficacy_trained": float(eff[trained].mean()) if trained.any() else None,
        **{m: mean_of(m) for m in ("efficacy_prob", "paraphrase", "locality", "locality_bleed", "pushed_away")},
    }


def aggregate(runs: list[dict], facts: list[dict], args: argparse.Namespace) -> dict[str, Any]:
    fact_ids = [f["fact_id"] for f in facts]
    per_seed: dict[str, dict[str, dict[str, list]]] = {}
    for run in runs:
        arm = run["arm"]
        names = [(arm, b, b) for b in args.budgets]
        if arm == "curated" and run["train_rows"] < args.n:
            names += [("curated@epochs", b, equal_epoch_step(b, run["train_rows"], args.n)) for b in args.budgets]
        for name, budget, step in names:
            metrics = per_run_metrics(run, step, fact_ids, args.n)
            for m, v in metrics.items():
                per_seed.setdefault(name, {}).setdefault(str(budget), {}).setdefault(m, []).append(v)
            per_seed[name][str(budget)].setdefault("step", []).append(step)
    summary = {arm: {b: {m: mean_sd(v) for m, v in ms.items() if m != "step"}
                     for b, ms in by_b.items()} for arm, by_b in per_seed.items()}
    # Paired by seed (same LoRA init, same shuffles): arm - plain, per budget.
    vs_plain = {arm: {b: {m: mean_sd([None if x is None or y is None else x - y
                                      for x, y in zip(ms[m], per_seed["plain"][b][m])])
                          for m in COMPARED} for b, ms in by_b.items()}
                for arm, by_b in per_seed.items() if arm != "plain"}

    signals = signal_values(facts)
    plain = [r for r in runs if r["arm"] == "plain"]
    auc_out: dict[str, dict[str, Any]] = {}
    spearman_out: dict[str, Any] = {}
    from scipy.stats import spearmanr

    first = [first_learned(r, args.budgets) for r in plain]
    for name, values in signals.items():
        auc_out[name] = {}
        for b in args.budgets:
            aucs = [auc(values, 1.0 - np.asarray(r["steps"][str(b)]["efficacy"])) for r in plain]
            auc_out[name][str(b)] = mean_sd(aucs)
        rhos = []
        for f in first:
            rho = spearmanr(values, f).statistic if np.ptp(values) > 0 and np.ptp(f) > 0 else None
            rhos.append(None if rho is None or np.isnan(rho) else float(rho))
        spearman_out[name] = mean_sd(rhos)
    return {"per_seed": per_seed, "summary": summary, "vs_plain": vs_plain, "auc": auc_out,
            "spearman_first_learned": spearman_out}


def plain95_step(runs: list[dict], budget: int) -> tuple[int, bool]:
    """The step at which plain's efficacy curve reaches 95% of the requested facts (mean over seeds,
    rounded up to a snapshot), and whether any seed never got there (then: the budget)."""
    found = [curve_steps_to(r["curve"], 0.95, budget) for r in runs if r["arm"] == "plain"]
    step = float(np.mean([s for s, _ in found]))
    return min(budget, SNAPSHOT_EVERY * math.ceil(step / SNAPSHOT_EVERY)), any(c for _, c in found)


# The trade-off an arm must not lose beyond seed noise to dominate plain: +1 = higher is better.
DOMINANCE = {"steps_to_0.95": -1, "efficacy_all": 1, "paraphrase": 1, "locality": 1, "locality_bleed": -1}


def dominance(runs: list[dict], at: list[dict], facts: list[dict],
              args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Paired by seed, arm - plain: steps to 95% (efficacy curve) and every metric at plain's 95% step.

    An arm *dominates* plain when no difference is worse beyond seed noise (|mean| > 2 sd / sqrt(seeds),
    the wrong way) and at least one is better beyond it.
    """
    fact_ids = [f["fact_id"] for f in facts]
    budget = max(args.budgets)

    def per_seed(arm: str) -> dict[int, dict[str, float | None]]:
        out = {}
        for run in (r for r in runs if r["arm"] == arm):
            record = next(a for a in at if a["arm"] == arm and a["seed"] == run["seed"])
            metrics = per_run_metrics({"steps": {"at": record}, "trained_ids": run["trained_ids"]}, "at",
                                      fact_ids, args.n)
            out[run["seed"]] = {"steps_to_0.95": float(curve_steps_to(run["curve"], 0.95, budget)[0]),
                                **{m: metrics[m] for m in DOMINANCE if m in metrics}}
        return out

    plain = per_seed("plain")
    diffs: dict[str, Any] = {}
    verdict: dict[str, dict[str, Any]] = {}
    for arm in args.arms:
        if arm == "plain":
            continue
        mine = per_seed(arm)
        seeds = sorted(set(mine) & set(plain))
        diffs[arm] = {m: mean_sd([None if mine[s][m] is None or plain[s][m] is None else mine[s][m] - plain[s][m]
                                  for s in seeds]) for m in DOMINANCE}
        better, worse = [], []
        for m, sign in DOMINANCE.items():
            d = diffs[arm][m]
            if d["mean"] is None or d["n"] < 2:
                continue
            noise = 2 * d["sd"] / math.sqrt(d["n"])
            if sign * d["mean"] > noise:
                better.append(m)
            elif sign * d["mean"] < -noise:
                worse.append(m)
        verdict[arm] = {"better": better, "worse": worse, "dominates": bool(better) and not worse}
    return diffs, verdict


def steps_taken(run: dict) -> float:
    """Optimizer steps a run took: where it stopped, else its whole trace."""
    return float(run.get("stopped_at") or len(run["trace_learned"]))


def closed_loop(runs: list[dict], at: list[dict], facts: list[dict], args: argparse.Namespace) -> dict[str, Any]:
    """``steps_to[arm][fraction]`` (mean, sd, censored runs) and ``at_plain95[arm][metric]`` (mean, sd)."""
    fact_ids = [f["fact_id"] for f in facts]
    budget = max(args.budgets)
    out: dict[str, Any] = {"steps_to": {}, "steps_to_trace": {}, "at_plain95": {}, "trace_vs_eval": {}}
    for arm in args.arms:
        arm_runs = [r for r in runs if r["arm"] == arm]
        out["steps_to"][arm], out["steps_to_trace"][arm] = {}, {}
        for fraction in FRACTIONS:
            # Headline: the efficacy curve (beacon eval's efficacy at every snapshot).
            found = [curve_steps_to(r["curve"], float(fraction), budget) for r in arm_runs]
            out["steps_to"][arm][fraction] = {**mean_sd([float(s) for s, _ in found]),
                                              "censored": sum(c for _, c in found)}
            # The trace's own reading (lags the model; less for facts visited more often).
            found = [steps_to(r["trace_learned"], float(fraction)) for r in arm_runs]
            out["steps_to_trace"][arm][fraction] = {**mean_sd([float(s) for s, _ in found]),
                                                    "censored": sum(c for _, c in found)}
        # The trace's learned share against `beacon eval`'s efficacy at every budget (the confirmation).
        out["trace_vs_eval"][arm] = {
            str(b): {"trace": mean_sd([r["trace_learned"][b - 1] for r in arm_runs]),
                     "eval": mean_sd([per_run_metrics(r, b, fact_ids, args.n)["efficacy_all"] for r in arm_runs])}
            for b in args.budgets}
        records = [a for a in at if a["arm"] == arm]
        if records:
            metrics = [per_run_metrics({"steps": {"at": a}, "trained_ids": next(
                r["trained_ids"] for r in arm_runs if r["seed"] == a["seed"])}, "at", fact_ids, args.n)
                for a in records]
            out["at_plain95"][arm] = {m: mean_sd([x[m] for x in metrics]) for m in metrics[0]}
            out["at_plain95"][arm]["evaluated_at_step"] = mean_sd([float(a["snapshot_step"]) for a in records])
    out["vs_plain"], out["dominates_plain"] = dominance(runs, at, facts, args)
    # Override facts: the base model already answers the record's ground_truth (the edit must replace
    # a known answer, not fill a gap). Too few in a CounterFact sample for a regime of their own.
    from trainer.metrics import starts_with_target

    override = [i for i, f in enumerate(facts)
                if f.get("ground_truth") and starts_with_target(f["prediction"], f["ground_truth"])]
    out["override"] = {"facts": len(override), "efficacy_at_plain95": {
        arm: mean_sd([float(np.mean([a["efficacy"][i] for i in override])) if override else None
                      for a in at if a["arm"] == arm]) for arm in args.arms}}
    # Compute: optimizer steps actually taken and seconds of training (a stopped run took fewer).
    out["compute"] = {arm: {"steps": mean_sd([steps_taken(r) for r in runs if r["arm"] == arm]),
                            "train_seconds": mean_sd([r["train_seconds"] for r in runs if r["arm"] == arm])}
                      for arm in args.arms}
    # Compute to 95%, paired by seed, as a multiple of plain's: train seconds per step taken x steps to
    # 95%. Steps alone hide what a step costs (a locality step is ~1.8x a plain one). Not in the verdict:
    # the seconds of two runs sharing the cores are noisier than the steps.
    def seconds_to_95(run: dict) -> float:
        return run["train_seconds"] / steps_taken(run) * curve_steps_to(run["curve"], 0.95, budget)[0]

    plain_s = {r["seed"]: seconds_to_95(r) for r in runs if r["arm"] == "plain"}
    out["compute_to_0.95"] = {arm: mean_sd([seconds_to_95(r) / plain_s[r["seed"]] for r in runs
                                            if r["arm"] == arm and r["seed"] in plain_s])
                              for arm in args.arms if arm != "plain"}
    return out


def first_learned(run: dict, budgets: list[int]) -> np.ndarray:
    """Per fact, the first budget at which it is answered with its target (2 x max budget if never)."""
    never = 2 * max(budgets)
    out = np.full(len(run["steps"][str(budgets[0])]["efficacy"]), float(never))
    for b in sorted(budgets, reverse=True):
        out[np.asarray(run["steps"][str(b)]["efficacy"], dtype=bool)] = b
    return out


# --- 4. report --------------------------------------------------------------------------------------

def plots(results: dict, runs: list[dict], facts: list[dict], args: argparse.Namespace, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    for arm in args.arms:  # the dense curves: efficacy at every snapshot (solid), the trace's (dotted)
        arm_runs = [r for r in runs if r["arm"] == arm]
        steps = sorted({int(s) for r in arm_runs for s in r["curve"]})
        ys = [np.mean([_curve_at(r, s) for r in arm_runs]) for s in steps]
        line, = axes[0].plot(steps, ys, marker=".", label=arm)
        trace = np.asarray([r["trace_learned"] for r in arm_runs], dtype=float)
        axes[0].plot(np.arange(1, trace.shape[1] + 1), trace.mean(0), ls=":", color=line.get_color())
    axes[0].axhline(0.95, color="grey", lw=0.8, ls="--")
    axes[0].set_title("efficacy at each snapshot (dotted: the trace's learned share)")
    axes[0].set_xlabel("optimizer steps")
    axes[0].grid(alpha=0.3)
    for ax, metric, label in zip(axes[1:], ("efficacy_all", "paraphrase", "locality"),
                                 ("efficacy over all requested facts", "paraphrase", "locality (token agreement)")):
        for arm, by_b in results["summary"].items():
            xs = [int(b) for b in by_b]
            ys = [by_b[b][metric]["mean"] for b in by_b]
            es = [by_b[b][metric]["sd"] for b in by_b]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=arm)
        ax.set_xlabel("optimizer steps")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{args.model}: {args.n} facts, {args.seeds} seeds (mean ± sd)")
    written.append(_save(plt, fig, out / "learning_curves.png"))

    signals = signal_values(facts)
    plain = [r for r in runs if r["arm"] == "plain"]
    names = list(SIGNALS)
    fig, axes = plt.subplots(2, (len(names) + 1) // 2, figsize=(18, 7), sharey=True)
    for ax, name in zip(axes.flat, names):
        values = signals[name]
        quartile = np.searchsorted(np.quantile(values, [0.25, 0.5, 0.75]), values, side="left") + 1
        for b in args.budgets:
            acc = [np.mean([np.asarray(r["steps"][str(b)]["efficacy"])[quartile == q].mean()
                            for r in plain]) if (quartile == q).any() else np.nan for q in (1, 2, 3, 4)]
            ax.plot([1, 2, 3, 4], acc, marker="o", label=f"step {b}")
        ax.set_title(f"{name} ({'higher' if SIGNALS[name] > 0 else 'lower'} = harder)", fontsize=9)
        ax.set_xticks([1, 2, 3, 4], ["Q1 easy", "Q2", "Q3", "Q4 hard"])
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    axes.flat[0].set_ylabel("plain LoRA efficacy")
    fig.suptitle(f"{args.model}: plain LoRA accuracy by quartile of each pre-training signal")
    written.append(_save(plt, fig, out / "accuracy_by_quartile.png"))
    return written


def _curve_at(run: dict, step: int) -> float:
    """A run's efficacy at ``step``: its snapshot there, or its last one if it stopped before."""
    taken = sorted(int(s) for s in run["curve"])
    return run["curve"][str(max([s for s in taken if s <= step], default=taken[0]))]


def _save(plt: Any, fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def report(results: dict, args: argparse.Namespace) -> str:
    def cell(s: dict | None, scale: float = 100.0) -> str:
        if not s or s["mean"] is None:
            return "–"
        digits = 1 if scale == 100.0 else 2
        return f"{scale * s['mean']:.{digits}f} ± {scale * s['sd']:.{digits}f}"

    budgets = [str(b) for b in args.budgets]
    lines = [f"Model `{args.model}`, {args.n} facts of `{Path(args.data).name}` (sample seed "
             f"{args.sample_seed}), seeds {', '.join(map(str, range(args.seeds)))}; mean ± sd over seeds, "
             "in % of facts.", ""]
    for metric in SUMMARY_METRICS:
        lines += [f"**{metric}**", "", "| arm | " + " | ".join(f"step {b}" for b in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for arm, by_b in results["summary"].items():
            lines.append(f"| {arm} | " + " | ".join(cell(by_b.get(b, {}).get(metric)) for b in budgets) + " |")
        lines.append("")
    lines += ["**Against plain, paired by seed** (arm − plain, percentage points, mean ± sd over seeds; "
              "a loss beyond seed noise is a mean below −2 sd/√seeds)", "",
              "| arm | metric | " + " | ".join(f"step {b}" for b in budgets) + " |",
              "|---|---|" + "---|" * len(budgets)]
    for arm, by_b in results["vs_plain"].items():
        for metric in COMPARED:
            lines.append(f"| {arm} | {metric} | "
                         + " | ".join(cell(by_b.get(b, {}).get(metric)) for b in budgets) + " |")
    lines.append("")
    loop = results.get("closed_loop")
    if loop:
        lines += [f"**Steps to learn** 90/95/100% of the requested facts: from the efficacy curve (greedy "
                  f"answers at every {SNAPSHOT_EVERY}-step snapshot), and in brackets from the trace; mean ± sd "
                  f"over seeds; censored = runs that never got there, counted at the budget {max(args.budgets)}", "",
                  "| arm | 90% | 95% | 100% | steps taken | train s |", "|---|---|---|---|---|---|"]

        def st(v: dict, t: dict) -> str:
            text = f"{v['mean']:.0f} ± {v['sd']:.0f}" + (f" ({v['censored']} cens.)" if v["censored"] else "")
            return text + f" [{t['mean']:.0f}" + (f", {t['censored']} cens.]" if t["censored"] else "]")

        for arm, by_f in loop["steps_to"].items():
            c, tr = loop["compute"][arm], loop["steps_to_trace"][arm]
            lines.append(f"| {arm} | " + " | ".join(st(by_f[f], tr[f]) for f in FRACTIONS)
                         + f" | {cell(c['steps'], 1.0)} | {cell(c['train_seconds'], 1.0)} |")
        step, censored = results["plain95"]["step"], results["plain95"]["censored"]
        lines += ["", f"**At plain's 95% step ({step}{', plain censored: the budget' if censored else ''})**, "
                  "each arm as it was then (or as it stopped), % of all requested facts:", "",
                  "| arm | efficacy_all | paraphrase | locality | bleed | pushed away |", "|---|---|---|---|---|---|"]
        for arm, ms in loop["at_plain95"].items():
            lines.append(f"| {arm} | {cell(ms['efficacy_all'])} | {cell(ms['paraphrase'])} | "
                         f"{cell(ms['locality'])} | {cell(ms['locality_bleed'])} | {cell(ms['pushed_away'])} |")
        lines += ["", "**Against plain, paired by seed, at plain's 95% step** (arm − plain; steps in steps, the rest "
                  "in points; beyond seed noise = |mean| > 2 sd/√seeds):", "",
                  "| arm | steps to 95% | efficacy_all | paraphrase | locality | bleed | dominates plain? "
                  "| train s to 95% (× plain, not judged) |",
                  "|---|---|---|---|---|---|---|---|"]
        for arm, ms in loop["vs_plain"].items():
            v = loop["dominates_plain"][arm]
            why = "yes" if v["dominates"] else (f"no (worse: {', '.join(v['worse'])})" if v["worse"]
                                                else "no (better in nothing beyond noise)")
            lines.append(f"| {arm} | {cell(ms['steps_to_0.95'], 1.0)} | {cell(ms['efficacy_all'])} | "
                         f"{cell(ms['paraphrase'])} | {cell(ms['locality'])} | {cell(ms['locality_bleed'])} | {why} "
                         f"| {cell(loop['compute_to_0.95'][arm], 1.0)} |")
        ov = loop["override"]
        lines += ["", f"**Override facts** (the base model already answers the record's ground truth): "
                  f"{ov['facts']} in the sample; their efficacy at plain's 95% step: "
                  + ", ".join(f"{arm} {cell(v)}" for arm, v in ov["efficacy_at_plain95"].items())]
        lines += ["", "**Trace against eval** (learned share from the trace / efficacy_all from `beacon eval`):",
                  "", "| arm | " + " | ".join(f"step {b}" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
        for arm, by_b in loop["trace_vs_eval"].items():
            lines.append(f"| {arm} | " + " | ".join(f"{cell(by_b[b]['trace'])} / {cell(by_b[b]['eval'])}"
                                                    for b in budgets) + " |")
        lines.append("")
    lines += ["**Signals**: AUC for \"not learned by step b\" under plain LoRA (higher value of the signal = "
              "predicted harder; 0.5 = no information, below 0.5 = the opposite direction), and Spearman "
              "with the first step a fact is learned.", "",
              "| signal | " + " | ".join(f"AUC @{b}" for b in budgets) + " | Spearman |",
              "|---|" + "---|" * (len(budgets) + 1)]
    for name, by_b in results["auc"].items():
        rho = results["spearman_first_learned"][name]
        lines.append(f"| {name} | " + " | ".join(cell(by_b[b], 1.0) for b in budgets)
                     + f" | {cell(rho, 1.0)} |")
    return "\n".join(lines) + "\n"


# --- main -----------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="facts file (CounterFact JSON, JSONL, CSV, Parquet)")
    p.add_argument("--format", default="auto", help="input layout for beacon curate (default: auto)")
    p.add_argument("--n", type=int, default=256, help="facts sampled from --data")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of the fact sample")
    p.add_argument("--override-pool", type=int, default=0, metavar="N",
                   help="override regime: probe N sampled records, train on the first --n whose base-model "
                        "answer is already their ground_truth (0: a plain sample)")
    p.add_argument("--budgets", default="40,80,120,160", help="optimizer steps at which to evaluate")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per arm (0..seeds-1)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from {', '.join(ARMS)}; adaptive+locality@W (or plain+locality@W) sets locality_weight W "
                        "(@W:replay=generic: replay only Beacon's generic prefixes); "
                        "adaptive@k=N:tau=X:r=X (either adaptive arm) sets stable_visits, stable_prob, rehearse_rate")
    p.add_argument("--model", default=DEFAULT_LM,
                   help="base LM: bundled:smollm2-135m-instruct, bundled:gemma3-270m, a HF id or path")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (constant)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lora-rank", type=int, default=8, help="LoRA rank (alpha = 2 x rank)")
    p.add_argument("--snapshot-every", type=int, default=10,
                   help="LoRA snapshot (and efficacy-curve) grid in steps (default 10; larger "
                        "for long runs: each snapshot is a greedy pass over every fact)")
    p.add_argument("--eval-batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (each its own process)")
    p.add_argument("--out", required=True, help="output folder (results.json, report.md, PNGs, runs/)")
    p.add_argument("--one", nargs=2, metavar=("ARM", "SEED"), help=argparse.SUPPRESS)
    p.add_argument("--at", nargs=3, metavar=("ARM", "SEED", "STEP"), help=argparse.SUPPRESS)
    p.add_argument("--curve", nargs=2, metavar=("ARM", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.budgets = sorted({int(b) for b in args.budgets.split(",") if b.strip()})
    except ValueError:
        p.error(f"--budgets must be comma-separated integers, got {args.budgets!r}")
    if not args.budgets or min(args.budgets) < 1:
        p.error(f"--budgets must be positive step counts, got {args.budgets}")
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    for arm in args.arms:
        try:
            parse_arm(arm)
        except ValueError as e:
            p.error(str(e))
    if "plain" not in args.arms:
        p.error("--arms must include plain: every comparison and every AUC is against it")
    if args.n < 4 or args.seeds < 1:
        p.error(f"--n must be >= 4 and --seeds >= 1 (got {args.n}, {args.seeds})")
    if args.snapshot_every < 1:
        p.error(f"--snapshot-every must be a positive step count, got {args.snapshot_every}")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    args = parse_args(argv)
    global SNAPSHOT_EVERY
    SNAPSHOT_EVERY = args.snapshot_every  # the grid every step-reading function below shares
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs").mkdir(exist_ok=True)
    dataset = out / "dataset"
    if args.one:  # a child: one arm x seed
        arm, seed = args.one[0], int(args.one[1])
        run_one(args, arm, seed, dataset, out, out / "runs" / f"{arm}-{seed}.json")
        return 0
    if args.curve:  # a child: one arm x seed's efficacy at every snapshot
        arm, seed = args.curve[0], int(args.curve[1])
        efficacy_curve(args, arm, seed, dataset, out, out / "runs" / f"{arm}-{seed}.curve.json")
        return 0
    if args.at:  # a child: one arm x seed evaluated at one step
        arm, seed, step = args.at[0], int(args.at[1]), int(args.at[2])
        (out / "at").mkdir(exist_ok=True)
        evaluate_at(args, arm, seed, step, dataset, out, out / "at" / f"{arm}-{seed}-{step}.json")
        return 0

    settings = {k: v for k, v in vars(args).items()
                if k not in ("jobs", "threads", "out", "one", "at", "curve", "arms", "seeds")
                and not (k == "snapshot_every" and v == 10)}  # folders from before the flag stay valid
    settings_path = out / "settings.json"
    if settings_path.is_file() and json.loads(settings_path.read_text()) != settings:
        raise SystemExit(f"{out} holds runs with other settings ({settings_path}); use another --out")
    settings_path.write_text(json.dumps(settings, indent=2))
    try:
        dataset = prepare(args, out)
    except (ValueError, FileNotFoundError, FileExistsError) as e:  # bad --data / --n / --format: named
        raise SystemExit(f"knowledge benchmark: {e}") from None
    base_scores(args, out, dataset)

    from trainer.data import read_scored

    facts = read_scored(dataset).to_pylist()
    # An arm that trains exactly another arm's rows with its config (e.g. the default policy kept every
    # fact with weight 1 and the defaults are another arm's) is that arm's run: the same steps on the
    # same batches; it is copied, not recomputed.
    def what(arm: str) -> tuple:
        return (json.dumps(arm_rows(arm, facts)), json.dumps(effective_config(arm), sort_keys=True))

    same_as = {}
    for arm in args.arms:
        earlier = next((a for a in args.arms[:args.arms.index(arm)] if a not in same_as and what(a) == what(arm)),
                       None)
        if earlier is not None:
            same_as[arm] = earlier
    todo = [("--one", arm, seed) for seed in range(args.seeds) for arm in args.arms
            if arm not in same_as and not (out / "runs" / f"{arm}-{seed}.json").is_file()]
    log.info("%d runs to do (%d cached, %d the same as another arm's), %d at a time", len(todo),
             (len(args.arms) - len(same_as)) * args.seeds - len(todo), len(same_as) * args.seeds, args.jobs)
    for arm, other in same_as.items():
        log.info("%s trains exactly %s's rows with its config: copied from %s, not rerun", arm, other, other)

    def child(job: tuple) -> None:
        flag, *rest = job  # --one ARM SEED (train), --curve ARM SEED, --at ARM SEED STEP
        name = "-".join(map(str, rest)) + ("" if flag == "--one" else f".{flag[2:]}")
        cmd = [sys.executable, __file__, *(sys.argv[1:] if argv is None else argv), flag, *map(str, rest)]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        (out / "runs" / f"{name}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode:
            raise RuntimeError(f"{flag[2:]} {name} failed (exit {proc.returncode}); see "
                               f"{out / 'runs' / f'{name}.log'}:\n{proc.stderr[-2000:]}")
        log.info("%s %s done in %.0f s", flag[2:], name, time.perf_counter() - started)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(child, todo))  # re-raises the first failed run

    for arm, other in same_as.items():
        for seed in range(args.seeds):
            run = json.loads((out / "runs" / f"{other}-{seed}.json").read_text())
            (out / "runs" / f"{arm}-{seed}.json").write_text(json.dumps({**run, "arm": arm, "same_as": other}))
    runs = [json.loads((out / "runs" / f"{arm}-{seed}.json").read_text())
            for arm in args.arms for seed in range(args.seeds)]
    same_as_plain = [a for a, o in same_as.items() if o == "plain"]

    # Phase 2: every run's efficacy at every snapshot (the learning curve steps_to is read from).
    curve_todo = [("--curve", arm, seed) for seed in range(args.seeds) for arm in args.arms
                  if arm not in same_as and not (out / "runs" / f"{arm}-{seed}.curve.json").is_file()]
    log.info("%d efficacy curves to compute", len(curve_todo))
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(child, curve_todo))
    for run in runs:
        curve = json.loads((out / "runs" / f"{same_as.get(run['arm'], run['arm'])}-{run['seed']}.curve.json")
                           .read_text())
        run["curve"] = curve["curve"]

    # Phase 3: every arm as it was at the step where plain reached 95% (from the snapshots).
    step95, censored95 = plain95_step(runs, max(args.budgets))
    at_todo = [("--at", arm, seed, step95) for seed in range(args.seeds) for arm in args.arms
               if arm not in same_as and not (out / "at" / f"{arm}-{seed}-{step95}.json").is_file()]
    log.info("plain reaches 95%% at step %d%s: %d evaluations there", step95,
             " (censored: the budget)" if censored95 else "", len(at_todo))
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(child, at_todo))
    at = [{**json.loads((out / "at" / f"{same_as.get(arm, arm)}-{seed}-{step95}.json").read_text()), "arm": arm}
          for arm in args.arms for seed in range(args.seeds)]
    results = aggregate(runs, facts, args)
    results["plain95"] = {"step": step95, "censored": censored95}
    results["closed_loop"] = closed_loop(runs, at, facts, args)
    results["steps_to"] = results["closed_loop"]["steps_to"]
    results["at_plain95"] = results["closed_loop"]["at_plain95"]
    from schemas import Manifest

    manifest = Manifest.read(dataset)
    results["settings"] = {**settings, "seeds": args.seeds, "arms": args.arms}
    results["dataset"] = {"counts": manifest.counts.model_dump(),
                          "kept": sum(bool(f["keep"]) for f in facts),
                          "reasons": {r: sum(f["reason"] == r for f in facts) for r in {f["reason"] for f in facts}}}
    results["same_as_plain"] = same_as_plain
    results["same_as"] = same_as
    results["replay"] = {r["arm"]: r.get("replay") for r in runs if r.get("replay")}
    results["timing"] = {f"{r['arm']}-{r['seed']}": {"train_s": round(r["train_seconds"], 1),
                                                     "eval_s": round(r["eval_seconds"], 1)} for r in runs}
    results["plots"] = plots(results, runs, facts, args, out)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    text = report(results, args)
    (out / "report.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
