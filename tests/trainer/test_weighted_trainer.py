"""The weights survive the collator, batching and accumulation of the real HF Trainer (tiny random model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

from trainer.data import IGNORE_INDEX, Example, ExampleDataset, WeightedCollator
from trainer.weighted_trainer import WeightedTrainer

EXAMPLES = [  # prompt tokens masked, targets of different lengths, unequal weights
    Example("a", [3, 4, 5, 6, 7], [IGNORE_INDEX] * 3 + [6, 7], 0.5),
    Example("b", [8, 9, 10, 11], [IGNORE_INDEX] * 2 + [10, 11], 1.5),
    Example("c", [12, 13, 14, 15, 16, 17], [IGNORE_INDEX] * 3 + [15, 16, 17], 1.0),
    Example("d", [18, 19, 20], [IGNORE_INDEX] * 2 + [20], 1.0),
]


def tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                         pad_token_id=0)
    return LlamaForCausalLM(config)


def one_step(tmp: Path, examples: list[Example], batch_size: int, accumulation: int,
             reduction: str = "sample") -> dict[str, torch.Tensor]:
    """Parameters after one SGD step (no clipping, so gradients compare exactly)."""
    model = tiny_model()
    args = TrainingArguments(output_dir=str(tmp), per_device_train_batch_size=batch_size,
                             gradient_accumulation_steps=accumulation, max_steps=1, learning_rate=0.5,
                             optim="sgd", max_grad_norm=0.0, lr_scheduler_type="constant",
                             save_strategy="no", report_to="none", remove_unused_columns=False,
                             disable_tqdm=True, dataloader_pin_memory=False, seed=0)
    trainer = WeightedTrainer(model=model, args=args, train_dataset=ExampleDataset(examples),
                              data_collator=WeightedCollator(0), loss_reduction=reduction)
    trainer.train()
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def assert_same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_collated_batches_keep_the_weights(tmp_path: Path) -> None:
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, report_to="none",
                             remove_unused_columns=False, dataloader_pin_memory=False)
    trainer = WeightedTrainer(model=tiny_model(), args=args, train_dataset=ExampleDataset(EXAMPLES),
                              data_collator=WeightedCollator(0))
    weights = sorted(w for b in trainer.get_train_dataloader() for w in b["weight"].tolist())
    assert weights == sorted(e.weight for e in EXAMPLES)


def test_column_pruning_is_refused(tmp_path: Path) -> None:
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", remove_unused_columns=True)
    with pytest.raises(ValueError, match="remove_unused_columns"):
        WeightedTrainer(model=tiny_model(), args=args, train_dataset=ExampleDataset(EXAMPLES),
                        data_collator=WeightedCollator(0))


@pytest.mark.parametrize("reduction", ["sample", "token"])
def test_two_micro_batches_accumulated_equal_one_batch_of_four(tmp_path: Path, reduction: str) -> None:
    full = one_step(tmp_path / "full", EXAMPLES, batch_size=4, accumulation=1, reduction=reduction)
    accumulated = one_step(tmp_path / "acc", EXAMPLES, batch_size=2, accumulation=2, reduction=reduction)
    assert_same_params(full, accumulated)
    before = {k: v.detach() for k, v in tiny_model().named_parameters()}
    assert any(not torch.equal(before[k], full[k]) for k in full)  # the step did move something


def test_zero_weight_facts_do_not_move_the_model(tmp_path: Path) -> None:
    only_a = [EXAMPLES[0]]
    zeroed = [EXAMPLES[0]] + [Example(e.fact_id, e.input_ids, e.labels, 0.0) for e in EXAMPLES[1:]]
    assert_same_params(one_step(tmp_path / "one", only_a, batch_size=1, accumulation=1),
                       one_step(tmp_path / "zero", zeroed, batch_size=2, accumulation=2))
