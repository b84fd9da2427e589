"""Fit the ``risk`` column on knowledge-benchmark outcomes, and validate it on another sample.

    .venv/bin/python bench/risk.py --fit bench/results/knowledge-smollm2 \\
        --validate bench/results/knowledge-smollm2-heldout

For each benchmark folder (``bench/knowledge.py --out``): the step where plain LoRA has learned
40-70% of the requested facts (the snapshot closest to 55%), and per fact the share of plain's seeds
that had *not* learned it by then. A logistic regression (``scipy.optimize``; two features, so no library beyond
scipy is needed) is fitted on the ``--fit`` folder:

    risk = sigmoid(b0 + b1 * log(target_rank) + b2 * [shared_target > 0])

and its AUC for "not learned by that budget" is reported per seed, on the fit folder and on every
``--validate`` folder (a different sample, never seen by the fit), beside each feature's AUC alone.
Prints the coefficients to copy into ``scoring/risk.py`` and writes ``OUT/risk.json``.

Without ``--fit``, the coefficients shipped in ``scoring/risk.py`` are scored on the ``--validate``
folders as they are (for example on another bundled model's outcomes), and nothing is fitted:

    .venv/bin/python bench/risk.py --validate bench/results/closed-loop-gemma
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "bench"))

from knowledge import auc, mean_sd  # noqa: E402

from scoring.risk import COEFFICIENTS, features  # noqa: E402


def outcomes(folder: Path) -> tuple[np.ndarray, np.ndarray, int, float]:
    """(features [facts, 3], not-learned per seed [seeds, facts], step, plain's mean efficacy there).

    The step is the snapshot (every 10 steps, ``runs/plain-<seed>.curve.json``) where plain's mean
    efficacy is in 40-70% and closest to 55%; the budgets' full evaluations when there is no curve.
    """
    from trainer.data import read_scored

    facts = read_scored(folder / "dataset").to_pylist()
    seeds = sorted(int(p.stem.split("-")[1]) for p in folder.glob("runs/plain-*.json")
                   if p.stem.split("-")[1].isdigit())
    if not seeds:
        raise SystemExit(f"{folder} has no plain runs (runs/plain-<seed>.json)")
    per_step: dict[int, list[list[float]]] = {}
    for seed in seeds:
        curve = folder / "runs" / f"plain-{seed}.curve.json"
        if curve.is_file():
            steps = json.loads(curve.read_text())["efficacy"]
        else:
            steps = {b: v["efficacy"] for b, v in
                     json.loads((folder / "runs" / f"plain-{seed}.json").read_text())["steps"].items()}
        for step, eff in steps.items():
            per_step.setdefault(int(step), []).append([float(e) for e in eff])
    rates = {s: float(np.mean(v)) for s, v in per_step.items() if len(v) == len(seeds)}
    inside = [s for s in rates if 0.4 <= rates[s] <= 0.7]
    if not inside:
        raise SystemExit(f"{folder}: plain is never at 40-70% at its evaluated steps ({rates})")
    step = min(inside, key=lambda s: abs(rates[s] - 0.55))
    x = np.asarray([features(f["target_rank"], f["shared_target"]) for f in facts])
    y = 1.0 - np.asarray(per_step[step])
    return x, y, step, rates[step]


def fit(x: np.ndarray, y: np.ndarray, l2: float = 1e-3) -> np.ndarray:
    """Logistic regression on soft labels (the share of seeds not learning each fact)."""
    from scipy.optimize import minimize
    from scipy.special import expit

    target = y.mean(0)

    def loss(b: np.ndarray) -> tuple[float, np.ndarray]:
        p = np.clip(expit(x @ b), 1e-9, 1 - 1e-9)
        value = -np.mean(target * np.log(p) + (1 - target) * np.log(1 - p)) + l2 * np.sum(b[1:] ** 2)
        grad = x.T @ (p - target) / len(target) + 2 * l2 * np.r_[0.0, b[1:]]
        return value, grad

    return minimize(loss, np.zeros(x.shape[1]), jac=True, method="L-BFGS-B").x


def report(name: str, x: np.ndarray, y: np.ndarray, b: np.ndarray) -> dict:
    from scipy.special import expit

    risk = expit(x @ b)
    return {"folder": name, "facts": int(x.shape[0]), "seeds": int(y.shape[0]),
            "risk_auc": mean_sd([auc(risk, row) for row in y]),
            "log_target_rank_auc": mean_sd([auc(x[:, 1], row) for row in y]),
            "unique_target_auc": mean_sd([auc(-x[:, 2], row) for row in y])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fit", default=None,
                   help="bench/knowledge.py output folder to fit on (default: score scoring/risk.py's "
                        "shipped coefficients, fitting nothing)")
    p.add_argument("--validate", nargs="*", default=[], help="other output folders (other samples)")
    p.add_argument("--out", default=None,
                   help="where risk.json goes (default: the --fit folder, else the first --validate one)")
    args = p.parse_args(argv)
    if args.fit is None and not args.validate:
        p.error("give --fit FOLDER, or --validate FOLDER ... to score the shipped coefficients")
    if args.fit is None:
        b = np.asarray([COEFFICIENTS["intercept"], COEFFICIENTS["log_target_rank"], COEFFICIENTS["shared_target"]])
        results = {"coefficients": {**COEFFICIENTS, "source": "scoring/risk.py (shipped)"}, "fit": None,
                   "validate": []}
    else:
        x, y, budget, rate = outcomes(Path(args.fit))
        b = fit(x, y)
        results = {"coefficients": {"intercept": b[0], "log_target_rank": b[1], "shared_target": b[2]},
                   "fit": {**report(args.fit, x, y, b), "step": budget, "plain_efficacy": rate}, "validate": []}
    for folder in args.validate:
        vx, vy, vb, vr = outcomes(Path(folder))
        results["validate"].append({**report(folder, vx, vy, b), "step": vb, "plain_efficacy": vr})
    out = Path(args.out or args.fit or args.validate[0]) / "risk.json"
    out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
