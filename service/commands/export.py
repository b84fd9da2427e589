"""`beacon export DATASET --format F --out PATH`: the kept facts for TRL, LLaMA-Factory or `datasets`."""

from __future__ import annotations

import argparse

from trainer.export import FORMATS

EPILOG = "formats:\n" + "\n".join(f"  {name:<9} {help}" for name, help in FORMATS.items()) + """

jsonl writes the file PATH; hf, alpaca and sharegpt write the folder PATH. Filtered facts are left
out (the summary counts them by reason). Examples:
  beacon export out/sample --format hf --out out/sample-hf
  beacon export out/sample/dataset --format alpaca --out out/llamafactory"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write the kept facts for other trainers (TRL, LLaMA-Factory, datasets)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", metavar="DATASET",
                   help="curated dataset folder or object-store URL (from `beacon curate`), or a `beacon run` folder")
    p.add_argument("--format", required=True, choices=list(FORMATS), metavar="FORMAT",
                   help=f"one of: {', '.join(FORMATS)}")
    p.add_argument("--out", required=True, metavar="PATH", help="file (jsonl) or folder (the others) to write, local or an object-store URL")
    p.add_argument("--overwrite", action="store_true", help="replace PATH if it exists")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from trainer.export import export

    result = export(args.dataset, args.format, args.out, overwrite=args.overwrite)
    left = ", ".join(f"{reason} {n}" for reason, n in result.left_out.items())
    total = result.exported + sum(result.left_out.values())
    print(f"exported {result.exported} of {total} facts ({result.format}) -> {result.path}")
    if left:
        print(f"  left out (filtered by curation): {left}")
    print(f"  chat template: {'messages, applied by the trainer' if result.chat_template else 'none (plain text)'}")
    for note in result.notes:
        print(f"  note: {note}")
    return 0
