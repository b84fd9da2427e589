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

   Efficacy is always also reported over *all* requested facts (``efficacy_all``): a fact filtered
   out or rejected counts as not learned.
4. Signals: for the ``plain`` arm, per seed, the AUC of each signal for "not learned by budget b"
   (oriented so that higher = predicted harder) and its Spearman correlation with the first budget at
   which the fact is learned.

Writes ``OUT/results.json`` (per arm x budget x seed, and mean/sd), ``OUT/report.md`` (the tables for
BENCHMARKS.md) and PNG plots (learning curves; plain accuracy by signal quartile). Runs are cached in
``OUT/runs/``: rerunning with the same settings skips the runs already done. What the runs on
CounterFact found, and the exact commands: BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import random
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

ARMS = ("plain", "weighted", "curated", "repeat", "repeat_unique", "semantic")
SEMANTIC_WEIGHT = 0.1  # the semantic arm's auxiliary-loss weight (TrainConfig.semantic_weight)
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
    sample.write_bytes(b"".join(line + b"\n" for line in
                                sample_lines(Path(args.data), args.n, args.sample_seed, args.format)))
    # The sample is JSON Lines whatever the input's container; a forced layout still applies.
    config = CurateConfig(model=args.model, format="jsonl" if args.format in ("json", "csv", "parquet")
                          else args.format)
    log.info("curating %d sampled facts with %s", args.n, args.model)
    manifest = curate([str(sample)], str(dataset), config)
    log.info("curated: %s", manifest.counts)
    return dataset


