"""`beacon`: the command line. Each subcommand lives in its own module under service/commands."""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import sys
import warnings

# Imported lazily so `beacon --help` does not pay for torch or Beam.
COMMANDS = ["models", "curate", "train", "eval", "run", "stats", "query", "export", "report", "serve", "worker"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beacon", description="Curate, train and verify the facts you teach an LLM.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"service.commands.{name}").add_parser(sub)
        sub.choices[name].set_defaults(command_parser=sub.choices[name])
    return parser


def check_extra(extra: list[str], command: argparse.ArgumentParser) -> None:
    """Options a command passes on (to Beam) must not be near-misses of its own: a typo is an error.

    Raises:
        ValueError: a near-miss (naming the option meant) or a stray positional argument.
    """
    ours = [s for action in command._actions for s in action.option_strings if s.startswith("--")]
    for i, arg in enumerate(extra):
        if not arg.startswith("--"):
            if i and extra[i - 1].startswith("--") and "=" not in extra[i - 1]:
                continue  # the value of a passed-on option: --runner DirectRunner
            raise ValueError(f"unexpected argument {arg!r}: inputs come before the options")
        name = arg.split("=", 1)[0]
        close = difflib.get_close_matches(name, ours, n=1, cutoff=0.8)
        if close:
            raise ValueError(f"unknown option {name}; did you mean {close[0]}?")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # Beam warns about optional GCP clients at import; they are not needed for local runs.
    # Beam's filesystems log each listing on the root logger ("Finished listing 4 files in …").
    logging.getLogger().addFilter(lambda record: not record.getMessage().startswith(
        ("apitools not found", "Finished listing")))
    # transformers 5 warns about its own renamed attribute on every model load; nothing to act on.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    for noisy in ("apache_beam", "transformers", "sentence_transformers", "httpx", "urllib3", "botocore",
                  "boto3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from scoring.progress import quiet_library_bars  # here, not at import: `beacon --help` needs no tqdm

    quiet_library_bars()
    try:
        if extra:
            check_extra(extra, args.command_parser)
        return int(args.run(args) or 0)
    except (ValueError, OSError, RuntimeError) as e:  # OSError: FileNotFoundError, PermissionError, ...
        print(f"beacon {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
