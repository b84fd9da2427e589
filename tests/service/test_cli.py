"""The command line: config files with any subset of sections, and typos refused by every command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import main as beacon

FIXTURES = Path(__file__).parents[1] / "fixtures"


@pytest.mark.parametrize("argv", [
    ["run", "in.jsonl", "--out", "x", "--max-drfit", "0.5"],
    ["run", "in.jsonl", "--out", "x", "--learning-rte=0.1"],
    ["curate", "in.jsonl", "--out", "x", "--lsh-bandz", "3"],
])
def test_every_command_refuses_a_near_miss_of_its_own_flags(argv, capsys):
    """Regression: `beacon run --max-drfit 0.5` used to run, Beam only logging 'Unparseable argument'."""
    assert beacon(argv) == 2
    err = capsys.readouterr().err
    assert "unknown option" in err and "did you mean" in err


def test_commands_without_pass_through_refuse_unknown_options(capsys):
    with pytest.raises(SystemExit) as e:
        beacon(["train", "d", "--out", "r", "--max-stepz", "3"])
    assert e.value.code == 2 and "unrecognized arguments: --max-stepz" in capsys.readouterr().err


def test_beam_options_still_pass_through_with_their_values(tmp_path, capsys):
    # The runner option reaches Beam (and fails there, on the missing input, not as our typo).
    code = beacon(["curate", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o"),
                   "--runner", "DirectRunner"])
    err = capsys.readouterr().err
    assert code == 2 and "missing.jsonl" in err and "unknown option" not in err


@pytest.mark.slow
def test_run_as_a_user_runs_it_and_every_hint_it_prints_runs(tmp_path, capsys):
    """`.venv/bin/beacon run` from a shell, with a config holding only a train section (regression: such
    a file failed with 'invalid curate config: train: Extra inputs are not permitted'); then every
    command its summary suggests, as printed, in a shell whose PATH has no `beacon`."""
    config = tmp_path / "f.yaml"
    config.write_text("train:\n  max_steps: 2\n  batch_size: 4\n")
    beacon_script = Path(sys.executable).parent / "beacon"
    shutil.copy(FIXTURES / "mini_facts.jsonl", tmp_path / "facts.jsonl")
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    done = subprocess.run([str(beacon_script), "run", "facts.jsonl", "--out", "x", "--config", "f.yaml"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "x"
    run = json.loads((out / "run" / "config.json").read_text())
    assert (run["train"]["max_steps"], run["train"]["epochs"], run["train"]["batch_size"]) == (2, None, 4)
    summary = json.loads((out / "run" / "train_summary.json").read_text())
    assert summary["global_step"] == 2
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    # One sentence for what was learned, the same in the summary and in metrics.json (the API's metrics).
    assert metrics["summary"] in done.stdout and "answer with the target" in metrics["summary"]
    # Not a terminal: progress is whole lines, never carriage-return frames.
    assert "\r" not in done.stdout + done.stderr

    hints = done.stdout.split("\nnext:\n", 1)[1].strip().splitlines()
    assert len(hints) == 3
    for hint in hints:
        ran = subprocess.run(hint.strip(), shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
        assert ran.returncode == 0, (hint, ran.stderr)
        assert ran.stdout.strip(), hint
    assert "answer_before" in subprocess.run(hints[1].strip(), shell=True, cwd=tmp_path, env=env,
                                             capture_output=True, text=True, timeout=300).stdout
    assert (out / "export-hf" / "dataset_info.json").is_file()

    # A key in the wrong section is named, with its section, before any work starts.
    config.write_text("curate:\n  learning_rate: 0.01\n")
    assert beacon(["run", str(FIXTURES / "mini_facts.jsonl"), "--out", str(tmp_path / "y"),
                   "--config", str(config)]) == 2
    assert "invalid curate config" in capsys.readouterr().err and not (tmp_path / "y").exists()


@pytest.mark.parametrize("argv, field", [
    (["train", "d", "--out", "r", "--learning-rate", "nan"], "learning_rate"),
    (["curate", "in.jsonl", "--out", "x", "--max-drift", "inf"], "max_drift"),
    (["run", "in.jsonl", "--out", "x", "--weight-strength=-inf"], "weight_strength"),
])
def test_non_finite_flags_are_refused_naming_the_field(argv, field, capsys):
    assert beacon(argv) == 2
    err = capsys.readouterr().err
    assert field in err and ("finite" in err or "greater than" in err or "less than" in err), err
