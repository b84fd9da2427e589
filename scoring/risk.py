"""``risk``: how likely a fact is *not* to be learned by plain LoRA at a budget where most facts are,
said before training from the pre-training signals the knowledge benchmark found informative.

    risk = sigmoid(b0 + b1 * log(target_rank) + b2 * [shared_target > 0])

A target far down the base model's ranking is harder (``target_rank``); a target other facts of the
dataset share is learned much earlier (``shared_target``, the other direction). The coefficients are
fitted by ``bench/risk.py`` on benchmark outcomes of the bundled models and validated on a different
sample; BENCHMARKS.md has the command, the fit and the AUCs. ``AT_RISK`` is the cut ``beacon run``
and the stats count as "at risk".
"""

from __future__ import annotations

import math

# Fitted by bench/risk.py on plain LoRA's outcomes at step 70 (54% learned) of the SmolLM2 knowledge
# benchmark (128 facts of counterfact-val.json, 3 seeds); validated on counterfact-train.json samples.
# See BENCHMARKS.md, "Which facts are at risk". Not tuned by hand.
COEFFICIENTS = {"intercept": -0.1702, "log_target_rank": 0.1049, "shared_target": -1.3465}
AT_RISK = 0.5


def features(target_rank: int, shared_target: int) -> list[float]:
    """[1, log(target_rank), shared_target > 0]: the model's inputs (the intercept first)."""
    return [1.0, math.log(max(int(target_rank), 1)), 1.0 if int(shared_target) > 0 else 0.0]


def risk(target_rank: int, shared_target: int) -> float:
    """P(not learned at the mid budget), between 0 and 1."""
    _, log_rank, shared = features(target_rank, shared_target)
    z = (COEFFICIENTS["intercept"] + COEFFICIENTS["log_target_rank"] * log_rank
         + COEFFICIENTS["shared_target"] * shared)
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
