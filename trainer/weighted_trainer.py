"""HF ``Trainer`` with the weighted loss, normalised over the whole accumulated (and distributed) batch.

Multi-GPU is ``accelerate launch``: the normaliser is gathered across processes, and the loss scaled
by the process count because DDP averages gradients.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer

from trainer.loss import loss_normaliser, weighted_loss
from trainer.trace import FactTrace, fact_states


class WeightedTrainer(Trainer):
    """Trainer whose loss is sum w*l / W, W summed over every micro-batch of the optimizer step.

    Needs ``remove_unused_columns=False`` and a collator that keeps ``weight`` (``WeightedCollator``).
    """

    # compute_loss already divides by the whole step's W: training_step must not divide again.
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, loss_reduction: str = "sample", semantic_weight: float = 0.0,
                 trace: FactTrace | None = None, fact_ids: list[str] | None = None, last_is_eos: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The per-fact trace, read off each training forward pass (trainer.trace); None: not kept.
        self.trace, self.fact_ids, self.last_is_eos = trace, fact_ids or [], last_is_eos
        if self.args.remove_unused_columns:
            raise ValueError("WeightedTrainer needs remove_unused_columns=False: "
                             "column pruning drops 'weight'")
        self.loss_reduction = loss_reduction
        self.semantic_weight = semantic_weight

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int,
                          device: torch.device) -> tuple[list, torch.Tensor | None]:
        """The step's micro-batches and their loss normaliser W (passed on as ``num_items_in_batch``)."""
        batch_samples = []
        for _ in range(num_batches):
            try:
                batch_samples.append(next(epoch_iterator))
            except StopIteration:
                break
        if not batch_samples:
            return batch_samples, None
        for batch in batch_samples:
            if "weight" not in batch:
                raise ValueError("a training batch has no 'weight': use WeightedCollator and "
                                 "remove_unused_columns=False")
        total = sum(loss_normaliser(b["labels"], b["weight"], self.loss_reduction) for b in batch_samples)
        total = total.to(device)
        if self.args.world_size > 1:
            total = self.accelerator.gather(total.reshape(1)).sum()
        return batch_samples, total

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | None = None) -> Any:
        inputs = dict(inputs)
        weights = inputs.pop("weight")
        labels = inputs.pop("labels")
        fact_index = inputs.pop("fact_index", None)
        outputs = model(**inputs)
        embeddings = None
        if self.semantic_weight or self.trace is not None:
            embeddings = self.accelerator.unwrap_model(model).get_input_embeddings().weight
        if self.trace is not None and model.training and fact_index is not None:
            states = fact_states(outputs.logits, labels, embeddings, last_is_eos=self.last_is_eos)
            self.trace.add(self.state.global_step + 1, [self.fact_ids[i] for i in fact_index.tolist()], states)
        loss = weighted_loss(outputs.logits, labels, weights, normaliser=num_items_in_batch,
                             reduction=self.loss_reduction, semantic_weight=self.semantic_weight,
                             embeddings=embeddings)
        if num_items_in_batch is not None and self.args.world_size > 1:
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss
