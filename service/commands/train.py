"""`beacon train DATASET --out RUN`: a LoRA adapter on the kept facts, weights honoured, resumable."""

from __future__ import annotations

import argparse

from service.commands.config_flags import add_config_flags, check_work_flag, load_configs
from trainer.config import TrainConfig

EPILOG = """Rerun the same command after an interruption: training resumes from the last checkpoint
(RUN/checkpoints/) to the same total step count. A different config is an error naming the keys.
Several GPUs: accelerate launch --multi_gpu -m service.cli train DATASET --out RUN
Several CPU processes: python -m torch.distributed.run --nproc_per_node N -m service.cli train DATASET --out RUN
RUN may be an object-store URL (s3://bucket/runs/r1): training runs in a local working folder (--work,
default ~/.cache/beacon/runs/, or $BEACON_WORK_DIR), which keeps the checkpoints, and the run is
published to RUN without them, files.json last. Rerun the same command to resume there."""

# Config-file only: lists do not make good flags.
SKIP = {"target_modules"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a LoRA adapter on a curated dataset (resumes if interrupted)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", metavar="DATASET", help="curated dataset folder or object-store URL (written by `beacon curate`)")
    p.add_argument("--out", required=True, metavar="RUN",
                   help="run folder or object-store URL: adapter/, config.json, checkpoints/, train_summary.json")
    p.add_argument("--work", metavar="DIR",
                   help="with a URL --out: the local folder to train and resume in (default: one per URL "
                        "under $BEACON_WORK_DIR or ~/.cache/beacon/runs/)")
    p.add_argument("--config", metavar="FILE",
                   help="JSON/YAML file; its 'train' section (or the whole file) sets the keys below")
    add_config_flags(p, TrainConfig, skip=SKIP)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from trainer.train import train

    config = load_configs(args, {"train": TrainConfig})["train"]
    check_work_flag(args)
    result = train(args.dataset, args.out, config, work_dir=args.work)
    print_summary(result)
    return 0


def print_summary(result) -> None:
    resumed = f", resumed from {result.resumed_from}" if result.resumed_from else ""
    speed = f"  {result.steps_per_second:.2f} steps/s" if result.steps_per_second else ""
    loss = f"  final loss {result.final_loss:.3f}" if result.final_loss is not None else ""
    processes = f" on {result.processes} processes" if result.processes > 1 else ""
    print(f"\ntrained {result.facts} facts for {result.global_step}/{result.max_steps} steps{processes}{resumed}")
    if result.stable is not None:
        ended = ("  stopped: every fact learned and stable" if result.stopped_when_learned
                 else "  (not every fact was stable when the steps ran out)"
                 if result.stable < (result.examples or result.facts) else "")
        print(f"  learned and stable: {result.stable} of {result.examples or result.facts} examples{ended}")
    if result.replay_prompts:
        print(f"  locality replay: {result.replay_prompts} prompts ({result.replay_source})")
    print(f" {loss}{speed}  peak memory {result.peak_rss_mb:.0f} MiB  took {result.seconds:.0f}s")
    print(f"  adapter -> {result.run_dir}/adapter/   config -> {result.run_dir}/config.json")
    if result.published_to:
        print(f"  published -> {result.published_to}/ (files.json last; the checkpoints stay in "
              f"{result.run_dir}/)")
