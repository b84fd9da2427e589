"""HF ``Trainer`` with the weighted loss, normalised over the whole accumulated (and distributed) batch.

Multi-GPU is ``accelerate launch``: the normaliser is gathered across processes, and the loss scaled
by the process count because DDP averages gradients. The closed loop rides on the same forward pass:
each fact's state (``trainer.trace.fact_states``) goes to the trace and to the schedule (gathered from
every process), and with ``locality_weight`` the replay rows share the facts' forward pass
(``trainer.replay``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from transformers import Trainer

from trainer.loss import loss_normaliser, weighted_loss
from trainer.trace import FactTrace, fact_states

if TYPE_CHECKING:
    from trainer.replay import ReplaySet
    from trainer.schedule import FactSchedule


class WeightedTrainer(Trainer):
    """Trainer whose loss is sum w*l / W, W summed over every micro-batch of the optimizer step.

    Needs ``remove_unused_columns=False`` and a collator that keeps ``weight`` (``WeightedCollator``).
    """

    # compute_loss already divides by the whole step's W: training_step must not divide again.
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, loss_reduction: str = "sample", semantic_weight: float = 0.0,
                 trace: FactTrace | None = None, fact_ids: list[str] | None = None, last_is_eos: bool = True,
                 schedule: "FactSchedule | None" = None, adaptive: bool = False,
                 replay: "ReplaySet | None" = None, locality_weight: float = 0.0, replay_batch_size: int = 4,
                 **kwargs: Any) -> None:
        # Set before the Trainer builds anything: its dataloader asks _get_train_sampler.
        self.schedule, self.adaptive = schedule, adaptive
        super().__init__(*args, **kwargs)
        # The per-fact trace, read off each training forward pass (trainer.trace); None: not kept.
        self.trace, self.fact_ids, self.last_is_eos = trace, fact_ids or [], last_is_eos
        if adaptive and schedule is None:
            raise ValueError("the adaptive schedule needs a FactSchedule")
        if locality_weight and replay is None:
            raise ValueError("locality_weight > 0 needs replay prompts (trainer.replay.build_replay)")
        self.replay, self.locality_weight, self.replay_batch_size = replay, locality_weight, replay_batch_size
        self._replay_step, self._replay_micro = -1, 0
        if self.args.remove_unused_columns:
            raise ValueError("WeightedTrainer needs remove_unused_columns=False: "
                             "column pruning drops 'weight'")
        self.loss_reduction = loss_reduction
        self.semantic_weight = semantic_weight

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        if self.adaptive:
            from trainer.schedule import AdaptiveSampler

            return AdaptiveSampler(self.schedule)
        return super()._get_train_sampler(train_dataset)

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
        replay = self._replay_batch() if self.locality_weight and model.training else None
        if replay is None:
            outputs = model(**inputs)
            logits = outputs.logits
        else:  # one forward pass for the facts and the replay rows (DDP sees one graph per backward)
            outputs, logits, replay_logits = self._forward_with_replay(model, inputs, replay)
        unwrapped = self.accelerator.unwrap_model(model)
        embeddings = None
        observe = self.trace is not None or self.schedule is not None
        if self.semantic_weight or observe:
            embeddings = unwrapped.get_input_embeddings().weight
        if observe and model.training and fact_index is not None:
            states = fact_states(logits, labels, embeddings, last_is_eos=self.last_is_eos)
            indices, states = self._gathered(fact_index, states)
            if self.trace is not None:
                self.trace.add(self.state.global_step + 1, [self.fact_ids[i] for i in indices], states)
            if self.schedule is not None:
                self.schedule.observe(indices, states["learned"], states["target_prob_min"])
        loss = weighted_loss(logits, labels, weights, normaliser=num_items_in_batch,
                             reduction=self.loss_reduction, semantic_weight=self.semantic_weight,
                             embeddings=embeddings)
        if num_items_in_batch is not None and self.args.world_size > 1:
            loss = loss * self.accelerator.num_processes
        if replay is not None:
            from trainer.replay import kl_to_base

            with torch.no_grad(), unwrapped.disable_adapter():
                base_logits = unwrapped(input_ids=replay["input_ids"],
                                        attention_mask=replay["attention_mask"]).logits
            kl = kl_to_base(replay_logits, base_logits, replay["kl_mask"])
            # A mean per micro-batch: averaged over the step's micro-batches (DDP averages processes).
            loss = loss + self.locality_weight * kl / max(1, getattr(self, "current_gradient_accumulation_steps", 1))
        return (loss, outputs) if return_outputs else loss

    def _replay_batch(self) -> dict[str, Any]:
        """This micro-batch's replay rows: a function of (step, micro-batch, process), so resume-safe."""
        if self._replay_step != self.state.global_step:
            self._replay_step, self._replay_micro = self.state.global_step, 0
        draw = ((self.state.global_step * self.args.gradient_accumulation_steps + self._replay_micro)
                * self.args.world_size + self.args.process_index)
        self._replay_micro += 1
        rows = self.replay.rows(draw, self.replay_batch_size)
        pad = self.data_collator.pad_token_id
        return {k: v.to(self.args.device) for k, v in self.replay.batch(rows, pad).items()}

    def _forward_with_replay(self, model: torch.nn.Module, inputs: dict[str, Any],
                             replay: dict[str, Any]) -> tuple[Any, torch.Tensor, torch.Tensor]:
        import torch.nn.functional as F

        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        width = max(ids.shape[1], replay["input_ids"].shape[1])

        def right_pad(t: torch.Tensor, value: int) -> torch.Tensor:
            return F.pad(t, (0, width - t.shape[1]), value=value)

        pad = self.data_collator.pad_token_id
        outputs = model(input_ids=torch.cat([right_pad(ids, pad), right_pad(replay["input_ids"], pad)]),
                        attention_mask=torch.cat([right_pad(mask, 0), right_pad(replay["attention_mask"], 0)]))
        n = ids.shape[0]
        replay["input_ids"] = right_pad(replay["input_ids"], pad)
        replay["attention_mask"] = right_pad(replay["attention_mask"], 0)
        replay["kl_mask"] = right_pad(replay["kl_mask"].long(), 0).bool()
        return outputs, outputs.logits[:n, :ids.shape[1]], outputs.logits[n:]

    def _gathered(self, fact_index: torch.Tensor, states: dict[str, list]) -> tuple[list[int], dict[str, list]]:
        """Every process's facts of this micro-batch and their states (the schedule must see them all)."""
        if self.args.world_size <= 1:
            return fact_index.tolist(), states
        names = list(states)
        local = torch.tensor([[float(i)] + [float(states[c][r]) for c in names]
                              for r, i in enumerate(fact_index.tolist())], dtype=torch.float64,
                             device=self.args.device)
        packed = self.accelerator.gather(self.accelerator.pad_across_processes(local, dim=0, pad_index=-1))
        packed = packed[packed[:, 0] >= 0].tolist()
        out = {c: [bool(row[k + 1]) if c == "learned" else row[k + 1] for row in packed]
               for k, c in enumerate(names)}
        return [int(row[0]) for row in packed], out
