"""Cost of the weights: Beacon's weighted trainer vs. plain peft + HF Trainer, same data, same run.

    python bench/train.py --data ../shared/data/counterfact-val.json --facts 128 --steps 30

Each arm runs in its own subprocess (clean peak memory), in ABBA order over ``--repeats`` rounds to
spread machine noise over both arms; speed is 1 / the median step time, so a burst of load from
another process moves a few steps rather than the figure. Same facts, formatting, LoRA config,
seed, batch and steps; the plain arm trains with the model's own loss and the stock collator, the
weighted arm with Beacon's collator, ``WeightedTrainer`` and per-fact weights (random in [0.5, 1.5],
mean 1). ``--paired`` also times both losses interleaved step by step in one process, which a shared
machine's load cannot favour. Prints a markdown table and writes JSON to ``--out`` (bench/results/,
not committed).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from schemas.scoring_spec import DEFAULT_LM  # noqa: E402

ARMS = ("plain", "weighted", "semantic")
BASE_MODEL = DEFAULT_LM
WARMUP_STEPS = 2  # not timed: first steps pay for allocator growth and lazy init


def load_facts(path: Path, n: int, seed: int) -> list[dict]:
    """``n`` CounterFact records (seeded sample) as rows with a weight, the same for every arm."""
    records = json.loads(path.read_text())
    rng = random.Random(seed)
    rng.shuffle(records)
    rows = []
    for i, r in enumerate(records[:n]):
        rows.append({"fact_id": str(r.get("case_id", i)), "prompt": r["prompt"], "target": r["target_new"],
                     "weight": rng.uniform(0.5, 1.5)})
    mean = sum(r["weight"] for r in rows) / len(rows)
    for r in rows:
        r["weight"] /= mean
    return rows


def lora_setup(args: argparse.Namespace, config: Any, output_dir: Path, callbacks: list | None = None) -> Any:
    """The product's own setup (``trainer.setup.build_trainer``): the same seeded base model + LoRA
    adapter and the same examples for every arm, and Beacon's weighted Trainer."""
    from trainer.setup import build_trainer

    rows = load_facts(Path(args.data), args.facts, args.seed)
    return build_trainer(config, rows, output_dir, callbacks=callbacks, save_strategy="no")


def run_arm(arm: str, args: argparse.Namespace) -> dict:
    """One arm in this process; returns its timings and peak memory."""
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback

    from trainer.config import TrainConfig
    from trainer.setup import training_arguments

    config = TrainConfig(max_steps=args.steps, epochs=None, batch_size=args.batch_size, seed=args.seed,
                         semantic_weight=0.1 if arm == "semantic" else 0.0, progress=False,
                         logging_steps=max(args.steps, 1), model=BASE_MODEL, chat_template=False)

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, *a, **k) -> None:
            self.times.append(time.perf_counter())

    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        setup = lora_setup(args, config, Path(tmp), callbacks=[clock])
        trainer = setup.trainer
        if arm == "plain":  # the baseline: the same model and examples under stock HF Trainer + collator
            targs = training_arguments(config, Path(tmp), save_strategy="no", remove_unused_columns=True)
            data = [{"input_ids": e.input_ids, "labels": e.labels} for e in setup.examples]
            trainer = Trainer(model=setup.model, args=targs, train_dataset=data, callbacks=[clock],
                              data_collator=DataCollatorForSeq2Seq(setup.tokenizer, label_pad_token_id=-100))
        rss_before = _rss_mb()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        output = trainer.train()
    timed = clock.times[WARMUP_STEPS - 1:]
    durations = [b - a for a, b in zip(timed, timed[1:])]
    return {
        "arm": arm,
        "steps": len(clock.times),
        # 1 / median step time: a burst of load from another process moves a few steps, not the figure.
        "steps_per_second": 1.0 / statistics.median(durations),
        "steps_per_second_mean": len(durations) / (timed[-1] - timed[0]),
        "train_loss": output.training_loss,
        "rss_before_train_mb": rss_before,
        "peak_rss_mb": _peak_rss_mb(),
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
    }


