"""`beacon models prepare`: convert the bundled offline models once into the cache."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="manage the bundled offline models")
    msub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    prep = msub.add_parser("prepare", help="convert the bundled GGUF models once (idempotent)")
    prep.add_argument("names", nargs="*", help="bundled model names (default: the default LM)")
    prep.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from scoring.models import prepare_bundled

    for name, path in prepare_bundled(args.names or None).items():
        print(f"{name}: {path}")
    return 0
