"""`beacon curate INPUT... --out DIR`: score facts and write the curated dataset."""

from __future__ import annotations

import argparse

from pipeline.config import CurateConfig
from service.commands.config_flags import add_config_flags, load_configs

EPILOG = """Any other --option is passed to Apache Beam. Default runner: FnApiRunner (in-process).
Multi-process locally:
  --runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing
INPUT and --out may be object-store URLs (s3://, gs://, azfs://: Beam's filesystems); an S3 API
server elsewhere than AWS: --s3_endpoint_url=http://HOST:PORT (or AWS_ENDPOINT_URL).
  beacon curate s3://bucket/facts.jsonl --out s3://bucket/curated"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("curate", help="score facts for drift and interference, write scored Parquet",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="fact files: JSONL, JSON, Parquet, CSV, CounterFact, ROME, zsRE")
    p.add_argument("--out", required=True, help="output folder or URL (scored/, rejected/, manifest.json)")
    p.add_argument("--config", help="JSON/YAML file; its 'curate' section (or the whole file) sets the keys "
                                    "below, flags override it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    add_config_flags(p, CurateConfig)
    p.set_defaults(run=run, accepts_extra=True)


def run(args: argparse.Namespace) -> int:
    from pipeline.run import curate

    config = load_configs(args, {"curate": CurateConfig})["curate"]
    manifest = curate(args.inputs, args.out, config, beam_args=args.extra, overwrite=args.overwrite)
    print_summary(manifest, args.out)
    return 0


def print_summary(manifest, out: str) -> None:
    c, out = manifest.counts, out.rstrip("/") or out
    print(f"\ncurated {c.input} records into {out}  (dataset {manifest.dataset_id})")
    print(f"  scored {c.scored}  kept {c.kept}  rejected {c.rejected}")
    for reason, n in sorted(manifest.counts.by_reason.items(), key=lambda kv: -kv[1]):
        print(f"    {reason:<18} {n}")
    rejected = manifest.files.get("rejected") or ["rejected/"]
    for stage, n in sorted(manifest.rejected_by_stage.items()):
        print(f"    rejected at {stage:<8} {n}  (see {out}/{rejected[0].rsplit('/', 1)[0]}/)")
    q = manifest.quantiles.get("drift", {})
    if q:
        print(f"  drift ({manifest.config['drift_definition']}): median {q.get('q0.5', float('nan')):.3f}"
              f"  p90 {q.get('q0.9', float('nan')):.3f}")
    if c.kept:
        from scoring.risk import AT_RISK

        print(f"  at risk: {c.at_risk} of {c.kept} kept facts (risk >= {AT_RISK}: likely not learned by the "
              "budget where most are; see the risk column)")
    print(f"  took {manifest.timings.get('total', 0):.1f}s  ->  {out}/manifest.json")