def run_paired(args: argparse.Namespace) -> dict:
    """Forward + backward of the same batches with each loss (plain, weighted, + semantic, weighted +
    the per-fact trace of ``beacon train``) in turn.

    Interleaving step by step exposes both losses to the same machine load: the ratio of median step
    times is the loss path's own cost, whatever else the machine runs.
    """
    import torch
    from transformers import DataCollatorForSeq2Seq

    from trainer.config import TrainConfig
    from trainer.data import WeightedCollator
    from trainer.loss import weighted_loss
    from trainer.trace import fact_states

    # locality_weight: the setup builds the replay rows; only the "locality" arm's step uses them.
    config = TrainConfig(max_steps=args.steps, epochs=None, batch_size=args.batch_size, seed=args.seed,
                         model=BASE_MODEL, chat_template=False, locality_weight=1.0)
    with tempfile.TemporaryDirectory() as tmp:  # the Trainer's output folder; nothing is saved there
        setup = lora_setup(args, config, Path(tmp))
    model, tokenizer, examples = setup.model, setup.tokenizer, setup.examples
    plain_collate = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    weighted_collate = WeightedCollator(tokenizer.pad_token_id)
    times: dict[str, list[float]] = {"plain": [], "weighted": [], "semantic": [], "traced": [], "locality": []}
    embeddings = model.get_input_embeddings().weight

    def plain_step(chunk: list) -> None:
        batch = plain_collate([{"input_ids": e.input_ids, "labels": e.labels} for e in chunk])
        model(**batch).loss.backward()

    def weighted_step(chunk: list, semantic_weight: float = 0.0, trace: bool = False) -> None:
        batch = weighted_collate([{"input_ids": e.input_ids, "labels": e.labels, "weight": e.weight}
                                  for e in chunk])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        weighted_loss(logits, batch["labels"], batch["weight"], semantic_weight=semantic_weight,
                      embeddings=embeddings).backward()
        if trace:  # what WeightedTrainer adds per micro-batch when beacon train keeps its trace
            fact_states(logits, batch["labels"], embeddings, last_is_eos=True)

    def locality_step(chunk: list) -> None:
        # The product's own loss path: facts + replay rows in one forward, the base distribution of the
        # replay rows with the adapter disabled, the KL term (WeightedTrainer.compute_loss).
        batch = weighted_collate([{"input_ids": e.input_ids, "labels": e.labels, "weight": e.weight}
                                  for e in chunk])
        setup.trainer.compute_loss(model, batch).backward()

    steps = {"plain": plain_step, "weighted": weighted_step,
             "semantic": lambda chunk: weighted_step(chunk, semantic_weight=0.1),
             "traced": lambda chunk: weighted_step(chunk, trace=True), "locality": locality_step}
    order = list(steps)
    bs = config.batch_size
    for i in range(args.steps):
        start = (i * bs) % max(len(examples) - bs + 1, 1)
        chunk = examples[start:start + bs]
        for arm in order[i % len(order):] + order[:i % len(order)]:  # each loss takes each place in turn
            t = time.perf_counter()
            steps[arm](chunk)
            elapsed = time.perf_counter() - t
            model.zero_grad(set_to_none=True)
            if i >= WARMUP_STEPS:
                times[arm].append(elapsed)
    median = {arm: statistics.median(v) for arm, v in times.items()}
    return {"median_step_seconds": median, "weighted_vs_plain_speed": median["plain"] / median["weighted"],
            "semantic_vs_plain_speed": median["plain"] / median["semantic"],
            "traced_vs_weighted_speed": median["weighted"] / median["traced"],
            "locality_vs_weighted_speed": median["weighted"] / median["locality"],
            "replay_batch_size": config.replay_batch_size,
            "pairs": len(times["plain"]), "torch_threads": torch.get_num_threads()}


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def orchestrate(args: argparse.Namespace) -> dict:
    arms = args.arms.split(",")
    for arm in arms:
        if arm not in ARMS:
            raise SystemExit(f"unknown arm {arm!r}; choose from {ARMS}")
    order = []
    for r in range(args.repeats):  # ABBA...: each arm runs first as often as last
        order += arms if r % 2 == 0 else arms[::-1]
    runs = []
    for i, arm in enumerate(order, 1):
        print(f"[{i}/{len(order)}] {arm} ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, __file__, "--arm", arm, *sys.argv[1:]]
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"arm {arm} failed:\n{out.stderr[-3000:]}")
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"    {runs[-1]['steps_per_second']:.3f} steps/s, peak RSS {runs[-1]['peak_rss_mb']:.0f} MiB",
              file=sys.stderr, flush=True)
    paired = None
    if args.paired:
        print("[paired] plain, weighted, semantic loss, interleaved ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, __file__, "--arm", "paired", *sys.argv[1:]]
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"paired run failed:\n{out.stderr[-3000:]}")
        paired = json.loads(out.stdout.strip().splitlines()[-1])
    summary = {}
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        summary[arm] = {
            "steps_per_second": statistics.median(r["steps_per_second"] for r in mine),
            "steps_per_second_all": [round(r["steps_per_second"], 4) for r in mine],
            "steps_per_second_mean_all": [round(r["steps_per_second_mean"], 4) for r in mine],
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in mine),
            "train_peak_over_start_mb": statistics.median(
                r["peak_rss_mb"] - r["rss_before_train_mb"] for r in mine),
            "best_steps_per_second": max(r["steps_per_second"] for r in mine),
            "peak_gpu_mb": mine[0]["peak_gpu_mb"],
        }
    return {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "params": {
        "data": str(args.data), "facts": args.facts, "steps": args.steps, "batch_size": args.batch_size,
        "repeats": args.repeats, "seed": args.seed, "warmup_steps_not_timed": WARMUP_STEPS,
        "device": runs[0]["device"], "torch_threads": runs[0]["torch_threads"]},
        "summary": summary, "paired": paired, "runs": runs}


