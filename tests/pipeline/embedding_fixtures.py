"""Constructed prompt embeddings for the interference tests: unit vectors with pairs planted at chosen cosines."""

from __future__ import annotations

import numpy as np

DIM = 384


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def at_cosine(rng, v: np.ndarray, c: float) -> np.ndarray:
    """A unit vector at exactly cosine c to unit vector v."""
    u = rng.standard_normal(v.shape[0])
    u -= (u @ v) * v
    return unit(c * v + np.sqrt(1 - c * c) * unit(u))


def planted(n_random: int, n_pairs: int, seed: int = 1, low: float = 0.90) -> np.ndarray:
    """Random unit vectors plus planted pairs at cosines spread over low-0.99, all targets distinct."""
    rng = np.random.default_rng(seed)
    emb = unit(rng.standard_normal((n_random + 2 * n_pairs, DIM)))
    for k, c in enumerate(np.linspace(low, 0.99, n_pairs)):
        emb[n_random + 2 * k + 1] = at_cosine(rng, emb[n_random + 2 * k], c)
    return emb
