"""``beacon train D --out R``: a LoRA adapter trained on the kept facts of D, each fact's weight honoured.

Reads top to bottom: validate and record the config, set up model / data / Trainer, resume from the
last complete checkpoint if there is one, train, save. Several GPUs: ``accelerate launch`` this module's
caller; nothing here is device specific.

Files: ``R/config.json`` (the config, dataset id and manifest hash; compared on every resume),
``R/checkpoints/checkpoint-N/`` (adapter, optimizer, scheduler, RNG, trainer state, ``beacon_run.json``),
``R/adapter/`` (peft ``save_pretrained``), ``R/train_summary.json``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainer.config import TrainConfig
from trainer.data import DatasetInfo, read_dataset_info, read_scored
from trainer.files import write_json

log = logging.getLogger(__name__)

RUN_CONFIG = "config.json"
CHECKPOINT_MARKER = "beacon_run.json"


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


def run_record(config: TrainConfig, info: DatasetInfo) -> dict[str, Any]:
    """What R/config.json holds: the config with dataset-derived defaults resolved, and the dataset."""
    resolved = config.model_copy(update={
        "model": config.model or info.model,
        "chat_template": info.chat_template if config.chat_template is None else config.chat_template,
    })
    from importlib.metadata import PackageNotFoundError, version

    try:
        beacon_version = version("beacon")
    except PackageNotFoundError:
        beacon_version = "unknown"
    return {
        "train": resolved.model_dump(mode="json"),
        "dataset": {"path": info.path, "dataset_id": info.dataset_id, "config_hash": info.config_hash,
                    "manifest_sha256": info.manifest_sha256, "drift_definition": info.drift_definition,
                    "encoder": info.encoder},
        "beacon_version": beacon_version,
    }


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
            "dataset_config_hash": record["dataset"]["config_hash"]}


def last_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The newest checkpoint whose save finished (its trainer_state.json, written last, parses)."""
    if not checkpoints.is_dir():
        return None
    found = []
    for path in checkpoints.iterdir():
        m = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if not m or not path.is_dir():
            continue
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue  # killed while saving: skip it
        found.append((int(m.group(1)), path))
    return max(found)[1] if found else None


def train(dataset_dir: str | Path, run_dir: str | Path, config: TrainConfig) -> TrainResult:
    """Train (or resume) a LoRA adapter on the kept facts of ``dataset_dir`` into ``run_dir``.

    Raises:
        ValueError: no kept facts, a fact does not fit, or ``run_dir`` holds a run with another config.
        FileNotFoundError: ``dataset_dir`` is not a curated dataset.
    """
    started = time.perf_counter()
    # --- 1. validate the config against the dataset and any earlier attempt -----------------------
    run_dir = Path(run_dir)
    info = read_dataset_info(dataset_dir)
    record = run_record(config, info)
    config = TrainConfig.model_validate(record["train"])  # dataset-derived defaults resolved
    config_path = run_dir / RUN_CONFIG
    if config_path.is_file():
        check_resume(json.loads(config_path.read_text()), record, str(run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    if _is_main_process():
        write_json(config_path, record)

    table = read_scored(dataset_dir, columns=["fact_id", "prompt", "target", "keep", "weight",
                                              "source", "position"])
    rows = [r for r in table.to_pylist() if r["keep"]]
    if not rows:
        raise ValueError(f"{dataset_dir} has no kept facts ({table.num_rows} scored); nothing to train")

    # --- 2. model, data, trainer --------------------------------------------------------------------
    import torch
    from transformers import TrainerCallback, set_seed

    from trainer.data import ExampleDataset, WeightedCollator, build_examples
    from trainer.model_io import load_base, with_lora
    from trainer.weighted_trainer import WeightedTrainer

    set_seed(config.seed)
    model, tokenizer, base_path = load_base(config.model)
    model = with_lora(model, config)
    examples = build_examples(rows, tokenizer, chat_template=bool(config.chat_template),
                              add_eos=config.add_eos, max_seq_len=config.max_seq_len,
                              use_weights=config.use_weights)

    checkpoints = run_dir / "checkpoints"
    args = training_arguments(config, checkpoints)

    class StampCheckpoint(TrainerCallback):
        """Writes the config and dataset id into each checkpoint, so it is self-describing."""

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            path = checkpoints / f"checkpoint-{state.global_step}"
            if path.is_dir() and args.should_save:
                write_json(path / CHECKPOINT_MARKER, {**record, "global_step": state.global_step})

    trainer = WeightedTrainer(
        model=model, args=args, train_dataset=ExampleDataset(examples),
        data_collator=WeightedCollator(tokenizer.pad_token_id), callbacks=[StampCheckpoint()],
        loss_reduction=config.loss_reduction, semantic_weight=config.semantic_weight)

    # --- 3. resume, train, save --------------------------------------------------------------------
    resume = last_complete_checkpoint(checkpoints)
    if resume is not None:
        log.info("resuming from %s (step %s)", resume, resume.name.split("-")[-1])
    else:
        log.info("training %d facts from scratch on %s (%s trainable LoRA parameters)", len(examples),
                 base_path, f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,}")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    loop_start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    loop_seconds = time.perf_counter() - loop_start
    steps_done = trainer.state.global_step - (int(resume.name.split("-")[-1]) if resume else 0)

    adapter = run_dir / "adapter"
    summary_path = run_dir / "train_summary.json"
    if not steps_done and (adapter / "adapter_config.json").is_file() and summary_path.is_file():
        previous = json.loads(summary_path.read_text())
        if previous.get("global_step") == trainer.state.global_step:
            log.info("%s is already trained to step %d; nothing to do", run_dir, trainer.state.global_step)
            return TrainResult(**previous)
    if trainer.args.should_save:  # the main process, under accelerate launch
        tmp = run_dir / ".adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(adapter, ignore_errors=True)
        os.replace(tmp, adapter)

    result = TrainResult(
        run_dir=str(run_dir), global_step=trainer.state.global_step, max_steps=trainer.state.max_steps,
        resumed_from=str(resume) if resume else None, facts=len(examples),
        final_loss=next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None),
        seconds=time.perf_counter() - started,
        steps_per_second=steps_done / loop_seconds if steps_done and loop_seconds > 0 else None,
        peak_rss_mb=peak_rss_mb(),
        peak_gpu_mb=torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None)
    if trainer.args.should_save:
        write_json(summary_path, asdict(result))
    log.info("trained %d steps; adapter in %s", result.global_step, adapter)
    return result


def training_arguments(config: TrainConfig, output_dir: Path, **overrides: Any) -> Any:
    """TrainingArguments for ``config`` (``overrides`` win): Beacon's trainer and the benchmark share them."""
    import torch
    from transformers import TrainingArguments

    if config.precision != "fp32" and not torch.cuda.is_available():
        raise ValueError(f"precision={config.precision!r} needs a GPU; use precision: fp32 on CPU")
    kwargs = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        num_train_epochs=config.epochs or 1.0,
        max_steps=config.max_steps or -1,
        seed=config.seed,
        bf16=config.precision == "bf16",
        fp16=config.precision == "fp16",
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        logging_steps=config.logging_steps,
        report_to="none",
        remove_unused_columns=False,  # keep 'weight'
        disable_tqdm=not config.progress,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    return TrainingArguments(**{**kwargs, **overrides})


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
