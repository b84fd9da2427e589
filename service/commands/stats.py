"""`beacon stats DIR`: what `GET /datasets/{id}/stats` answers, for a dataset on disk."""

from __future__ import annotations

import argparse
import json

SHOWN_QUANTILES = ("q0.1", "q0.25", "q0.5", "q0.75", "q0.9")  # all of them: --json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stats", help="a curated dataset's statistics: reasons, drift, interference, conflicts",
                       epilog="The same numbers as the service's GET /datasets/{id}/stats; --json prints "
                              "exactly its answer.")
    p.add_argument("dataset", metavar="DIR", help="curated dataset folder or object-store URL (s3://…), or a `beacon run` folder")
    p.add_argument("--json", action="store_true", help="print the API's JSON instead of the text summary")
    p.add_argument("--threads", type=_positive, default=2, metavar="N", help="DuckDB threads (default 2)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from schemas import storage
    from service.datasets import build_stats, open_dataset
    from service.jsonsafe import dumps

    with open_dataset(args.dataset) as local:  # an object-store dataset is read from a local copy
        stats = build_stats(local.files, local.manifest, threads=args.threads)
        shown = args.dataset if storage.is_url(args.dataset) else str(local.dataset_dir)
    if args.json:
        print(json.dumps(json.loads(dumps(stats)), indent=2))
    else:
        print(render(stats, shown))
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def render(stats: dict, where: str) -> str:
    """The stats as a terminal summary: counts, quantiles, text histograms, the closest conflicts."""
    c, manifest = stats["counts"], stats["manifest"] or {}
    lines = [f"dataset {manifest.get('dataset_id', '?')}  ({where})",
             f"  scored {c['scored']}  kept {c['kept']}  rejected {c['rejected']}  "
             f"with conflicts {c['with_conflicts']}"]
    for reason, row in stats["by_reason"].items():
        lines.append(f"    {reason:<18} {row['n']:>6}   drift mean {_num(row['drift_mean'])}   "
                     f"interference mean {_num(row['interference_mean'])}")
    for stage, n in sorted((manifest.get("rejected_by_stage") or {}).items()):
        lines.append(f"    rejected at {stage:<8} {n:>4}")
    drift = stats["drift"]
    sections = [(f"drift ({drift['definition']})", drift), ("interference", stats["interference"])]
    if stats.get("risk"):
        sections.append(("risk", stats["risk"]))
    for name, summary in sections:
        lines.append(f"\n  {name}: min {_num(summary['min'])}  mean {_num(summary['mean'])}  "
                     f"max {_num(summary['max'])}")
        shown = {q: v for q, v in (summary.get("quantiles") or {}).items() if q in SHOWN_QUANTILES}
        if shown:
            lines.append("    quantiles  " + "  ".join(f"{q} {_num(v)}" for q, v in shown.items()))
        if name != "risk":
            lines += histogram(summary["histogram"])
    risk = stats.get("risk")
    if risk:
        lines.append(f"    at risk (risk >= {risk['threshold']}): {risk['at_risk']} of {c['kept']} kept facts")
    if stats["top_conflicts"]:
        lines.append("\n  closest conflict pairs (the same question, two answers):")
        for pair in stats["top_conflicts"][:10]:
            a, b = pair["a"], pair["b"]
            lines.append(f"    {_num(pair['interference'])}  {_fact(a)}")
            lines.append(f"          {_fact(b)}")
    return "\n".join(lines)


def histogram(bins: list[dict], width: int = 40, rows: int = 10) -> list[str]:
    """Equal-width bins as text bars, neighbours merged down to at most ``rows`` lines."""
    if not bins:
        return []
    step = -(-len(bins) // rows)
    bins = [{"low": group[0]["low"], "high": group[-1]["high"], "count": sum(b["count"] for b in group)}
            for group in (bins[i:i + step] for i in range(0, len(bins), step))]
    top = max(b["count"] for b in bins) or 1
    return [f"    {_num(b['low'])}–{_num(b['high'])} {'█' * round(width * b['count'] / top):<{width}} {b['count']}"
            for b in bins]


def _fact(side: dict) -> str:
    prompt = side.get("prompt") or "?"
    return f"{side['fact_id']}: {prompt!r} -> {side.get('target')!r}"


def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"
