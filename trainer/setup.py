"""One setup for every training run: model, LoRA, examples, collator and the weighted ``Trainer``.

``beacon train`` calls it, and so do the benchmarks (``bench/knowledge.py``, ``bench/train.py``), so a
benchmark arm trains exactly as the product does.
"""

from __future__ import annotations

import math
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
    schedule: Any = None  # trainer.schedule.FactSchedule (adaptive or stop_when_learned), else None
    replay: Any = None  # trainer.replay.ReplaySet (locality_weight > 0), else None


def build_trainer(config: TrainConfig, rows: list[dict[str, Any]], output_dir: Path, *,
                  base: tuple[Any, Any] | None = None, callbacks: list | None = None,
                  trace: Any = None, facts: list[dict[str, Any]] | None = None,
                  **training_args: Any) -> TrainingSetup:
    """A ready-to-train setup for ``rows`` (fact_id, prompt, target, weight) under ``config``.

    Args:
        config: the run's config, with ``model`` and ``chat_template`` resolved.
        base: (model, tokenizer) already loaded (a benchmark reuses one); default: load ``config.model``.
        trace: a ``trainer.trace.FactTrace`` the training forward passes append to; None keeps none.
        facts: every scored fact of the dataset (kept or not): none of their prompts, paraphrases or
            locality prompts is used as a replay prompt; default ``rows``.
        training_args: ``TrainingArguments`` overrides (e.g. ``save_strategy="no"``).

    Raises:
        ValueError: a fact does not fit ``max_seq_len``, a precision needs a GPU this machine lacks, or
            the replay file is unusable (``trainer.replay.replay_prompts``).
    """
    from transformers import ProgressCallback, set_seed

    from scoring.models import load_lm
    from scoring.progress import is_terminal
    from trainer.data import ExampleDataset, WeightedCollator, build_examples
    from trainer.model_io import with_lora
    from trainer.schedule import FactSchedule, round_size, schedule_callback
    from trainer.weighted_trainer import WeightedTrainer

    if config.model is None or config.chat_template is None:
        raise ValueError("resolve model and chat_template from the dataset before building the trainer")
    replay_source = None
    if config.locality_weight:  # checked before any model is loaded: a bad file fails fast
        from trainer.replay import build_replay, replay_prompts

        replay_source = replay_prompts(facts if facts is not None else rows, rows, path=config.replay,
                                       seed=config.seed)
    set_seed(config.seed)  # the LoRA init below is the run's first random draw
    model, tokenizer = base if base is not None else load_lm(config.model)[:2]
    replay = None
    if replay_source is not None:  # the base model's own continuations: before the adapter exists
        replay = build_replay(model, tokenizer, replay_source[0], chat_template=config.chat_template,
                              source=replay_source[1], seed=config.seed, max_seq_len=config.max_seq_len)
    model = with_lora(model, config)
    examples = build_examples(rows, tokenizer, chat_template=config.chat_template, add_eos=config.add_eos,
                              max_seq_len=config.max_seq_len, use_weights=config.use_weights)
    args = training_arguments(config, output_dir, **training_args)
    schedule, callbacks = None, list(callbacks or [])
    if config.schedule == "adaptive" or config.stop_when_learned:
        schedule = FactSchedule(len(examples), stable_visits=config.stable_visits,
                                stable_prob=config.stable_prob, rehearse_rate=config.rehearse_rate,
                                seed=config.seed, round_size=round_size(
                                    len(examples), config.batch_size, config.gradient_accumulation_steps,
                                    args.world_size))
        # First: it writes its state into a checkpoint before the stamp that marks it complete.
        callbacks.insert(0, schedule_callback(schedule, stop_when_learned=config.stop_when_learned,
                                              save_dir=Path(output_dir)))
        if config.schedule == "adaptive" and config.epochs is not None and "max_steps" not in training_args:
            # Rounds are not epochs: the run keeps the optimizer steps that many epochs of plain take.
            batches = math.ceil(len(examples) / (config.batch_size * args.world_size))  # as the Trainer counts
            per_epoch = max(1, math.ceil(batches / config.gradient_accumulation_steps))
            args.max_steps = math.ceil(config.epochs * per_epoch)
    trainer = WeightedTrainer(
        model=model, args=args,
        train_dataset=ExampleDataset(examples), data_collator=WeightedCollator(tokenizer.pad_token_id),
        callbacks=callbacks, loss_reduction=config.loss_reduction,
        semantic_weight=config.semantic_weight, trace=trace, fact_ids=[e.fact_id for e in examples],
        last_is_eos=config.add_eos, schedule=schedule, adaptive=config.schedule == "adaptive",
        replay=replay, locality_weight=config.locality_weight, replay_batch_size=config.replay_batch_size)
    if config.progress and not is_terminal():
        # HF's bar is carriage-return frames; in a log, one line every few seconds instead.
        from trainer.progress import LineProgressCallback

        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(LineProgressCallback)
    return TrainingSetup(model=model, tokenizer=tokenizer, examples=examples, trainer=trainer,
                         schedule=schedule, replay=replay)


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
        # No accelerator at all (CUDA, MPS, XPU, …): say so, or under torchrun accelerate finds no
        # device backend and trains each process alone (DistributedType.NO); on CPU it is gloo.
        use_cpu=not torch.accelerator.is_available(),
    )
    return TrainingArguments(**{**kwargs, **overrides})
