"""What a dataset's scores mean: the scoring choices that the pipeline, the trainer and the evaluation share.

``ScoringSpec`` is the one place their defaults live. ``pipeline.config.CurateConfig`` extends it with
every other curation knob, so the pipeline writes them into the manifest's ``config``; the trainer and
the evaluation read them back through ``Manifest.scoring`` and get the same defaults for any key an
older manifest lacks (the first release read a missing ``drift_definition`` as ``expected`` while
the default was ``rank``).
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_LM = "bundled:smollm2-135m-instruct"
DEFAULT_ENCODER = "bundled:all-minilm-l6-v2"

DriftDefinition = Literal["sentence", "lm", "expected", "rank"]
DRIFT_DEFINITIONS: tuple[str, ...] = get_args(DriftDefinition)
# The scored column each definition writes; ``drift`` holds the chosen one.
DRIFT_COLUMNS: dict[str, str] = {name: f"drift_{name}" for name in DRIFT_DEFINITIONS}


class ScoringSpec(BaseModel):
    """The choices that give a dataset's scores their meaning; training and evaluation must share them."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str = Field(DEFAULT_LM, description="Base LM: 'bundled:<name>', a Hugging Face id or a local path.")
    encoder: str = Field(DEFAULT_ENCODER,
                         description="Sentence encoder: 'bundled:<name>', a HF id or a local path.")
    chat_template: bool = Field(False, description="Wrap prompts in the LM's chat template.")
    probe_max_new_tokens: int = Field(8, gt=0, le=64, description="Greedy answer length in tokens.")
    drift_definition: DriftDefinition = Field(
        "rank", description="Which drift variant fills the `drift` column (all are written); rank "
                            "predicts best what LoRA fails to learn (BENCHMARKS.md).")

    @classmethod
    def of(cls, config: dict) -> "ScoringSpec":
        """The scoring choices inside a full curate config (other keys ignored, missing ones defaulted)."""
        return cls.model_validate({k: v for k, v in config.items() if k in cls.model_fields})
