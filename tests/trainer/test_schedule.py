"""The closed-loop schedule: which facts the next rounds hold, when training stops, and resume."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from trainer.config import TrainConfig
from trainer.schedule import FactSchedule, round_size


def schedule(n: int = 10, *, k: int = 2, tau: float = 0.5, rate: float = 0.2, size: int = 10) -> FactSchedule:
    return FactSchedule(n, stable_visits=k, stable_prob=tau, rehearse_rate=rate, seed=0, round_size=size)


def learn(s: FactSchedule, facts: list[int], times: int = 2, prob: float = 0.9) -> None:
    for _ in range(times):
        s.observe(facts, [True] * len(facts), [prob] * len(facts))


def test_first_rounds_visit_every_fact_once_per_pass_like_plain_epochs() -> None:
    s = schedule(size=5)
    order = s.round_order(0) + s.round_order(1)
    assert sorted(order) == list(range(10))


def test_stable_facts_leave_the_pool_and_are_rehearsed_at_the_rate() -> None:
    s = schedule(n=20, rate=0.2)
    learn(s, [0, 1, 2, 3, 4, 5])
    counts = Counter(s.round_order(0))
    assert sum(counts[i] for i in range(6)) == 2  # ceil(0.2 x 10) slots rehearse
    assert sum(counts[i] for i in range(6, 20)) == 8 and max(counts[i] for i in range(6, 20)) == 1


def test_a_small_pool_takes_one_slot_each_and_rehearsal_fills_the_rest() -> None:
    s = schedule(n=10, rate=0.2)
    learn(s, [0, 1, 2, 3, 4, 5])
    counts = Counter(s.round_order(0))
    assert all(counts[i] == 1 for i in (6, 7, 8, 9))  # not hammered: once each
    assert sum(counts[i] for i in range(6)) == 6


def test_stability_needs_k_learned_visits_and_the_probability() -> None:
    s = schedule(k=3, tau=0.5)
    learn(s, [0], times=2)
    assert not s.stable(0)
    learn(s, [0], times=1, prob=0.4)
    assert not s.stable(0)  # learned three times, but its weakest token is below tau
    learn(s, [0], times=1, prob=0.6)
    assert s.stable(0)
    s.observe([0], [False], [0.9])  # a failed rehearsal returns it to the pool
    assert not s.stable(0)


def test_the_stop_waits_for_every_fact_to_be_confirmed_after_the_last_became_stable() -> None:
    s = schedule(n=3)
    learn(s, [0, 1])
    learn(s, [2])
    assert s.all_stable() and not s.confirmed()  # 0 and 1 were last seen before 2 became stable
    learn(s, [0, 1], times=1)
    assert not s.confirmed()
    s.observe([2], [False], [0.2])  # 2 forgot: back in the pool, confirmation starts over
    assert not s.confirmed()
    learn(s, [2])
    learn(s, [0, 1, 2], times=1)
    assert s.confirmed()


def test_all_stable_rounds_are_all_rehearsal() -> None:
    s = schedule(n=3, size=6)
    learn(s, [0, 1, 2])
    assert s.all_stable()
    assert Counter(s.round_order(0)) == Counter({0: 2, 1: 2, 2: 2})


def test_a_round_asked_twice_is_the_same_and_a_restored_state_draws_the_same_rounds() -> None:
    s = schedule()
    first = s.round_order(0)
    learn(s, first[:3])
    assert s.round_order(0) == first  # the round in progress (a resumed run asks for it again)
    state = json.loads(json.dumps(s.state_dict()))
    restored = schedule()
    restored.load_state_dict(state)
    assert [restored.round_order(r) for r in (1, 2, 3)] == [s.round_order(r) for r in (1, 2, 3)]
    with pytest.raises(ValueError, match="10 examples, this run 11"):
        schedule(n=11).load_state_dict(state)


def test_the_sampler_redraws_a_round_left_unfinished_and_moves_on_after_a_finished_one() -> None:
    from trainer.schedule import AdaptiveSampler

    s = schedule(size=4)
    first = list(AdaptiveSampler(s))
    s.observe(first[:2], [False, False], [0.1, 0.1])  # half of round 0 trained, then a checkpoint
    state = json.loads(json.dumps(s.state_dict()))
    resumed = schedule(size=4)
    resumed.load_state_dict(state)
    assert list(AdaptiveSampler(resumed)) == first  # the Trainer skips the two trained draws
    resumed.observe(first[2:], [False, False], [0.1, 0.1])
    second = list(AdaptiveSampler(resumed))
    assert resumed.round == 1 and not set(second) & set(first)  # the pass goes on


def test_a_fact_twice_in_one_forward_pass_is_one_visit_at_its_worst() -> None:
    s = schedule(n=3, k=2)
    s.observe([0, 0, 1], [True, True, True], [0.9, 0.8, 0.9])
    assert s.streak[0] == 1 and s.last_prob[0] == 0.8
    s.observe([1, 1], [True, False], [0.9, 0.9])
    assert s.streak[1] == 0


def test_no_fact_repeats_within_a_round_while_the_pool_is_large_enough() -> None:
    s = schedule(n=10, size=4)
    for r in range(10):  # pass seams fall inside rounds (10 is not a multiple of 4)
        order = s.round_order(r)
        assert len(set(order)) == 4, (r, order)


def test_round_size_is_whole_optimizer_steps() -> None:
    assert round_size(128, 8, 1, 1) == 32  # 4 steps of 8
    assert round_size(5, 2, 1, 1) == 6  # one epoch's worth (3 steps) when that is fewer
    assert round_size(128, 4, 2, 2) == 64  # 4 steps of 4 x 2 accumulated x 2 processes


def test_knobs_out_of_range_name_the_field() -> None:
    for key, value in (("stable_visits", 0), ("stable_prob", 1.5), ("rehearse_rate", -0.1),
                       ("locality_weight", -1.0), ("paraphrase_share", 1.0), ("schedule", "greedy")):
        with pytest.raises(ValueError, match=key):
            TrainConfig(**{key: value})
    with pytest.raises(ValueError, match="locality_weight is 0"):
        TrainConfig(replay="prompts.txt")


# --- with the real model -----------------------------------------------------------------------------

FLAGS = dict(max_steps=12, epochs=None, save_steps=4, save_total_limit=None, batch_size=2, logging_steps=1, progress=False,
             schedule="adaptive", rehearse_rate=0.25)


def visits(run: Path) -> list[tuple[int, str]]:
    import pyarrow.parquet as pq

    return sorted((r["step"], r["fact_id"]) for r in pq.read_table(run / "trace.parquet").to_pylist())


@pytest.mark.slow
def test_adaptive_resume_gives_the_same_batches_and_a_changed_schedule_is_refused(
        tiny_dataset: Path, tmp_path: Path) -> None:
    from trainer.train import train

    straight = tmp_path / "straight"
    train(tiny_dataset, straight, TrainConfig(**FLAGS))
    assert (straight / "checkpoints" / "checkpoint-4" / "beacon_schedule.json").is_file()

    # An attempt that died after checkpoint 4: later checkpoints and the outputs gone, the trace
    # still holding the later visits (they are dropped on resume and happen again).
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    for name in ("checkpoint-8", "checkpoint-12"):
        shutil.rmtree(resumed / "checkpoints" / name, ignore_errors=True)
    shutil.rmtree(resumed / "adapter")
    (resumed / "train_summary.json").unlink()
    result = train(tiny_dataset, resumed, TrainConfig(**FLAGS))
    assert result.resumed_from and result.resumed_from.endswith("checkpoint-4")
    assert visits(resumed) == visits(straight)
    # The adaptive rounds differ from plain shuffles: some fact is seen more often than another.
    per_fact = Counter(f for _, f in visits(straight))
    assert max(per_fact.values()) > min(per_fact.values())

    with pytest.raises(ValueError, match="schedule: 'adaptive' -> 'plain'"):
        train(tiny_dataset, resumed, TrainConfig(**{**FLAGS, "schedule": "plain"}))


@pytest.mark.slow
def test_stop_when_learned_ends_the_run_once_every_fact_is_stable(tiny_dataset: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from trainer.train import train

    result = train(tiny_dataset, tmp_path / "run", TrainConfig(**{
        **FLAGS, "max_steps": 60, "stop_when_learned": True, "learning_rate": 2e-3}))
    assert result.stopped_when_learned and result.global_step < 60
    assert result.stable == result.examples == 5
    # The trace agrees: every fact's last visit was learned.
    last: dict[str, bool] = {}
    for r in sorted(pq.read_table(tmp_path / "run" / "trace.parquet").to_pylist(), key=lambda r: r["step"]):
        last[r["fact_id"]] = r["learned"]
    assert len(last) == 5 and all(last.values())
    assert (tmp_path / "run" / "checkpoints" / f"checkpoint-{result.global_step}").is_dir()
    # Run again (a retried job): it is trained; another step would change the adapter.
    from trainer.runs import is_trained

    adapter = (tmp_path / "run" / "adapter" / "adapter_model.safetensors").read_bytes()
    again = train(tiny_dataset, tmp_path / "run", TrainConfig(**{
        **FLAGS, "max_steps": 60, "stop_when_learned": True, "learning_rate": 2e-3}))
    assert again.global_step == result.global_step and is_trained(tmp_path / "run")
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").read_bytes() == adapter


def test_the_running_counts_agree_with_a_recount_over_every_fact() -> None:
    import random

    rng = random.Random(0)
    s = schedule(n=6, k=2)
    for _ in range(300):
        batch = [rng.randrange(6) for _ in range(3)]
        s.observe(batch, [rng.random() < 0.8 for _ in batch], [rng.random() for _ in batch])
        stable_n, seen_n = s._stable_n, s._seen_n
        s._recount()
        assert (s._stable_n, s._seen_n if s.all_stable_since is not None else 0) == (
            stable_n, seen_n if s.all_stable_since is not None else 0)
    assert s.confirmed() == (s.all_stable() and all(t > s.all_stable_since for t in s.last_seen))