def markdown(result: dict) -> str:
    plain = result["summary"].get("plain")
    lines = ["| arm | steps/s | vs plain | best steps/s | vs plain | peak RSS MiB | vs plain | "
             "runs (steps/s) |", "|---|---|---|---|---|---|---|---|"]
    for arm, s in result["summary"].items():
        speed = f"{s['steps_per_second'] / plain['steps_per_second']:.3f}x" if plain else "-"
        best = f"{s['best_steps_per_second'] / plain['best_steps_per_second']:.3f}x" if plain else "-"
        mem = f"{s['peak_rss_mb'] / plain['peak_rss_mb']:.3f}x" if plain else "-"
        runs = ", ".join(f"{v:.3f}" for v in s["steps_per_second_all"])
        lines.append(f"| {arm} | {s['steps_per_second']:.3f} | {speed} | {s['best_steps_per_second']:.3f} | "
                     f"{best} | {s['peak_rss_mb']:.0f} | {mem} | {runs} |")
    p = result["params"]
    lines.append(f"\nsteps/s = 1 / median step time, median over runs; peak RSS median over runs. "
                 f"{p['facts']} facts, {p['steps']} steps (first {p['warmup_steps_not_timed']} not timed), "
                 f"batch {p['batch_size']}, {p['repeats']} rounds ABBA, {p['device']}, "
                 f"{p['torch_threads']} torch threads")
    if result.get("paired"):
        q = result["paired"]
        lines.append(f"\nInterleaved in one process ({q['pairs']} pairs of forward + backward on the same "
                     f"batches): plain {1000 * q['median_step_seconds']['plain']:.0f} ms, weighted "
                     f"{1000 * q['median_step_seconds']['weighted']:.0f} ms, weighted + semantic term "
                     f"{1000 * q['median_step_seconds']['semantic']:.0f} ms per step (median): weighted at "
                     f"{q['weighted_vs_plain_speed']:.3f}x, semantic at {q['semantic_vs_plain_speed']:.3f}x "
                     f"the plain speed; weighted + trace {1000 * q['median_step_seconds']['traced']:.0f} ms: "
                     f"the trace costs {100 * (1 / q['traced_vs_weighted_speed'] - 1):.1f}% of a weighted step; "
                     f"with the locality term ({q['replay_batch_size']} replay rows) "
                     f"{1000 * q['median_step_seconds']['locality']:.0f} ms: "
                     f"{1 / q['locality_vs_weighted_speed']:.2f}x a weighted step")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "counterfact-val.json"))
    parser.add_argument("--facts", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="rounds; each runs every arm once")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", default="plain,weighted", help=f"comma-separated, from {ARMS}")
    parser.add_argument("--threads", type=int, help="torch threads per arm (default: torch's choice); 1 is "
                        "steadier on a machine shared with other jobs")
    parser.add_argument("--paired", action=argparse.BooleanOptionalAction, default=True,
                        help="also time both losses interleaved in one process (robust to machine load)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run one arm, print its JSON
    args = parser.parse_args()
    if args.steps <= WARMUP_STEPS + 1:
        raise SystemExit(f"--steps must be above {WARMUP_STEPS + 1}")
    if args.arm:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(run_paired(args) if args.arm == "paired" else run_arm(args.arm, args)))
        return
    result = orchestrate(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"train-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"\n-> {path}")


if __name__ == "__main__":
    main()
