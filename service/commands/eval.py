"""`beacon eval RUN`: which facts the trained adapter learned, which it did not, and what it broke."""

from __future__ import annotations

import argparse

from service.commands.config_flags import add_config_flags, load_configs
from trainer.config import EvalConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a trained run: efficacy, paraphrase, locality, drift")
    p.add_argument("run_dir", metavar="RUN", help="run folder written by `beacon train`, or the URL of a published run (evaluated here, "
                        "eval.parquet and metrics.json published back)")
    p.add_argument("--dataset", metavar="DATASET",
                   help="the curated dataset, if it moved since training (default: the recorded path)")
    p.add_argument("--config", metavar="FILE",
                   help="JSON/YAML file; its 'eval' section (or the whole file) sets the keys below")
    add_config_flags(p, EvalConfig)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from trainer.evaluate import evaluate

    config = load_configs(args, {"eval": EvalConfig})["eval"]
    metrics = evaluate(args.run_dir, config, dataset_dir=args.dataset)
    print_summary(metrics, args.run_dir)
    return 0


def print_summary(metrics: dict, run_dir: str) -> None:
    from trainer.metrics import learned_sentence, summary_table

    kept = metrics["kept"]
    print(f"\n{learned_sentence(kept)}")
    print(f"paraphrases {_pct(kept['paraphrase'])}, locality {_pct(kept['locality'])}, "
          f"bleed {_pct(kept['locality_bleed'])}, pushed away {_pct(kept['pushed_away'])}")
    para = metrics.get("paraphrases")
    if para and para.get("trained_on"):
        print(f"paraphrase accuracy is over the {para['evaluated']} held-out paraphrases "
              f"({para['trained_on']} were trained on)")
    print(summary_table(metrics))
    print(f"  per fact -> {run_dir}/eval.parquet   aggregates -> {run_dir}/metrics.json")


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"
