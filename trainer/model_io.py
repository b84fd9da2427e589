"""A LoRA adapter on the base LM: a fresh one for training, a run's saved one for evaluation.

The base LM itself is loaded by ``scoring.models.load_lm``, the loader the pipeline's probe uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_trained(run_dir: str | Path, base_spec: str, *, device: str | None = None) -> tuple[Any, Any]:
    """(peft model, tokenizer): the base model with the run's saved adapter, as ``beacon eval`` uses it.

    Raises:
        FileNotFoundError: the run has no ``adapter/`` (training did not finish).
    """
    from peft import PeftModel

    from scoring.models import load_lm

    adapter = Path(run_dir) / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter} has no adapter; run `beacon train` to completion first")
    model, tokenizer, _ = load_lm(base_spec, device=device)
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