def arm_rows(arm: str, facts: list[dict]) -> list[dict]:
    """The training rows (fact_id, prompt, target, weight) of an arm, repeated where the arm repeats."""
    from pipeline.config import CurateConfig
    from pipeline.policy import raw_weight
    from pipeline.quantiles import quantile

    def row(f: dict, weight: float) -> dict:
        return {"fact_id": f["fact_id"], "prompt": f["prompt"], "target": f["target"], "weight": weight}

    if arm in ("plain", "semantic"):  # semantic differs from plain in its loss, not its rows
        return [row(f, 1.0) for f in facts]
    if arm == "curated":
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
    """Train one arm with one seed and evaluate at every eval step; writes ``path`` (JSON)."""
    import torch
    from transformers import TrainerCallback

    from trainer.config import TrainConfig
    from trainer.evaluate import score_after
    from trainer.setup import build_trainer

    torch.set_num_threads(args.threads)
    model, tokenizer, plan, facts = load_plan(dataset, args.model, args.eval_batch_size)
    base = pickle.loads((out / "base.pkl").read_bytes())
    rows = arm_rows(arm, facts)
    eval_steps = eval_steps_of(args.budgets, len(rows), arm, args.n)
    config = TrainConfig(model=args.model, max_steps=max(eval_steps), epochs=None, seed=seed,
                         batch_size=args.batch_size, learning_rate=args.lr, lora_rank=args.lora_rank,
                         lora_alpha=2.0 * args.lora_rank, progress=False, logging_steps=10**6,
                         semantic_weight=SEMANTIC_WEIGHT if arm == "semantic" else 0.0,
                         chat_template=plan.chat)
    record: dict[str, Any] = {"arm": arm, "seed": seed, "train_rows": len(rows),
                              "trained_ids": sorted({r["fact_id"] for r in rows}), "steps": {},
                              "eval_seconds": 0.0}
    eps = plan.config.pushed_away_epsilon

    class EvaluateAtBudgets(TrainerCallback):
        def on_step_end(self, targs: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step not in eval_steps:
                return
            started = time.perf_counter()
            cols = score_after(kwargs["model"], tokenizer, plan, base)
            pushed = np.asarray(cols["drift_after"]) > np.asarray(cols["drift_before"]) + eps
            record["steps"][str(state.global_step)] = {
                **{m: [None if v is None else float(v) for v in cols[m]] for m in FACT_METRICS
                   if m != "pushed_away"},
                "pushed_away": pushed.astype(float).tolist()}
            record["eval_seconds"] += time.perf_counter() - started
            log.info("%s seed %d step %d: efficacy %.3f", arm, seed, state.global_step,
                     float(np.mean(cols["efficacy"])))

    # The product's own setup (seeded LoRA init, examples, weighted Trainer) on the loaded base model.
    trainer = build_trainer(config, rows, out / "tmp" / f"{arm}-{seed}", base=(model, tokenizer),
                            callbacks=[EvaluateAtBudgets()], save_strategy="no").trainer
    started = time.perf_counter()
    trainer.train()
    record["seconds"] = time.perf_counter() - started
    record["train_seconds"] = record["seconds"] - record["eval_seconds"]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


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
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, metric, label in zip(axes, ("efficacy_all", "paraphrase", "locality"),
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
    p.add_argument("--budgets", default="40,80,120,160", help="optimizer steps at which to evaluate")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per arm (0..seeds-1)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from {', '.join(ARMS)}")
    p.add_argument("--model", default=DEFAULT_LM,
                   help="base LM: bundled:smollm2-135m-instruct, bundled:gemma3-270m, a HF id or path")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (constant)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lora-rank", type=int, default=8, help="LoRA rank (alpha = 2 x rank)")
    p.add_argument("--eval-batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (each its own process)")
    p.add_argument("--out", required=True, help="output folder (results.json, report.md, PNGs, runs/)")
    p.add_argument("--one", nargs=2, metavar=("ARM", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.budgets = sorted({int(b) for b in args.budgets.split(",") if b.strip()})
    except ValueError:
        p.error(f"--budgets must be comma-separated integers, got {args.budgets!r}")
    if not args.budgets or min(args.budgets) < 1:
        p.error(f"--budgets must be positive step counts, got {args.budgets}")
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        p.error(f"unknown arm(s) {unknown}; known: {', '.join(ARMS)}")
    if "plain" not in args.arms:
        p.error("--arms must include plain: every comparison and every AUC is against it")
    if args.n < 4 or args.seeds < 1:
        p.error(f"--n must be >= 4 and --seeds >= 1 (got {args.n}, {args.seeds})")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs").mkdir(exist_ok=True)
    dataset = out / "dataset"
    if args.one:  # a child: one arm x seed
        arm, seed = args.one[0], int(args.one[1])
        run_one(args, arm, seed, dataset, out, out / "runs" / f"{arm}-{seed}.json")
        return 0

    settings = {k: v for k, v in vars(args).items() if k not in ("jobs", "threads", "out", "one", "arms", "seeds")}
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
    # An arm that trains exactly plain's rows (e.g. the default policy kept every fact with weight 1)
    # is plain's run: the same steps on the same batches; it is copied, not recomputed.
    same_as_plain = [a for a in args.arms if a not in ("plain", "semantic")
                     and arm_rows(a, facts) == arm_rows("plain", facts)]
    todo = [(arm, seed) for seed in range(args.seeds) for arm in args.arms
            if arm not in same_as_plain and not (out / "runs" / f"{arm}-{seed}.json").is_file()]
    log.info("%d runs to do (%d cached, %d the same as plain's), %d at a time", len(todo),
             (len(args.arms) - len(same_as_plain)) * args.seeds - len(todo), len(same_as_plain) * args.seeds,
             args.jobs)
    if same_as_plain:
        log.info("%s train(s) exactly plain's rows: copied from plain, not rerun", ", ".join(same_as_plain))

    def child(job: tuple[str, int]) -> None:
        arm, seed = job
        cmd = [sys.executable, __file__, *(sys.argv[1:] if argv is None else argv), "--one", arm, str(seed)]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        (out / "runs" / f"{arm}-{seed}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode:
            raise RuntimeError(f"run {arm} seed {seed} failed (exit {proc.returncode}); see "
                               f"{out / 'runs' / f'{arm}-{seed}.log'}:\n{proc.stderr[-2000:]}")
        log.info("run %s seed %d done in %.0f s", arm, seed, time.perf_counter() - started)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(child, todo))  # re-raises the first failed run

    for arm in same_as_plain:
        for seed in range(args.seeds):
            run = json.loads((out / "runs" / f"plain-{seed}.json").read_text())
            (out / "runs" / f"{arm}-{seed}.json").write_text(json.dumps({**run, "arm": arm, "same_as": "plain"}))
    runs = [json.loads((out / "runs" / f"{arm}-{seed}.json").read_text())
            for arm in args.arms for seed in range(args.seeds)]
    results = aggregate(runs, facts, args)
    from schemas import Manifest

    manifest = Manifest.read(dataset)
    results["settings"] = {**settings, "seeds": args.seeds, "arms": args.arms}
    results["dataset"] = {"counts": manifest.counts.model_dump(),
                          "kept": sum(bool(f["keep"]) for f in facts),
                          "reasons": {r: sum(f["reason"] == r for f in facts) for r in {f["reason"] for f in facts}}}
    results["same_as_plain"] = same_as_plain
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
