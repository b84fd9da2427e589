"""`beacon run INPUT --out X`: curate -> train -> evaluate in one go (X/dataset/, X/run/).

Rerunning the same command picks up where it stopped: the dataset is reused when its inputs and curate
config are unchanged, training resumes from its last checkpoint, evaluation runs again.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

from pipeline.config import CurateConfig
from schemas import Manifest, storage
from schemas.manifest import local_folder
from service.commands.config_flags import add_config_flags, check_work_flag, load_configs
from trainer.config import EvalConfig, TrainConfig

EPILOG = """--config FILE holds sections "curate", "train" and "eval", any of them (JSON or YAML); flags
override it.
Any other --option is passed to Apache Beam for the curation step (e.g. --runner=DirectRunner)."""

# The base model and prompt format come from the curate config: training inherits them from the dataset.
TRAIN_SKIP = {"model", "chat_template", "target_modules", "progress"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="curate, train and evaluate in one go",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="fact files (as for `beacon curate`)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder or object-store URL: DIR/dataset/, DIR/run/, DIR/report.html")
    p.add_argument("--work", metavar="DIR",
                   help="with a URL --out: the local folder to work and resume in (default: one per URL "
                        "under $BEACON_WORK_DIR or ~/.cache/beacon/runs/)")
    p.add_argument("--config", metavar="FILE", help="JSON/YAML file with 'curate', 'train', 'eval' sections "
                                                  "(any subset)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over: re-curate and retrain even if DIR holds an earlier run")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="hide progress bars")
    add_config_flags(p, CurateConfig)
    add_config_flags(p, TrainConfig, skip=TRAIN_SKIP)
    p.set_defaults(run=run, accepts_extra=True)


def run(args: argparse.Namespace) -> int:
    # Every config is validated before the first minute of work.
    configs = load_configs(args, {"curate": CurateConfig, "train": TrainConfig, "eval": EvalConfig},
                           skip={"train": TRAIN_SKIP, "eval": set(EvalConfig.model_fields)},
                           extra={"train": {"progress": args.progress}, "eval": {"progress": args.progress}})
    curate_config, train_config, eval_config = configs["curate"], configs["train"], configs["eval"]
    url, out = _output(args)
    dataset_dir, run_dir = out / "dataset", out / "run"
    if Manifest.exists_in(url or out):
        raise ValueError(f"--out {url or out} is a curated dataset; `beacon run` writes dataset/ and run/ "
                         "under it and needs a folder of its own")
    started = time.perf_counter()
    if url:
        print(f"working in {out} (resumes there), publishing to {url}/ at the end", flush=True)

    print(f"[1/3] curate {' '.join(args.inputs)} -> {dataset_dir}", flush=True)
    if args.overwrite:
        shutil.rmtree(run_dir, ignore_errors=True)
    if not args.overwrite and _reusable(dataset_dir, args.inputs, curate_config):
        print(f"  reusing {dataset_dir} (same inputs and curate config)")
    else:
        from pipeline.run import curate
        from service.commands.curate import print_summary as print_curated

        manifest = curate(list(args.inputs), str(dataset_dir), curate_config,
                          beam_args=args.extra or None, overwrite=args.overwrite)
        print_curated(manifest, str(dataset_dir))

    print(f"\n[2/3] train -> {run_dir}", flush=True)
    from service.commands.train import print_summary as print_trained
    from trainer.train import train

    if url and not args.overwrite:
        _check_published_config(url, dataset_dir, train_config)
    print_trained(train(dataset_dir, run_dir, train_config))

    print(f"\n[3/3] evaluate {run_dir}", flush=True)
    from service.commands.eval import print_summary as print_evaluated
    from trainer.evaluate import evaluate

    print_evaluated(evaluate(run_dir, eval_config), str(run_dir))
    from service.report import write_report

    report = write_report(out)
    if url:
        from service.publish import publish_outputs

        published = publish_outputs(dataset_dir, run_dir, url, files=(Path(report.path),))
        print(f"\npublished -> {url}/ (dataset/ committed, manifest last; run/ without its checkpoints, "
              f"files.json last: {published['run_files']} files; report.html)")
    print(f"\ndone in {time.perf_counter() - started:.0f}s: dataset {dataset_dir}/  run {run_dir}/")
    print(f"  report -> {report.path}  (one HTML file: open it in a browser, no network needed)")
    print("next:")
    for hint in next_commands(url or args.out, local=out if url else None):
        print(f"  {hint}")
    return 0


# The facts that did not stick, with what the model says now and what it said before training.
NOT_LEARNED_SQL = ("select e.fact_id, s.prompt, e.target, e.answer, e.answer_before, s.drift "
                   "from eval e join scored s using (fact_id) where e.kept and not e.efficacy")


def next_commands(out: str, local: Path | None = None) -> list[str]:
    """The commands ``beacon run`` suggests at its end, quoted for a POSIX shell: they run as printed
    (tests/service/test_cli.py runs them). ``out`` may be the URL the run was published to; the query
    and the export then read ``local``, the folder it was made in (a query of a URL sees its dataset
    only, not the run's eval.parquet; an export is written locally)."""
    beacon, folder = program(), shlex.quote(out)
    here = local if local is not None else Path(out)
    return [f"{beacon} stats {folder}",
            f"{beacon} query {shlex.quote(str(here))} {shlex.quote(NOT_LEARNED_SQL)}",
            f"{beacon} export {shlex.quote(str(here))} --format hf --out {shlex.quote(str(here / 'export-hf'))} "
            "--overwrite"]


def _check_published_config(url: str, dataset_dir: Path, config: TrainConfig) -> None:
    """Refuses, before training, to publish over ``URL/run/`` holding a run trained with another config
    or on another dataset (as `beacon train --out URL` refuses)."""
    from trainer.data import read_dataset_info
    from trainer.runs import read_published_config
    from trainer.train import check_resume, run_record

    where = storage.join(url, "run")
    published = read_published_config(where)
    if published is not None:
        check_resume(published, run_record(config, read_dataset_info(dataset_dir)), where)


def _output(args: argparse.Namespace) -> tuple[str | None, Path]:
    """(the URL to publish to or None, the local folder to work in) for ``--out``/``--work``."""
    check_work_flag(args)
    if not storage.is_url(args.out):
        return None, local_folder(args.out, "--out")
    from trainer.runs import PUBLISHED, work_folder

    url = storage.check_prefix(args.out, "--out")
    work = work_folder(url, args.work)
    storage.check_writable(url, "--out")
    published = storage.join(url, "run", PUBLISHED)
    if storage.exists(published) and not (work / "run").is_dir() and not args.overwrite:
        raise FileExistsError(f"--out {url} holds a published run ({published}) that was not made in "
                              f"{work}; pass --overwrite to replace it, or --work with the folder it was made in")
    return url, work


def program() -> str:
    """How to call Beacon again the way this process was called: ``beacon`` when that is what PATH
    finds, else the script's path as typed (``.venv/bin/beacon`` after `make setup`), else ``python -m``."""
    argv0 = sys.argv[0]
    found = shutil.which("beacon")
    if found and os.path.realpath(found) == os.path.realpath(argv0):
        return "beacon"
    if os.path.basename(argv0) == "beacon" and os.path.isfile(argv0):
        return shlex.quote(argv0)
    return f"{shlex.quote(sys.executable)} -m service.cli"


def _reusable(dataset_dir: Path, inputs: list[str], config: CurateConfig) -> bool:
    """Whether ``dataset_dir`` was curated from these very files with this config."""
    try:
        manifest = Manifest.read(dataset_dir)
    except (OSError, ValueError):
        return False  # none yet, or damaged: curate again
    if manifest.config_hash != config.config_hash():
        return False
    files = [Path(i) for i in inputs]
    if not all(f.is_file() for f in files):
        return False  # folders or globs: re-curate rather than guess what they expand to
    recorded = [entry.sha256 for entry in manifest.inputs]
    return recorded == [_sha256(f) for f in files]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
