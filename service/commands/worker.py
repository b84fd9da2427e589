"""`beacon worker`: run queued jobs (curate → train → evaluate), one at a time, until stopped."""

from __future__ import annotations

import argparse

EPILOG = """Settings come from BEACON_* variables (BEACON_DATA_DIR, BEACON_LEASE_SECONDS, ...); run several
workers on one host for several jobs at once. SIGTERM hands the running job back to the queue."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run queued jobs from the job store",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--once", action="store_true", help="exit after the first job")
    p.add_argument("--id", dest="worker_id", help="worker id shown in jobs and events (default: host:pid)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from service.settings import get_settings
    from service.worker import Worker

    worker = Worker(get_settings(), worker_id=args.worker_id)
    worker.install_signal_handlers()
    return worker.run(once=args.once)
