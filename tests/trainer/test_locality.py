"""The locality term inside the real HF Trainer (tiny random Llama + peft LoRA): replay rows share the
facts' forward pass without changing the facts' logits, the base distribution comes from the same
model with its adapter disabled, and training with the term keeps the replay prompts closer to base."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import TrainingArguments

from test_weighted_trainer import EXAMPLES, tiny_model
from trainer.data import ExampleDataset, WeightedCollator
from trainer.replay import ReplaySet, kl_to_base
from trainer.weighted_trainer import WeightedTrainer

REPLAY = ReplaySet(ids=[[21, 22, 23, 24], [25, 26, 27], [28, 29, 30, 31, 3, 4, 5]],
                   positions=[[1, 2], [1], [3, 4, 5]], source="test", order=[0, 1, 2])


def lora_model() -> torch.nn.Module:
    model = get_peft_model(tiny_model(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                    task_type="CAUSAL_LM"))
    model.train()
    return model


def make_trainer(tmp: Path, model: torch.nn.Module, locality_weight: float, steps: int = 1) -> WeightedTrainer:
    args = TrainingArguments(output_dir=str(tmp), per_device_train_batch_size=2, max_steps=steps,
                             learning_rate=0.05, lr_scheduler_type="constant", save_strategy="no",
                             report_to="none", remove_unused_columns=False, disable_tqdm=True,
                             dataloader_pin_memory=False, seed=0, logging_steps=10**6)
    return WeightedTrainer(model=model, args=args, train_dataset=ExampleDataset(EXAMPLES),
                           data_collator=WeightedCollator(0), replay=REPLAY if locality_weight else None,
                           locality_weight=locality_weight, replay_batch_size=2)


def replay_kl(model: torch.nn.Module) -> float:
    batch = REPLAY.batch([0, 1, 2], pad_id=0)
    with torch.no_grad():
        adapted = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        with model.disable_adapter():
            base = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return kl_to_base(adapted, base, batch["kl_mask"]).item()


def test_replay_rows_leave_the_fact_loss_as_it_was_and_cost_nothing_at_init(tmp_path: Path) -> None:
    model = lora_model()  # LoRA's B starts at 0: the adapted model is the base model
    batch = WeightedCollator(0)([ExampleDataset(EXAMPLES)[i] for i in range(4)])
    batch.pop("fact_index")
    # Training mode (the replay rows ride only on training passes); no dropout anywhere, so the two
    # losses compare exactly.
    with torch.no_grad():
        without = make_trainer(tmp_path / "a", model, 0.0).compute_loss(model, batch)
        with_replay = make_trainer(tmp_path / "b", model, 1.0).compute_loss(model, batch)
    torch.testing.assert_close(with_replay, without, rtol=1e-5, atol=1e-6)


def test_training_with_the_locality_term_keeps_replay_prompts_closer_to_base(tmp_path: Path) -> None:
    kls = {}
    for weight in (0.0, 5.0):
        model = lora_model()
        make_trainer(tmp_path / str(weight), model, weight, steps=30).train()
        kls[weight] = replay_kl(model)
    assert kls[0.0] > 0.0
    assert kls[5.0] < 0.5 * kls[0.0], kls
