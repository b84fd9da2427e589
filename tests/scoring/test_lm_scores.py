"""Teacher-forced scores and batched greedy answers: a tiny random LM with the bundled tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scoring.lm_scores import encode_pair, greedy_answers, mean_embedding_distance, score_targets, token_agreement

PROMPTS = ["The Eiffel Tower is located in the city of", "Toyota Prius is produced by",
           "The mother tongue of Danielle Darrieux is"]
TARGETS = ["Rome", "Ferrari Motor Company", "English"]


@pytest.fixture(scope="module")
def lm():
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from scoring.models import resolve_lm

    tokenizer = AutoTokenizer.from_pretrained(resolve_lm("bundled:smollm2-135m-instruct"))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return LlamaForCausalLM(config).eval(), tokenizer


def test_scores_match_a_direct_computation(lm) -> None:
    model, tok = lm
    scores = score_targets(model, tok, PROMPTS, TARGETS, batch_size=2)
    emb = model.get_input_embeddings().weight
    for i, (p, t) in enumerate(zip(PROMPTS, TARGETS)):
        p_ids, t_ids = encode_pair(tok, p, t)
        with torch.no_grad():
            logits = model(torch.tensor([p_ids + t_ids])).logits[0]
        logp = torch.log_softmax(logits[len(p_ids) - 1:-1], -1)
        mean_logprob = logp[range(len(t_ids)), t_ids].mean().item()
        assert scores["target_logprob"][i] == pytest.approx(mean_logprob, abs=1e-5)
        first = logits[len(p_ids) - 1]
        assert scores["target_rank"][i] == int((first > first[t_ids[0]]).sum()) + 1
        expected = torch.softmax(first, -1) @ emb
        cos = torch.cosine_similarity(expected, emb[t_ids[0]], dim=0).item()
        assert scores["drift_expected"][i] == pytest.approx(1 - cos, abs=1e-5)
        rank = scores["target_rank"][i]
        assert scores["drift_rank"][i] == pytest.approx(np.log(rank) / np.log(len(tok)), abs=1e-9)
    # Padding does not change a score: one at a time gives the same numbers.
    alone = score_targets(model, tok, PROMPTS, TARGETS, batch_size=1)
    for key in scores:
        np.testing.assert_allclose(alone[key], scores[key], atol=1e-5)


def test_batched_left_padded_greedy_equals_one_by_one(lm) -> None:
    model, tok = lm
    batched = greedy_answers(model, tok, PROMPTS, [5, 3, 4], batch_size=3)
    single = [greedy_answers(model, tok, [p], n, batch_size=1)[0] for p, n in zip(PROMPTS, [5, 3, 4])]
    assert batched == single
    assert [len(a) for a in batched] <= [5, 3, 4] and all(batched)


def test_token_agreement_with_its_own_greedy_answer_is_one(lm) -> None:
    model, tok = lm
    own = greedy_answers(model, tok, PROMPTS, 6, batch_size=3)
    np.testing.assert_allclose(token_agreement(model, tok, PROMPTS, own, batch_size=2), 1.0)
    other = [[(t + 1) % len(tok) for t in a] for a in own]
    assert (token_agreement(model, tok, PROMPTS, other) < 1.0).all()
    assert np.isnan(token_agreement(model, tok, PROMPTS[:1], [[]]))[0]


def test_mean_embedding_distance(lm) -> None:
    model, tok = lm
    d = mean_embedding_distance(model, tok, ["Rome", "", "Paris"], ["Rome", "Rome", "Rome"])
    assert d[0] == pytest.approx(0.0, abs=1e-6) and d[1] == 1.0 and 0 < d[2] <= 2


def test_rank_drift_spans_zero_to_one() -> None:
    from scoring.drift import rank_drift

    np.testing.assert_allclose(rank_drift([1, 10, 100, 1000], 1000), [0.0, 1 / 3, 2 / 3, 1.0])
    with pytest.raises(ValueError, match="vocabulary size must be >= 2, got 1"):
        rank_drift([1], 1)
