"""`beacon report DIR`: one self-contained HTML file (charts embedded, no network) for a dataset or run."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write a self-contained HTML report of a dataset or a `beacon run` folder")
    p.add_argument("folder", metavar="DIR", help="curated dataset folder, or a `beacon run` folder")
    p.add_argument("--out", metavar="FILE", help="where to write it (default DIR/report.html)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from service.report import write_report

    report = write_report(args.folder, args.out)
    print(f"report -> {report.path}")
    return 0
