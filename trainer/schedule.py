"""The closed loop: each fact's state from the training forward pass decides what the next batches hold.

A fact is **learned and stable** when it was learned (every target token the argmax under teacher
forcing) on its last ``stable_visits`` visits and its lowest target-token probability at the last
visit is at least ``stable_prob``. ``FactSchedule`` keeps that state per training example, from the
states ``trainer.trace.fact_states`` reads off every training forward pass (the same numbers the
trace records, so the trace explains every decision).

``schedule: adaptive`` spends the steps on the facts not learned yet: training runs in *rounds* of a
few optimizer steps, and each round's order is drawn when the round begins (``AdaptiveSampler``):

- the active pool (facts not stable) is visited in passes, each a seeded permutation, as plain
  epochs visit every fact; a fact that became stable leaves the pool at the next round;
- an active fact takes at most one slot of a round (a round is ``ROUND_STEPS`` optimizer steps, so
  at most one visit per step): a small pool is not hammered. Without the cap, the last few facts
  filled whole batches, and those massed updates made the other facts forget (the first benchmark
  run fell from 96% to 79% learned);
- a share ``rehearse_rate`` of every round's slots, and every slot the active facts leave, rehearses
  stable facts (a seeded cycle over them); a rehearsal that finds the fact no longer learned returns
  it to the pool.

``stop_when_learned`` (either schedule) ends training once every example is stable *and confirmed*:
visited again, and still learned, after the moment the last of them became stable. A stable state
can be stale (a fact retired early may have been forgotten while others trained), so the stop waits
for one more visit of each (the first knowledge benchmark without it stopped with 9% of the
"stable" facts no longer answered).

Resume gives the same batches: a round's order is a function of the state when the round begins, and
the state (with the order of the round in progress and how much of it was trained on) is saved in
every checkpoint (``SCHEDULE_FILE``).
Several processes (``accelerate launch``): every process observes the states of every process's batch
(``WeightedTrainer`` gathers them), so each draws the same global order and takes its shard of it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np

SCHEDULE_FILE = "beacon_schedule.json"
ROUND_STEPS = 4  # optimizer steps per adaptive round: how soon a stable fact leaves the pool


class FactSchedule:
    """Per-example learned / stable state, and (adaptive) the order of each round."""

    def __init__(self, n: int, *, stable_visits: int, stable_prob: float, rehearse_rate: float,
                 seed: int, round_size: int) -> None:
        if n < 1:
            raise ValueError("a schedule needs at least one example")
        self.n, self.k, self.tau, self.rate = n, stable_visits, stable_prob, rehearse_rate
        self.seed, self.round_size = seed, round_size
        self.streak = [0] * n  # consecutive learned visits, up to the last one
        self.last_prob = [0.0] * n  # lowest target-token probability at the last visit
        self.queue: list[int] = []  # active examples still to visit in the current pass
        self.rehearse_queue: list[int] = []
        self.passes = 0  # permutations drawn, for their seeds
        self.round: int | None = None  # the round whose order is ``order``
        self.order: list[int] = []
        self.clock = 0  # observations so far (one per micro-batch)
        self.last_seen = [0] * n  # the clock of each example's last visit
        self.all_stable_since: int | None = None  # the clock when every example last became stable
        self.consumed = 0  # draws of the current round already trained on (observed)
        self._recount()

    # --- what the forward passes say ---------------------------------------------------------------

    def observe(self, indices: list[int], learned: list[bool], prob_min: list[float]) -> None:
        """One micro-batch's states (every process's). A fact twice in it is one visit, at its worst."""
        self.clock += 1
        self.consumed += len(indices)
        worst: dict[int, tuple[bool, float]] = {}
        for i, ok, p in zip(indices, learned, prob_min):
            was = worst.get(i, (True, 1.0))
            worst[i] = (was[0] and bool(ok), min(was[1], float(p)))
        for i, (ok, p) in worst.items():
            was_stable, seen_before = self.stable(i), self._seen_since_stable(i)
            self.streak[i] = self.streak[i] + 1 if ok else 0
            self.last_prob[i] = p
            self.last_seen[i] = self.clock
            self._stable_n += self.stable(i) - was_stable
            self._seen_n += self._seen_since_stable(i) - seen_before
        if not self.all_stable():
            self.all_stable_since = None
        elif self.all_stable_since is None:
            self.all_stable_since, self._seen_n = self.clock, 0  # every last visit is at or before it

    def _seen_since_stable(self, i: int) -> bool:
        return self.all_stable_since is not None and self.last_seen[i] > self.all_stable_since

    def _recount(self) -> None:
        """The counts behind all_stable / confirmed (kept up to date by observe: O(batch), not O(facts))."""
        self._stable_n = sum(self.stable(i) for i in range(self.n))
        self._seen_n = sum(self._seen_since_stable(i) for i in range(self.n))

    def confirmed(self) -> bool:
        """Every example stable, and each visited again (still stable) since the last became stable."""
        return self.all_stable_since is not None and self._seen_n == self.n

    def stable(self, i: int) -> bool:
        return self.streak[i] >= self.k and self.last_prob[i] >= self.tau

    def stable_count(self) -> int:
        return self._stable_n

    def all_stable(self) -> bool:
        return self._stable_n == self.n

    # --- what the next round holds (adaptive) ------------------------------------------------------

    def round_order(self, round_index: int) -> list[int]:
        """The examples of round ``round_index``, in batch order (``round_size`` of them).

        Drawn once per round from the state at that moment; asked again (a resumed run's first
        round) it is the same list.
        """
        if self.round == round_index:
            return list(self.order)
        self.consumed = 0
        stable = [i for i in range(self.n) if self.stable(i)]
        active = set(range(self.n)) - set(stable)
        rehearse = min(self.round_size, math.ceil(self.rate * self.round_size)) if stable else 0
        if stable:  # each active fact at most once a round; stable facts fill what is left
            rehearse = max(rehearse, self.round_size - len(active))
        taken: set[int] = set()  # a fact once per round while the pool allows it
        slots = [self._next(active, "queue", taken) for _ in range(self.round_size - rehearse)]
        slots += [self._next(set(stable), "rehearse_queue", taken) for _ in range(rehearse)]
        # Rehearsals spread through the round rather than bunched at its end.
        rng = np.random.default_rng([self.seed, 1, round_index])
        self.order = [slots[j] for j in rng.permutation(len(slots))]
        self.round = round_index
        return list(self.order)

    def _next(self, pool: set[int], queue_name: str, taken: set[int]) -> int:
        """The next fact of ``pool`` in its pass (``queue_name``: the active or the rehearsal queue)."""
        queue = getattr(self, queue_name)
        while queue and queue[0] not in pool:  # left the pool since the pass was drawn
            queue.pop(0)
        if not queue:  # a new pass; the facts this round already holds go last (no repeat at the seam)
            perm = self._permutation(sorted(pool))
            queue[:] = [i for i in perm if i not in taken] + [i for i in perm if i in taken]
        taken.add(queue[0])
        return queue.pop(0)

    def _permutation(self, items: list[int]) -> list[int]:
        self.passes += 1
        rng = np.random.default_rng([self.seed, 0, self.passes])
        return [items[j] for j in rng.permutation(len(items))]

    # --- checkpoints -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n, "streak": self.streak, "last_prob": self.last_prob, "queue": self.queue,
                "rehearse_queue": self.rehearse_queue, "passes": self.passes, "round": self.round,
                "order": self.order, "clock": self.clock, "last_seen": self.last_seen,
                "all_stable_since": self.all_stable_since, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("n") != self.n:
            raise ValueError(f"the checkpoint's schedule has {state.get('n')} examples, this run {self.n}")
        for key in ("streak", "last_prob", "queue", "rehearse_queue", "passes", "round", "order", "clock",
                    "last_seen", "all_stable_since", "consumed"):
            setattr(self, key, state[key])
        self._recount()

    def save(self, checkpoint: Path) -> None:
        from trainer.files import write_json

        write_json(Path(checkpoint) / SCHEDULE_FILE, self.state_dict())

    def load(self, checkpoint: Path) -> None:
        path = Path(checkpoint) / SCHEDULE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the checkpoint was not written by this schedule")
        self.load_state_dict(json.loads(path.read_text()))


class AdaptiveSampler:
    """A torch sampler whose every epoch is one round of ``FactSchedule`` (its ``round_size`` draws).

    The sampler counts rounds itself rather than trusting ``set_epoch``: under several processes
    accelerate wraps it in shard and skip samplers that ``set_epoch`` does not reach. A round whose
    draws were not all trained on (a run resumed from a checkpoint inside it, whose first batches the
    Trainer then skips) is drawn again, the same; a finished one is followed by the next.
    """

    def __init__(self, schedule: FactSchedule) -> None:
        self.schedule = schedule

    def __len__(self) -> int:
        return self.schedule.round_size

    def __iter__(self) -> Iterator[int]:
        s = self.schedule
        if s.round is None:
            next_round = 0
        elif s.consumed < s.round_size:  # resumed inside this round
            next_round = s.round
        else:
            next_round = s.round + 1
        return iter(s.round_order(next_round))


def round_size(examples: int, batch_size: int, accumulation: int, processes: int) -> int:
    """Draws per adaptive round: ``ROUND_STEPS`` optimizer steps, or one epoch's worth if fewer."""
    per_step = batch_size * accumulation * processes
    return per_step * max(1, min(ROUND_STEPS, math.ceil(examples / per_step)))


def schedule_callback(schedule: FactSchedule, *, stop_when_learned: bool, save_dir: Path | None) -> Any:
    """A TrainerCallback that ends training once every example is stable and confirmed (if asked) and saves the
    schedule's state into every checkpoint (before Beacon's marker: list it before the stamp)."""
    from transformers import TrainerCallback

    class ScheduleCallback(TrainerCallback):
        def __init__(self) -> None:
            self.stopped_at: int | None = None

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if stop_when_learned and schedule.confirmed():
                self.stopped_at = state.global_step
                control.should_training_stop = True
                if getattr(args.save_strategy, "value", args.save_strategy) != "no":
                    control.should_save = True  # the stopped state is the run's last checkpoint

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            path = (save_dir or Path(args.output_dir)) / f"checkpoint-{state.global_step}"
            if path.is_dir() and args.process_index == 0:
                schedule.save(path)

    return ScheduleCallback()
