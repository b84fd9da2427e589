"""Glue shared by the RunInference stages (ProbeModel, EmbedTexts)."""

from __future__ import annotations

import logging
import time

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference

log = logging.getLogger(__name__)


class Progress:
    """Logs how many facts a stage has done and how fast, at most every ``every`` seconds."""

    def __init__(self, stage: str, every: float = 10.0):
        self._stage, self._every = stage, every
        self._done, self._started, self._last = 0, 0.0, 0.0

    def add(self, n: int) -> None:
        now = time.perf_counter()
        if not self._started:
            self._started = self._last = now
        self._done += n
        if now - self._last >= self._every:
            self._last = now
            rate = self._done / max(now - self._started, 1e-9)
            log.info("%s: %d facts done (%.1f facts/s)", self._stage, self._done, rate)


class KeyedInference(beam.PTransform):
    """(key, fact) -> ``{"ok": (key, fact + inference), "failed": (key, fact, error)}``.

    A batch that raises goes whole to ``failed`` (RunInference's dead letters), one row per fact,
    so nothing is lost and one bad batch does not stop the run.
    """

    def __init__(self, handler: ModelHandler):
        super().__init__()
        self._handler = KeyedModelHandler(handler)

    def expand(self, facts):
        main, other = facts | "RunInference" >> RunInference(self._handler).with_exception_handling()
        ok = main | "Merge" >> beam.MapTuple(lambda key, result: (key, {**result.example, **result.inference}))
        failed = other.failed_inferences | "FailedBatches" >> beam.FlatMap(_explode_failed_batch)
        return {"ok": ok, "failed": failed}


def _explode_failed_batch(failure):
    batch, error = failure
    for key, fact in batch:
        yield key, fact, f"{type(error).__name__}: {error}"
