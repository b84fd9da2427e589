"""The drift definitions, each written once: how far what the model says is from the target.

- ``sentence``: 1 - cos(E(answer), E(target)), E the sentence encoder, the answer cut to the words in
  the target's slot (``answer_head``).
- ``lm``: the same on the LM's mean input-token embeddings (``lm_answer_drift``).
- ``expected``: 1 - cos(sum_v p(v|prompt) E[v], E[first target token]) in the LM's embedding space:
  smooth, blind to junk greedy answers (``expected_drift``, on the logits ``scoring.lm_scores`` computes).
- ``rank``: log(rank of the target's first token) / log(vocabulary size) (``first_token_rank``,
  ``rank_drift``).

The pipeline's ScoreDrift and ProbeModel call these before training; ``beacon eval`` calls
``drift_by_definition`` before and after it, so both sides use the same function for each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from schemas.scoring_spec import DRIFT_COLUMNS, DRIFT_DEFINITIONS

_EDGE_PUNCT = ".,;:!?\"'()[]"


def clean_answer(text: str) -> str:
    """The first line of a generated continuation, stripped."""
    return text.strip().split("\n", 1)[0].strip()


def answer_head(prediction: str, target: str) -> str:
    """The words of the answer that stand in the target's slot: as many as the target has.

    The base model rambles ("French. She is a Canadian artist who"); answer-based drift compares
    what it says *in place of the target* ("French") with the target, not a phrase with a word.
    """
    words = [w.strip(_EDGE_PUNCT) for w in prediction.split()[:max(1, len(target.split()))]]
    return " ".join(w for w in words if w)


def first_token_rank(logits: Any, target_token: int) -> int:
    """Rank of ``target_token`` in one position's logits: 1 = the model's top choice."""
    return int((logits > logits[target_token]).sum().item()) + 1


def expected_drift(logits: Any, embeddings: Any, target_token: int) -> float:
    """The ``expected`` definition: 1 - cos(sum_v p(v) E[v], E[target token]), clipped to [0, 2].

    ``logits`` is one position's (vocab,) float tensor, ``embeddings`` the LM's input embedding matrix.
    """
    import torch

    return float(expected_drifts(logits[None], embeddings, torch.tensor([target_token]))[0])


def expected_drifts(logits: Any, embeddings: Any, target_tokens: Any) -> Any:
    """``expected_drift`` of n positions at once: ``logits`` (n, vocab), ``target_tokens`` (n,).

    One matrix product over the embedding matrix for all n rows: read once, not n times (the training
    trace does this for every batch, where n matrix-vector products cost ~15% of a step).
    """
    import torch

    emb = embeddings.detach().float()
    expected = torch.softmax(logits.detach().float(), -1) @ emb
    cos = torch.cosine_similarity(expected, emb[target_tokens.to(emb.device)], dim=-1)
    return (1.0 - cos).clamp(0.0, 2.0)


def rank_drift(rank: "np.ndarray | Sequence[int]", vocab: int) -> np.ndarray:
    """log(rank) / log(vocab), clipped to [0, 1]: 0 when the target's first token is the top choice."""
    if vocab < 2:
        raise ValueError(f"vocabulary size must be >= 2, got {vocab}")
    r = np.maximum(np.asarray(rank, dtype=float), 1.0)
    return np.clip(np.log(r) / np.log(vocab), 0.0, 1.0)


def sentence_drift(answer_vectors: np.ndarray, target_vectors: np.ndarray,
                   answer_empty: "Sequence[bool] | np.ndarray") -> np.ndarray:
    """1 - cos of L2-normalised sentence embeddings (rows), clipped to [0, 2]; an empty answer is at 1."""
    a = np.atleast_2d(np.asarray(answer_vectors, dtype=np.float64))
    b = np.atleast_2d(np.asarray(target_vectors, dtype=np.float64))
    out = np.clip(1.0 - (a * b).sum(1), 0.0, 2.0)
    out[np.asarray(answer_empty, dtype=bool)] = 1.0
    return out


def encode_sentences(encoder: Any, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """L2-normalised float32 sentence embeddings, one row per text."""
    return encoder.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                          convert_to_numpy=True, show_progress_bar=False).astype(np.float32)


def lm_answer_drift(model: Any, tokenizer: Any, answers: Sequence[str], targets: Sequence[str]) -> np.ndarray:
    """1 - cos of the LM's mean input-token embeddings of the answer (in the target's slot) and target."""
    from scoring.lm_scores import mean_embedding_distance

    heads = [answer_head(answer, target) for answer, target in zip(answers, targets)]
    return mean_embedding_distance(model, tokenizer, heads, targets)


def drift_by_definition(definition: str, *, answers: Sequence[str], targets: Sequence[str],
                        scores: dict[str, np.ndarray], model: Any, tokenizer: Any,
                        encoder: str) -> np.ndarray:
    """Drift by ``definition`` for raw greedy answers, as the pipeline computes it.

    Args:
        answers: decoded greedy answers (cleaned here: first line, words in the target's slot).
        scores: ``scoring.lm_scores.score_targets`` output for the same prompts and targets.
        encoder: the sentence encoder spec (``sentence`` only).
    """
    if definition in ("expected", "rank"):  # teacher-forced scores, no decoding
        return np.asarray(scores[DRIFT_COLUMNS[definition]], dtype=float)
    answers = [clean_answer(a) for a in answers]
    if definition == "lm":
        return lm_answer_drift(model, tokenizer, answers, targets)
    if definition == "sentence":
        from scoring.models import load_encoder

        heads = [answer_head(a, t) for a, t in zip(answers, targets)]
        st = load_encoder(encoder)
        return sentence_drift(encode_sentences(st, heads), encode_sentences(st, targets),
                              [not h for h in heads])
    raise ValueError(f"unknown drift definition {definition!r}; choose one of {', '.join(DRIFT_DEFINITIONS)}")
