"""One module per `beacon` subcommand: each has ``add_parser(subparsers)`` and ``run(args) -> int``."""
