"""Loading the base LM (bundled, HF id or local path) and a trained run's adapter on top of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_base(spec: str, *, device: str | None = None) -> tuple[Any, Any, str]:
    """(model, tokenizer, resolved path) for ``spec``; float32, eval mode, on ``device`` (default: auto).

    Bundled names resolve to the converted local checkpoint, so nothing is downloaded for them.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.models import resolve_lm

    path = resolve_lm(spec)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.to(device or default_device())
    model.eval()
    return model, tokenizer, path


def load_trained(run_dir: str | Path, base_spec: str, *, device: str | None = None) -> tuple[Any, Any]:
    """(peft model, tokenizer): the base model with the run's saved adapter, as ``beacon eval`` uses it.

    Raises:
        FileNotFoundError: the run has no ``adapter/`` (training did not finish).
    """
    from peft import PeftModel

    adapter = Path(run_dir) / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter} has no adapter; run `beacon train` to completion first")
    model, tokenizer, _ = load_base(base_spec, device=device)
    model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    return model, tokenizer


def with_lora(model: Any, config: Any) -> Any:
    """``model`` in training mode with a fresh LoRA adapter as ``config`` (a TrainConfig) sets it."""
    from peft import LoraConfig, get_peft_model

    model.train()
    return get_peft_model(model, LoraConfig(
        r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules), bias="none", task_type="CAUSAL_LM"))


def default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "cpu"
