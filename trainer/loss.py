"""The weighted loss: each fact's loss counts in proportion to its curation weight.

    loss = sum_i w_i * l_i / W

``l_i`` is fact i's mean cross-entropy over its target tokens (``reduction="sample"``), or every target
token counts with its fact's weight (``reduction="token"``: sum_i w_i * sum_t l_it / sum_i w_i * n_i, which
with equal weights is exactly the plain Hugging Face causal-LM loss). ``W`` is the normaliser over the
whole optimizer step: with gradient accumulation (and several processes) the caller passes the sum of
``loss_normaliser`` over every micro-batch, so two micro-batches of 2 give the gradient of one batch of 4.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100


def weighted_loss(logits: "torch.Tensor", labels: "torch.Tensor", weights: "torch.Tensor", *,
                  normaliser: "torch.Tensor | float | None" = None,
                  reduction: Literal["sample", "token"] = "sample",
                  semantic_weight: float = 0.0,
                  embeddings: "torch.Tensor | None" = None) -> "torch.Tensor":
    """Weighted causal-LM loss over the target tokens of a batch.

    Args:
        logits: ``[batch, seq, vocab]`` model outputs; position t predicts ``labels[:, t + 1]``.
        labels: ``[batch, seq]`` token ids, ``-100`` where no loss is taken (prompt, padding).
        weights: ``[batch]`` non-negative loss weights; a weight of 0 removes the fact's gradient.
        normaliser: W; default ``loss_normaliser(labels, weights, reduction)`` of this batch alone.
        reduction: "sample" (mean per fact, then weighted) or "token" (weighted token mean).
        semantic_weight: adds this times 1 - cos(sum_v p(v) E[v], E[label]) at every target position.
        embeddings: ``[vocab, hidden]`` the LM's input embedding matrix, required by the semantic term.
    """
    import torch
    import torch.nn.functional as F

    # Shift the labels, not the logits: no copy of the [batch, seq, vocab] tensor (as transformers does).
    shifted = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
    mask = shifted != IGNORE_INDEX
    token_loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), shifted.reshape(-1),
                                 ignore_index=IGNORE_INDEX, reduction="none").view(shifted.shape)
    if semantic_weight:
        if embeddings is None:
            raise ValueError("semantic_weight > 0 needs the LM's input embedding matrix (embeddings=)")
        token_loss = token_loss + semantic_weight * _semantic_distance(logits, shifted, mask, embeddings)
    weights = weights.to(token_loss.dtype)
    per_fact = (token_loss * mask).sum(1)
    if reduction == "sample":
        per_fact = per_fact / mask.sum(1).clamp(min=1)
    elif reduction != "token":
        raise ValueError(f"reduction must be 'sample' or 'token', got {reduction!r}")
    if normaliser is None:
        normaliser = loss_normaliser(labels, weights, reduction)
    if not torch.is_tensor(normaliser):
        normaliser = torch.tensor(float(normaliser))
    # All-zero weights give a zero loss (with a graph), not NaN.
    return (weights * per_fact).sum() / normaliser.to(per_fact.device, per_fact.dtype).clamp(min=1e-12)


def loss_normaliser(labels: "torch.Tensor", weights: "torch.Tensor",
                    reduction: Literal["sample", "token"] = "sample") -> "torch.Tensor":
    """W of one micro-batch: sum of weights ("sample") or of weight x target tokens ("token")."""
    weights = weights.float()
    if reduction == "sample":
        return weights.sum()
    n_tokens = (labels[:, 1:] != IGNORE_INDEX).sum(1).to(weights.dtype)
    return (weights * n_tokens).sum()


def _semantic_distance(logits: "torch.Tensor", shifted: "torch.Tensor", mask: "torch.Tensor",
                       embeddings: "torch.Tensor") -> "torch.Tensor":
    """1 - cos(expected next-token embedding, label embedding) at target positions, 0 elsewhere."""
    import torch

    out = torch.zeros(shifted.shape, dtype=torch.float32, device=logits.device)
    if not mask.any():
        return out
    emb = embeddings.detach().float()  # a target to move towards, not a parameter to move
    probs = torch.softmax(logits[mask].float(), dim=-1)
    expected = probs @ emb
    out[mask] = 1.0 - torch.cosine_similarity(expected, emb[shifted[mask]], dim=-1)
    return out
