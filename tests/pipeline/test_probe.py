"""The probe's fused pass gives what greedy decoding and teacher-forced scoring give separately."""

import numpy as np
import pytest

from scoring.models import resolve_lm
from scoring.lm_scores import greedy_answers, probe, score_targets

pytestmark = pytest.mark.slow

PROMPTS = ["The capital of France is", "BBC One, by", "The mother tongue of Danielle Darrieux is",
           "Toko Yasuda, the", "Hi", "Miles Davis played the"]
TARGETS = ["Paris", "Sega", "English", "piano", "New York City of dreams", "violin"]


@pytest.fixture(scope="module")
def lm():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_lm("bundled:smollm2-135m-instruct")
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("batch_size", [4, 16])
def test_fused_probe_equals_separate_greedy_and_scoring(lm, batch_size):
    model, tokenizer = lm
    fused = probe(model, tokenizer, PROMPTS, TARGETS, 8, batch_size)
    assert fused["answers"] == greedy_answers(model, tokenizer, PROMPTS, 8, batch_size)
    separate = score_targets(model, tokenizer, PROMPTS, TARGETS, batch_size)
    for key in ("target_logprob", "drift_expected"):
        np.testing.assert_allclose(fused[key], separate[key], atol=1e-4)
    np.testing.assert_array_equal(fused["target_rank"], separate["target_rank"])
    np.testing.assert_array_equal(fused["drift_rank"], separate["drift_rank"])
    assert fused["target_rank"][0] == 1  # the model already says "Paris"
    assert fused["drift_rank"][0] == 0.0
