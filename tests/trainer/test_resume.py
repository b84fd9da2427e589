"""Kill `beacon train` mid-run, rerun the same command: it resumes to the same step and the same adapter."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainer.config import TrainConfig
from trainer.train import train

REPO = Path(__file__).resolve().parents[2]
FLAGS = ["--max-steps", "8", "--save-steps", "2", "--batch-size", "2", "--logging-steps", "1",
         "--no-progress"]


def beacon_train(dataset: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "service.cli", "train", str(dataset), "--out", str(run), *FLAGS, *extra]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_step_and_weights(tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(beacon_train(tiny_dataset, run), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = run / "checkpoints" / "checkpoint-2" / "beacon_run.json"  # written last: complete
    deadline = time.monotonic() + 240
    while not first.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "adapter").exists()

    again = subprocess.run(beacon_train(tiny_dataset, run), cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["global_step"] == summary["max_steps"] == 8 and summary["resumed_from"]
    state = json.loads((run / "checkpoints" / "checkpoint-8" / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"] if "loss" in h] == list(range(1, 9))

    # The same run without the interruption ends with the same adapter.
    straight = tmp_path / "straight"
    train(tiny_dataset, straight, TrainConfig(max_steps=8, epochs=None, save_steps=2, batch_size=2,
                                              logging_steps=1, progress=False))
    resumed = load_file(run / "adapter" / "adapter_model.safetensors")
    plain = load_file(straight / "adapter" / "adapter_model.safetensors")
    assert resumed.keys() == plain.keys()
    for name in plain:
        torch.testing.assert_close(resumed[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)
    # The trace has every visit once, as the uninterrupted run's: the killed attempt's later visits
    # (after the checkpoint resumed from) were dropped and happened again.
    import pyarrow.parquet as pq

    def visits(path: Path) -> list[tuple]:
        return sorted((r["step"], r["fact_id"]) for r in pq.read_table(path / "trace.parquet").to_pylist())

    assert visits(run) == visits(straight) and len(visits(run)) == 14  # 5 facts by 2: batches of 2, 2, 1

    # Resuming with another config is an error that names the key.
    other = subprocess.run(beacon_train(tiny_dataset, run, "--learning-rate", "0.002"), cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)
    assert other.returncode == 2
    assert "learning_rate" in other.stderr and "0.001 -> 0.002" in other.stderr
