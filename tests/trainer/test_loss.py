"""The weighted loss as a pure function, on random logits (CPU, milliseconds)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainer.loss import IGNORE_INDEX, loss_normaliser, weighted_loss

VOCAB = 11


def batch(n: int = 4, seq: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits and labels with a masked prompt and right padding of varying length."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, seq, VOCAB, generator=g)
    labels = torch.randint(0, VOCAB, (n, seq), generator=g)
    for i in range(n):
        prompt = 2 + i % 2
        labels[i, :prompt] = IGNORE_INDEX  # prompt
        labels[i, seq - i % 3:] = IGNORE_INDEX  # padding: targets of different lengths
    return logits, labels


def per_fact_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Reference: each fact's mean CE over its target tokens, one fact at a time."""
    out = []
    for lg, lb in zip(logits, labels):
        out.append(F.cross_entropy(lg[:-1], lb[1:], ignore_index=IGNORE_INDEX))
    return torch.stack(out)


def test_equal_weights_reproduce_the_plain_loss() -> None:
    logits, labels = batch()
    for w in (1.0, 3.5):
        weights = torch.full((4,), w)
        sample = weighted_loss(logits, labels, weights, reduction="sample")
        torch.testing.assert_close(sample, per_fact_ce(logits, labels).mean())
        # "token" with equal weights is exactly the plain Hugging Face causal-LM loss (a token mean).
        token = weighted_loss(logits, labels, weights, reduction="token")
        plain = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1),
                                ignore_index=IGNORE_INDEX)
        torch.testing.assert_close(token, plain)


def test_weights_are_a_weighted_mean_of_fact_losses() -> None:
    logits, labels = batch()
    weights = torch.tensor([0.5, 2.0, 1.0, 0.5])
    expected = (weights * per_fact_ce(logits, labels)).sum() / weights.sum()
    torch.testing.assert_close(weighted_loss(logits, labels, weights), expected)


@pytest.mark.parametrize("reduction", ["sample", "token"])
def test_a_zero_weight_removes_the_facts_gradient(reduction: str) -> None:
    logits, labels = batch()
    logits.requires_grad_(True)
    weights = torch.tensor([1.0, 0.0, 2.0, 1.0])
    weighted_loss(logits, labels, weights, reduction=reduction).backward()
    assert torch.count_nonzero(logits.grad[1]) == 0
    assert torch.count_nonzero(logits.grad[0]) > 0
    # ... and the loss is the loss of the batch without that fact.
    keep = torch.tensor([0, 2, 3])
    with torch.no_grad():
        without = weighted_loss(logits[keep], labels[keep], weights[keep], reduction=reduction)
        torch.testing.assert_close(weighted_loss(logits, labels, weights, reduction=reduction), without)


@pytest.mark.parametrize("reduction", ["sample", "token"])
def test_accumulated_micro_batches_give_the_full_batch_gradient(reduction: str) -> None:
    logits, labels = batch()
    weights = torch.tensor([0.3, 1.7, 1.0, 2.0])
    full = logits.clone().requires_grad_(True)
    weighted_loss(full, labels, weights, reduction=reduction).backward()

    # Two micro-batches of 2, each normalised by the whole step's W, gradients summed (accumulation).
    micro = logits.clone().requires_grad_(True)
    total = sum(loss_normaliser(labels[s], weights[s], reduction) for s in (slice(0, 2), slice(2, 4)))
    for s in (slice(0, 2), slice(2, 4)):
        weighted_loss(micro[s], labels[s], weights[s], normaliser=total, reduction=reduction).backward()
    torch.testing.assert_close(micro.grad, full.grad)

    # Normalising each micro-batch by its own W (the bug) would not.
    wrong = logits.clone().requires_grad_(True)
    for s in (slice(0, 2), slice(2, 4)):
        (weighted_loss(wrong[s], labels[s], weights[s], reduction=reduction) / 2).backward()
    assert not torch.allclose(wrong.grad, full.grad)


def test_all_zero_weights_give_zero_not_nan() -> None:
    logits, labels = batch()
    logits.requires_grad_(True)
    loss = weighted_loss(logits, labels, torch.zeros(4))
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logits.grad) == 0


def test_semantic_term_is_zero_at_the_target_embedding_and_needs_embeddings() -> None:
    logits, labels = batch()
    emb = torch.randn(VOCAB, 5)
    weights = torch.ones(4)
    # Logits that put all mass on the label: expected embedding = label embedding, distance 0.
    sure = torch.full_like(logits, -1e4)
    shifted = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
    for i, j in zip(*torch.nonzero(shifted != IGNORE_INDEX, as_tuple=True)):
        sure[i, j, shifted[i, j]] = 1e4
    base = weighted_loss(sure, labels, weights)
    with_term = weighted_loss(sure, labels, weights, semantic_weight=0.5, embeddings=emb)
    torch.testing.assert_close(with_term, base)
    # On random logits it adds a positive amount.
    assert weighted_loss(logits, labels, weights, semantic_weight=0.5, embeddings=emb) > \
        weighted_loss(logits, labels, weights)
    with pytest.raises(ValueError, match="embeddings"):
        weighted_loss(logits, labels, weights, semantic_weight=0.5)


def test_semantic_term_does_not_move_the_embeddings() -> None:
    logits, labels = batch()
    emb = torch.randn(VOCAB, 5, requires_grad=True)
    logits.requires_grad_(True)
    weighted_loss(logits, labels, torch.ones(4), semantic_weight=1.0, embeddings=emb).backward()
    assert emb.grad is None and logits.grad is not None
