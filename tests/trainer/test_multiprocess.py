"""Two training processes (torchrun, gloo on CPU): one adaptive schedule over both, resumable.

``accelerate launch --multi_gpu`` on GPUs and ``torchrun`` here start the same thing: one process per
rank with RANK / WORLD_SIZE / LOCAL_RANK set, which HF ``Trainer`` (through accelerate) turns into
DDP. On a CPU-only machine this needs ``use_cpu`` in the TrainingArguments; without it accelerate
finds no device backend and every process trains alone (what an earlier version did).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest


pytestmark = pytest.mark.slow

FLAGS = ["--max-steps", "8", "--save-steps", "4", "--batch-size", "2", "--logging-steps", "1", "--no-progress",
         "--schedule", "adaptive", "--rehearse-rate", "0.25"]


def torchrun(dataset: Path, run: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",  # a free port
           "-m", "service.cli", "train", str(dataset), "--out", str(run), *FLAGS]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def visits(run: Path) -> list[tuple[int, str]]:
    return sorted((r["step"], r["fact_id"]) for r in pq.read_table(run / "trace.parquet").to_pylist())


def test_two_processes_share_one_schedule_and_resume_to_the_same_batches(tiny_dataset: Path,
                                                                          tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    torchrun(tiny_dataset, straight)
    summary = json.loads((straight / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["global_step"] == 8
    # Each step's trace holds both processes' facts (2 a process): rank 0 saw rank 1's through the gather.
    per_step = Counter(step for step, _ in visits(straight))
    assert sorted(per_step) == list(range(1, 9)) and set(per_step.values()) == {4}
    # The two processes trained different shards of the round: were they the same, every fact of a
    # step would be there an even number of times. (A fact may be twice in a step: 5 facts fill a
    # round of 8 draws, so the round repeats some, by design.)
    counts = [Counter(f for s, f in visits(straight) if s == step) for step in per_step]
    assert any(c % 2 for step in counts for c in step.values())
    assert (straight / "checkpoints" / "checkpoint-4" / "beacon_schedule.json").is_file()

    # An attempt that died after checkpoint 4, resumed with two processes again: the same visits.
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "checkpoint-8")
    shutil.rmtree(resumed / "adapter")
    (resumed / "train_summary.json").unlink()
    trace = pq.read_table(resumed / "trace.parquet")  # as a run killed after checkpoint 4 left it
    pq.write_table(trace.filter(pc.less_equal(trace["step"], 4)), resumed / "trace.parquet")
    assert max(step for step, _ in visits(resumed)) == 4
    torchrun(tiny_dataset, resumed)
    again = json.loads((resumed / "train_summary.json").read_text())
    assert again["resumed_from"].endswith("checkpoint-4") and again["global_step"] == 8
    assert visits(resumed) == visits(straight)
