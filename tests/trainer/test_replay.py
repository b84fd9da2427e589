"""Replay prompts for the locality term, and paraphrase augmentation: where prompts come from, what is
refused, and that training never sees what the evaluation measures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.augment import augmented_rows, split_paraphrases
from trainer.replay import _norm, dataset_prompts, kl_to_base, read_replay_file, replay_prompts

FACTS = [
    {"fact_id": "a", "prompt": "The mother tongue of Danielle Darrieux is", "subject": "Danielle Darrieux",
     "paraphrases": ["Danielle Darrieux's native language is"],
     "locality": [{"prompt": "The mother tongue of Thomas Mann is", "answer": "German"}]},
    {"fact_id": "b", "prompt": "Toyota Prius is produced by", "subject": "Toyota Prius",
     "paraphrases": ["The maker of the Toyota Prius is"],
     "locality": [{"prompt": "The iPhone is produced by", "answer": "Apple"}]},
    {"fact_id": "c", "prompt": "The headquarters of Nokia are in", "subject": "Nokia",
     "paraphrases": [], "locality": [{"prompt": "Thomas Mann is produced by", "answer": "?"}]},
    # Its subject swapped into fact a's template is one of the evaluation's locality prompts.
    {"fact_id": "d", "prompt": "Thomas Mann was born in", "subject": "Thomas Mann", "paraphrases": [],
     "locality": []},
]


def test_default_replay_fills_taught_templates_with_other_subjects_never_an_evaluated_prompt() -> None:
    prompts, source = replay_prompts(FACTS, FACTS, path=None, seed=0)
    own, evaluation = dataset_prompts(FACTS)
    swapped = [p for p in prompts if p not in read_replay_file("trainer/replay_generic.txt")]
    assert source == "subjects+generic" and swapped  # 4 facts give fewer than MIN_REPLAY swaps
    assert any(p.startswith("The mother tongue of ") and "Darrieux" not in p for p in swapped)
    # Disjoint from every prompt the evaluation measures (locality, paraphrases) and every fact prompt.
    assert not {_norm(p) for p in prompts} & (own | evaluation)
    assert len({_norm(p) for p in prompts}) == len(prompts)


def test_replay_is_disjoint_from_the_evaluation_on_the_benchmark_data() -> None:
    # The CounterFact layout the benchmark reads: locality prompts are other subjects of the same
    # relation, exactly what a subject swap can produce; none may reach training.
    rows = []
    subjects = ["BBC One", "BBC Radio", "Sega", "Nintendo", "Apple A5", "Google", "Danielle Darrieux"]
    for i, s in enumerate(subjects):
        other = subjects[(i + 1) % len(subjects)]
        rows.append({"fact_id": str(i), "prompt": f"{s}, by", "subject": s,
                     "paraphrases": [f"{s} is owned by"], "locality": [{"prompt": f"{other}, by", "answer": "x"}]})
    prompts, _ = replay_prompts(rows, rows, path=None, seed=1)
    own, evaluation = dataset_prompts(rows)
    assert prompts and not {_norm(p) for p in prompts} & (own | evaluation)


def test_replay_file_errors_name_the_file_and_the_count(tmp_path: Path) -> None:
    cases = [  # file name, content (None: no file), the error it gets
        ("empty.txt", "\n  \n", r"empty.txt holds no prompts"),
        ("missing.txt", None, r"missing.txt cannot be read"),
        ("binary.txt", b"\xff\xfe\x00bad", r"binary.txt cannot be read"),
        ("taught.txt", "The weather is\nToyota Prius is produced by\nthe mother tongue of  danielle darrieux is\n",
         r"taught.txt: 2 of 3 prompts are prompts of the dataset's facts"),
        ("evaluated.jsonl", json.dumps({"prompt": "The iPhone is produced by"}) + "\n"
         + json.dumps({"prompt": "My favourite colour is"}) + "\n",
         r"evaluated.jsonl: 1 of 2 prompts are the dataset's paraphrase or locality prompts"),
        ("bad.jsonl", '{"text": "no prompt key"}\n', r"bad.jsonl line 1: expected an object with a text 'prompt'"),
    ]
    for name, content, error in cases:
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            path.write_text(content)
        with pytest.raises(ValueError, match=error):
            replay_prompts(FACTS, FACTS, path=str(path), seed=0)
    good = tmp_path / "good.txt"
    good.write_text("The weather today is\nMy favourite colour is\n")
    assert replay_prompts(FACTS, FACTS, path=str(good), seed=0) == (
        ["The weather today is", "My favourite colour is"], "file")


def test_kl_to_base_is_zero_for_the_same_distribution_and_positive_otherwise() -> None:
    import torch

    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 1:3] = mask[1, 4] = True
    assert kl_to_base(logits, logits.clone(), mask).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_to_base(logits + torch.randn(2, 5, 11), logits, mask).item() > 0.01
    # Only the masked positions count.
    other = logits.clone()
    other[0, 0] += 5.0
    assert kl_to_base(logits, other, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_paraphrase_split_holds_at_least_one_out() -> None:
    assert split_paraphrases(["p1"], 0.5) == ([], ["p1"])  # one paraphrase: kept for evaluation
    assert split_paraphrases([], 0.5) == ([], [])
    assert split_paraphrases(["p1", "p2"], 0.5) == (["p1"], ["p2"])
    assert split_paraphrases(["p1", "p2", "p3", "p4"], 0.9) == (["p1", "p2", "p3"], ["p4"])
    rows = augmented_rows([{"fact_id": "f", "prompt": "q", "target": "t", "weight": 2.0,
                            "paraphrases": ["p1", "p2", "p3"]}], 0.5)
    assert [(r["fact_id"], r["prompt"], r["target"], r["weight"]) for r in rows] == [
        ("f", "q", "t", 2.0), ("f#para0", "p1", "t", 2.0)]


def test_beacon_train_refuses_a_bad_replay_file_before_loading_a_model(tiny_dataset: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    empty = tmp_path / "replay.txt"
    empty.write_text("")
    proc = subprocess.run([sys.executable, "-m", "service.cli", "train", str(tiny_dataset), "--out",
                           str(tmp_path / "run"), "--locality-weight", "1", "--replay", str(empty),
                           "--max-steps", "2", "--no-progress"], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"replay file {empty} holds no prompts" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
