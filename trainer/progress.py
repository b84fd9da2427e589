"""The Trainer's progress as lines (``scoring.progress.LineProgress``) where stderr is not a terminal."""

from __future__ import annotations

from transformers import ProgressCallback

from scoring.progress import LINE_SECONDS, LineProgress


class LineProgressCallback(ProgressCallback):
    """HF's ProgressCallback, its bar swapped for one line every few seconds: steps done of the total,
    steps/s and time left. The rest (logs, evaluation bars) is HF's."""

    interval = LINE_SECONDS

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.training_bar = LineProgress(total=state.max_steps, desc="train", unit="step",
                                             initial=state.global_step, mininterval=self.interval,
                                             delay=self.interval)
        self.current_step = state.global_step
