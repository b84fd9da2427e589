"""One setup for every training run: model, LoRA, examples, collator and the weighted ``Trainer``.

``beacon train`` calls it, and so do the benchmarks (``bench/knowledge.py``, ``bench/train.py``), so a
benchmark arm trains exactly as the product does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.config import TrainConfig


@dataclass
class TrainingSetup:
    model: Any  # the peft model
    tokenizer: Any
    examples: list  # trainer.data.Example, in the dataset's order
    trainer: Any  # trainer.weighted_trainer.WeightedTrainer


def build_trainer(config: TrainConfig, rows: list[dict[str, Any]], output_dir: Path, *,
                  base: tuple[Any, Any] | None = None, callbacks: list | None = None,
                  trace: Any = None, **training_args: Any) -> TrainingSetup:
    """A ready-to-train setup for ``rows`` (fact_id, prompt, target, weight) under ``config``.

    Args:
        config: the run's config, with ``model`` and ``chat_template`` resolved.
        base: (model, tokenizer) already loaded (a benchmark reuses one); default: load ``config.model``.
        trace: a ``trainer.trace.FactTrace`` the training forward passes append to; None keeps none.
        training_args: ``TrainingArguments`` overrides (e.g. ``save_strategy="no"``).

    Raises:
        ValueError: a fact does not fit ``max_seq_len``, or a precision needs a GPU this machine lacks.
    """
    from transformers import set_seed

    from scoring.models import load_lm
    from trainer.data import ExampleDataset, WeightedCollator, build_examples
    from trainer.model_io import with_lora
    from trainer.weighted_trainer import WeightedTrainer

    if config.model is None or config.chat_template is None:
        raise ValueError("resolve model and chat_template from the dataset before building the trainer")
    set_seed(config.seed)  # the LoRA init below is the run's first random draw
    model, tokenizer = base if base is not None else load_lm(config.model)[:2]
    model = with_lora(model, config)
    examples = build_examples(rows, tokenizer, chat_template=config.chat_template, add_eos=config.add_eos,
                              max_seq_len=config.max_seq_len, use_weights=config.use_weights)
    trainer = WeightedTrainer(
        model=model, args=training_arguments(config, output_dir, **training_args),
        train_dataset=ExampleDataset(examples), data_collator=WeightedCollator(tokenizer.pad_token_id),
        callbacks=list(callbacks or []), loss_reduction=config.loss_reduction,
        semantic_weight=config.semantic_weight, trace=trace, fact_ids=[e.fact_id for e in examples],
        last_is_eos=config.add_eos)
    return TrainingSetup(model=model, tokenizer=tokenizer, examples=examples, trainer=trainer)


def training_arguments(config: TrainConfig, output_dir: Path, **overrides: Any) -> Any:
    """TrainingArguments for ``config`` (``overrides`` win)."""
    import torch
    from transformers import TrainingArguments

    if config.precision != "fp32" and not torch.cuda.is_available():
        raise ValueError(f"precision={config.precision!r} needs a GPU; use precision: fp32 on CPU")
    kwargs = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        num_train_epochs=config.epochs or 1.0,
        max_steps=config.max_steps or -1,
        seed=config.seed,
        bf16=config.precision == "bf16",
        fp16=config.precision == "fp16",
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        logging_steps=config.logging_steps,
        report_to="none",
        remove_unused_columns=False,  # keep 'weight'
        disable_tqdm=not config.progress,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    return TrainingArguments(**{**kwargs, **overrides})
