"""``beacon worker``: claim queued jobs (or jobs whose worker died) and run them, one at a time.

Run as many as the host has room for; they share the job store and the data root. SIGTERM or Ctrl-C
stops the running stage and hands its job back to the queue, where the next worker takes it over.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import sqlite3
import threading
import uuid

from service.datasets import Layout
from service.jobs import JobRunner
from service.settings import Settings
from service.store import open_store

log = logging.getLogger(__name__)


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:4]}"


class Worker:
    """The claim loop of one worker process."""

    def __init__(self, settings: Settings, *, worker_id: str | None = None):
        self.settings = settings
        self.worker_id = worker_id or new_worker_id()
        self.store = open_store(settings.database_url)
        self.layout = Layout.at(settings.data_dir)
        self.stop = threading.Event()

    def run(self, *, once: bool = False) -> int:
        """Claims and runs jobs until stopped (or, with ``once``, after the first job)."""
        self.store.migrate()
        log.info("worker %s: data %s, lease %.0f s", self.worker_id, self.layout.root,
                 self.settings.lease_seconds)
        while not self.stop.is_set():
            ran = self.run_one()
            if ran and once:
                break
            if not ran:
                # Jitter spreads idle workers' polls over time instead of lining them up.
                self.stop.wait(self.settings.poll_seconds * random.uniform(0.5, 1.5))
        log.info("worker %s stopped", self.worker_id)
        return 0

    def run_one(self) -> bool:
        """Claims one job and runs it; False when there was none to claim."""
        try:
            claim = self.store.claim_job(worker_id=self.worker_id, lease_seconds=self.settings.lease_seconds,
                                         max_attempts=self.settings.max_attempts)
        except sqlite3.OperationalError as e:  # the store is busy beyond its timeout: try again later
            log.warning("could not claim a job: %s", e)
            return False
        if claim is None:
            return False
        log.info("job %s claimed (attempt %d)", claim.job_id, claim.job["attempts"])
        try:
            JobRunner(self.store, self.settings, self.layout, claim, self.stop).run()
        except Exception:  # noqa: BLE001 - a bug in one job must not stop the worker
            log.exception("job %s: unexpected error; it goes back to the queue", claim.job_id)
            try:
                self.store.release_job(claim, reason="the worker hit an unexpected error; see its log")
            except sqlite3.Error:
                pass
        return True

    def install_signal_handlers(self) -> None:
        def handle(signum, frame) -> None:  # noqa: ARG001
            log.info("worker %s: %s received, stopping", self.worker_id, signal.Signals(signum).name)
            self.stop.set()
        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
