"""``beacon report DIR``: one self-contained HTML file about a curated dataset or a `beacon run` folder.

Everything is inside the file (styles, charts as inline SVG, a few lines of script for the table's
filter), so it opens offline and can be mailed around. The numbers come from the functions the CLI and
the API use: ``service.datasets.build_stats`` for the dataset, ``metrics.json`` and ``eval.parquet``
for the run, ``trace.parquet`` for the learning curve. Charts are hand-drawn SVG rectangles and
polylines: a charting library would mean a vendored script of 100+ KB in every report for two chart
kinds.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.datasets import build_stats, local_dataset
from service.html import templates

REPORT_FILE = "report.html"
MAX_FACT_ROWS = 2000  # beyond that the file gets heavy; the summary says how to query the rest
MAX_REJECTED_ROWS = 200


@dataclass(frozen=True)
class Report:
    path: Path
    facts: int
    shown: int


def write_report(folder: str | Path, out: str | Path | None = None) -> Report:
    """Writes the report of the dataset or run in ``folder`` to ``out`` (default ``folder/report.html``).

    Raises:
        FileNotFoundError: ``folder`` holds no curated dataset. ValueError: a damaged manifest.
    """
    local = local_dataset(folder)
    manifest = local.manifest
    stats = build_stats(local.files, manifest, threads=2)
    run = _run_part(local.run_dir, local.files.scored) if local.run_dir is not None else None
    rejected = _rejected(local.files.rejected)
    page = templates().get_template("report.html").render(
        manifest=manifest, stats=stats, run=run, rejected=rejected, folder=str(folder),
        drift_chart=histogram_svg(stats["drift"]["histogram"], f"drift ({stats['drift']['definition']})"),
        interference_chart=histogram_svg(stats["interference"]["histogram"], "interference"),
        risk_chart=histogram_svg(stats["risk"]["histogram"], "risk") if stats.get("risk") else None,
        max_rows=MAX_FACT_ROWS)
    path = Path(out) if out is not None else Path(folder) / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    facts = run["facts_total"] if run else 0
    return Report(path=path, facts=facts, shown=len(run["facts"]) if run else 0)


def _run_part(run_dir: Path, scored_files: list[Path]) -> dict[str, Any] | None:
    """What the report shows of a run: its metrics, its learning curve, and every fact's outcome."""
    import pyarrow.parquet as pq

    metrics_path, eval_path = run_dir / "metrics.json", run_dir / "eval.parquet"
    if not metrics_path.is_file() or not eval_path.is_file():
        return None
    metrics = json.loads(metrics_path.read_text())
    scored = {r["fact_id"]: r for f in scored_files for r in pq.read_table(f, columns=[
        "fact_id", "prompt", "prediction"]).to_pylist()}
    facts = []
    for row in pq.read_table(eval_path).to_pylist():
        source = scored.get(row["fact_id"], {})
        facts.append({**row, "prompt": source.get("prompt", ""), "prediction": source.get("prediction", ""),
                      "state": _state(row)})
    order = {"not learned": 0, "pushed away": 1, "filtered": 2, "learned": 3, "known before": 4}
    facts.sort(key=lambda f: (order[f["state"]], f["fact_id"]))
    curve = curve_points(run_dir / "trace.parquet", metrics["kept"]["n"])
    groups = [("kept (trained)", metrics["kept"]), ("filtered (untrained)", metrics["filtered"])]
    groups += [(f"kept, drift {q}", g) for q, g in metrics["by_drift_quartile"].items()]
    return {"metrics": metrics, "groups": groups, "facts": facts[:MAX_FACT_ROWS], "facts_total": len(facts),
            "states": {s: sum(f["state"] == s for f in facts) for s in order},
            "curve_chart": curve_svg(curve) if curve else None}


def _state(row: dict[str, Any]) -> str:
    if not row["kept"]:
        return "filtered"
    if row["efficacy"]:
        return "known before" if row["efficacy_before"] else "learned"
    return "pushed away" if row["pushed_away"] else "not learned"


def curve_points(trace_path: Path, trained: int | None) -> list[tuple[int, float, float]]:
    """(step, share of the ``trained`` facts whose latest visit had them learned, mean loss of the step),
    from a run's ``trace.parquet`` (``trained`` None: the facts the trace has seen so far)."""
    import pyarrow.parquet as pq

    if not trace_path.is_file():
        return []
    rows = sorted(pq.read_table(trace_path, columns=["step", "fact_id", "loss", "learned"]).to_pylist(),
                  key=lambda r: r["step"])
    trained = trained or len({r["fact_id"] for r in rows})
    if not trained:
        return []
    state: dict[str, bool] = {}
    points, losses, step = [], [], None
    for r in rows + [{"step": None}]:
        if r["step"] != step and step is not None:
            points.append((step, sum(state.values()) / trained, sum(losses) / len(losses)))
            losses = []
        if r["step"] is None:
            break
        step = r["step"]
        state[r["fact_id"]] = bool(r["learned"])
        losses.append(r["loss"])
    return points


def _rejected(files: list[Path]) -> dict[str, Any]:
    import pyarrow.parquet as pq

    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    rows.sort(key=lambda r: (r["source"], r["position"]))
    return {"total": len(rows), "rows": rows[:MAX_REJECTED_ROWS]}


# --- charts ---------------------------------------------------------------------------------------

def histogram_svg(bins: list[dict], label: str, width: int = 560, height: int = 160) -> str:
    """Equal-width bins as an SVG bar chart (each bar's count in its tooltip)."""
    if not bins:
        return ""
    top = max(b["count"] for b in bins) or 1
    bar = width / len(bins)
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height + 26}" role="img" '
             f'aria-label="histogram of {html.escape(label)}">']
    for i, b in enumerate(bins):
        h = (height - 4) * b["count"] / top
        parts.append(f'<rect x="{i * bar + 1:.1f}" y="{height - h:.1f}" width="{bar - 2:.1f}" height="{h:.1f}">'
                     f'<title>{b["low"]:.3g} – {b["high"]:.3g}: {b["count"]}</title></rect>')
    parts.append(f'<text x="0" y="{height + 20}">{bins[0]["low"]:.3g}</text>'
                 f'<text x="{width}" y="{height + 20}" text-anchor="end">{bins[-1]["high"]:.3g}</text>'
                 f'<text x="{width / 2}" y="{height + 20}" text-anchor="middle">{html.escape(label)}</text></svg>')
    return "".join(parts)


def curve_svg(points: list[tuple[int, float, float]], width: int = 560, height: int = 180) -> str:
    """Learned fraction (0–1, solid) and loss (scaled to its maximum, dashed) against the step."""
    last = points[-1][0] or 1
    top_loss = max(p[2] for p in points) or 1.0

    def line(values: list[tuple[float, float]], cls: str) -> str:
        coords = " ".join(f"{width * s / last:.1f},{height - (height - 4) * v:.1f}" for s, v in values)
        return f'<polyline class="{cls}" points="{coords}" />'

    learned = line([(s, f) for s, f, _ in points], "learned")
    loss = line([(s, l / top_loss) for s, _, l in points], "loss")
    return (f'<svg class="chart" viewBox="0 0 {width} {height + 26}" role="img" '
            f'aria-label="learning curve: learned fraction and loss by step">{learned}{loss}'
            f'<text x="0" y="{height + 20}">step 0</text>'
            f'<text x="{width}" y="{height + 20}" text-anchor="end">step {last}</text></svg>')
