"""``beacon train D --out R``: a LoRA adapter trained on the kept facts of D, each fact's weight honoured.

Reads top to bottom: validate and record the config, set up model / data / Trainer
(``trainer.setup``), resume from the last complete checkpoint if there is one, train, save. Several
GPUs: ``accelerate launch`` this module's caller; nothing here is device specific. The run folder's
files are described (and read) in ``trainer.runs``.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from schemas import storage
from schemas.manifest import local_folder
from trainer.config import TrainConfig
from trainer.data import DatasetInfo, read_dataset_info, read_scored
from trainer.files import write_json
from trainer.runs import (CHECKPOINT_MARKER, RUN_CONFIG, SUMMARY, checkpoint_step, is_trained,
                          last_complete_checkpoint, publish_run, read_json, read_published_config,
                          work_folder)

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: str
    global_step: int
    max_steps: int
    resumed_from: str | None
    facts: int
    final_loss: float | None  # the last logged training loss (weighted)
    seconds: float
    steps_per_second: float | None
    peak_rss_mb: float
    peak_gpu_mb: float | None
    examples: int | None = None  # training examples: facts, plus trained paraphrases (augment)
    stable: int | None = None  # examples learned and stable at the end (schedule state; None: not tracked)
    stopped_when_learned: bool = False  # stop_when_learned ended the run before its length
    replay_prompts: int | None = None
    replay_source: str | None = None
    processes: int = 1  # training processes (torchrun / accelerate launch), each with its own batches
    published_to: str | None = None  # the URL the run was published to (``--out s3://…``)


def run_record(config: TrainConfig, info: DatasetInfo) -> dict[str, Any]:
    """What R/config.json holds: the config with dataset-derived defaults resolved, and the dataset."""
    from scoring.models import beacon_version

    scoring = info.scoring
    resolved = config.model_copy(update={
        "model": config.model or scoring.model,
        "chat_template": scoring.chat_template if config.chat_template is None else config.chat_template,
    })
    return {
        "train": resolved.model_dump(mode="json"),
        "dataset": {"path": info.path, "dataset_id": info.dataset_id, "config_hash": info.config_hash,
                    "manifest_sha256": info.manifest_sha256, "drift_definition": scoring.drift_definition,
                    "encoder": scoring.encoder},
        "beacon_version": beacon_version(),
        # The replay file's content, not only its name: an edited file would change the replay rows.
        "replay_sha256": _sha256(config.replay) if config.replay else None,
    }


def _sha256(path: str) -> str | None:
    import hashlib

    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None  # unreadable: training refuses it with the file named (trainer.replay)


def check_resume(previous: dict[str, Any], record: dict[str, Any], where: str = "this run folder") -> None:
    """Raises ValueError naming every key whose value differs from the run being resumed."""
    old, new = _comparable(previous), _comparable(record)
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(old.keys() | new.keys())
             if old.get(k) != new.get(k)]
    if diffs:
        raise ValueError(f"the run in {where} was started with another config "
                         f"({'; '.join(diffs)}); rerun with the same config to resume, or use another --out")


def _comparable(record: dict[str, Any]) -> dict[str, Any]:
    config = TrainConfig.model_validate(record["train"]).compared()
    return {**config, "dataset_id": record["dataset"]["dataset_id"],
            "dataset_config_hash": record["dataset"]["config_hash"], "replay_sha256": record.get("replay_sha256")}


def train(dataset_dir: str | Path, run_dir: str | Path, config: TrainConfig, *,
          work_dir: str | Path | None = None) -> TrainResult:
    """Train (or resume) a LoRA adapter on the kept facts of ``dataset_dir`` into ``run_dir``.

    ``run_dir`` may be an object-store URL: the run is trained (and resumed) in the local folder
    ``work_dir`` (default ``trainer.runs.work_folder(run_dir)``), then published to the URL without its
    checkpoints, ``files.json`` last (``trainer.runs.publish_run``). A URL that holds a run trained
    with another config is refused before any work, as a local folder is.

    Raises:
        ValueError: no kept facts, a fact does not fit, ``run_dir`` holds a run with another config,
            or ``run_dir`` is a URL that cannot be written.
        FileNotFoundError: ``dataset_dir`` is not a curated dataset.
    """
    if not storage.is_url(run_dir):
        folder = local_folder(run_dir, "--out")
        return _train(dataset_dir, folder, config, shown=str(folder))
    url = storage.check_prefix(str(run_dir), "--out")
    work = work_folder(url, work_dir)
    if is_main_process():
        storage.check_writable(url, "--out")
    published = read_published_config(url)
    result = _train(dataset_dir, work, config, shown=url, published=published)
    if is_main_process():
        files = publish_run(work, url)
        log.info("published %d files of %s to %s/ (files.json last)", len(files), work, url)
    return replace(result, published_to=url)


def _train(dataset_dir: str | Path, run_dir: Path, config: TrainConfig, *, shown: str,
           published: dict[str, Any] | None = None) -> TrainResult:
    started = time.perf_counter()
    main = is_main_process()
    # --- 1. validate the config against the dataset and any earlier attempt -----------------------
    info = read_dataset_info(dataset_dir)
    record = run_record(config, info)
    config = TrainConfig.model_validate(record["train"])  # dataset-derived defaults resolved
    config_path = run_dir / RUN_CONFIG
    if published is not None:
        check_resume(published, record, shown)  # what the URL holds now
    if config_path.is_file():
        check_resume(json.loads(config_path.read_text()), record,
                     shown if shown == str(run_dir) else f"{run_dir} (the working folder of {shown})")
    run_dir.mkdir(parents=True, exist_ok=True)
    if main:
        write_json(config_path, record)

    previous = read_json(run_dir / SUMMARY)
    if previous and previous.get("stopped_when_learned") and is_trained(run_dir):
        # Ended by stop_when_learned (same config: checked above): another step would change it.
        log.info("%s stopped when every fact was learned, at step %d; nothing to do", run_dir,
                 previous["global_step"])
        return TrainResult(**previous)
    facts = read_scored(dataset_dir, manifest=info.manifest).to_pylist()
    rows = [r for r in facts if r["keep"]]
    if not rows:
        raise ValueError(f"{dataset_dir} has no kept facts ({len(facts)} scored); nothing to train")
    kept_facts = len(rows)
    if config.augment == "paraphrases":
        from trainer.augment import augmented_rows

        rows = augmented_rows(rows, config.paraphrase_share)

    # --- 2. model, data, trainer --------------------------------------------------------------------
    import torch
    from transformers import TrainerCallback

    from trainer.setup import build_trainer
    from trainer.trace import FactTrace

    checkpoints = run_dir / "checkpoints"
    resume = last_complete_checkpoint(checkpoints)
    # The trace of an earlier attempt, up to the step resumed from: the visits after it happen again.
    trace = FactTrace.resumed(run_dir, checkpoint_step(resume) if resume else 0) if config.trace else None

    class StampCheckpoint(TrainerCallback):
        """Writes the config and dataset id into each checkpoint, so it is self-describing, and the
        trace so far beside it, so a resumed run's trace has every visit once."""

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            path = checkpoints / f"checkpoint-{state.global_step}"
            if path.is_dir() and main:
                if trace is not None:  # first: a resume from this checkpoint must find its visits
                    trace.write(run_dir)
                write_json(path / CHECKPOINT_MARKER, {**record, "global_step": state.global_step})

    setup = build_trainer(config, rows, checkpoints, callbacks=[StampCheckpoint()], trace=trace, facts=facts)
    model, tokenizer, trainer = setup.model, setup.tokenizer, setup.trainer
    if resume is not None and setup.schedule is not None:  # the same batches as the run it continues
        setup.schedule.load(resume)

    # --- 3. resume, train, save --------------------------------------------------------------------
    if resume is not None:
        log.info("resuming from %s (step %d)", resume, checkpoint_step(resume))
    else:
        log.info("training %d facts from scratch on %s (%s trainable LoRA parameters)", len(setup.examples),
                 config.model, f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,}")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    loop_start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    loop_seconds = time.perf_counter() - loop_start
    steps_done = trainer.state.global_step - (checkpoint_step(resume) if resume else 0)

    adapter = run_dir / "adapter"
    summary_path = run_dir / SUMMARY
    previous = read_json(summary_path)
    if (not steps_done and previous and (adapter / "adapter_config.json").is_file()
            and previous.get("global_step") == trainer.state.global_step):
        log.info("%s is already trained to step %d; nothing to do", run_dir, trainer.state.global_step)
        return TrainResult(**previous)
    if main:
        if trace is not None:
            trace.write(run_dir)
        tmp = run_dir / ".adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(adapter, ignore_errors=True)
        os.replace(tmp, adapter)

    result = TrainResult(
        run_dir=str(run_dir), global_step=trainer.state.global_step, max_steps=trainer.state.max_steps,
        resumed_from=str(resume) if resume else None, facts=kept_facts,
        final_loss=next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None),
        seconds=time.perf_counter() - started,
        steps_per_second=steps_done / loop_seconds if steps_done and loop_seconds > 0 else None,
        peak_rss_mb=peak_rss_mb(),
        peak_gpu_mb=torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        examples=len(setup.examples),
        stable=setup.schedule.stable_count() if setup.schedule is not None else None,
        stopped_when_learned=bool(config.stop_when_learned and setup.schedule.confirmed()
                                  and trainer.state.global_step < trainer.state.max_steps),
        replay_prompts=len(setup.replay) if setup.replay is not None else None,
        replay_source=setup.replay.source if setup.replay is not None else None,
        processes=trainer.args.world_size)
    if main:
        write_json(summary_path, asdict(result))
    log.info("trained %d steps; adapter in %s", result.global_step, adapter)
    return result


def is_main_process() -> bool:
    """Whether this process writes the run's files: the only one, or rank 0 under ``accelerate launch``."""
    return os.environ.get("RANK", "0") == "0"


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
