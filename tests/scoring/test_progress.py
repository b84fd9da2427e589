"""Progress: tqdm's bar on a terminal, whole lines every few seconds anywhere else."""

from __future__ import annotations

import io
import time

from tqdm import tqdm

from scoring.progress import LineProgress, bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_progress_is_whole_lines_with_count_rate_and_time_left() -> None:
    stream = io.StringIO()
    for _ in LineProgress(range(12), desc="probe", unit="batch", file=stream, mininterval=0.05, delay=0.05):
        time.sleep(0.02)
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 2 <= len(lines) < 12  # throttled, not one per item
    assert lines[-1].startswith("probe: 12/12 batch (100%), ") and lines[-1].endswith(" left")
    assert all("batch/s" in line for line in lines)


def test_work_shorter_than_the_interval_prints_nothing() -> None:
    stream = io.StringIO()
    for _ in LineProgress(range(3), desc="quick", file=stream):
        pass
    assert stream.getvalue() == ""


def test_bar_picks_tqdm_on_a_terminal_and_lines_elsewhere() -> None:
    assert type(bar(range(2), desc="x", stream=_Terminal())) is tqdm
    assert isinstance(bar(range(2), desc="x", stream=io.StringIO()), LineProgress)


def test_the_trainer_reports_lines_from_its_global_step(capsys) -> None:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from trainer.progress import LineProgressCallback

    callback = LineProgressCallback()
    callback.interval = 0
    state = TrainerState(max_steps=4, global_step=1)  # a resumed run: one step was done before
    args, control = TrainingArguments(output_dir="unused", report_to="none"), TrainerControl()
    callback.on_train_begin(args, state, control)
    for step in (2, 3, 4):
        state.global_step = step
        callback.on_step_end(args, state, control)
    callback.on_train_end(args, state, control)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.splitlines()[-1].startswith("train: 4/4 step (100%), ")
    assert all(line.startswith("train: ") for line in err.splitlines())
