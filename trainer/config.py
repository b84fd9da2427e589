"""TrainConfig and EvalConfig: every knob of ``beacon train`` / ``beacon eval``, as a key of a config
file's ``train:`` / ``eval:`` section (read by ``schemas.config_file``, like every section)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from schemas.config_file import ConfigSection

Scheduler = Literal["constant", "constant_with_warmup", "linear", "cosine"]
Reduction = Literal["sample", "token"]
Precision = Literal["fp32", "bf16", "fp16"]
Schedule = Literal["plain", "adaptive"]
Augment = Literal["none", "paraphrases"]

# Keys that change nothing the run learns: they may differ when a run is resumed.
# (``trace`` is compared: a trace switched on mid-run would start mid-run and its history read wrong.)
NOT_COMPARED_ON_RESUME = frozenset({"save_steps", "save_total_limit", "logging_steps", "progress"})


LENGTH_KEYS = ("epochs", "max_steps")
# Bounds a worker can honour: a run past them would not end in any reasonable time (or memory), and
# a number past them is a typo or a probe; seeds are what numpy's and torch's generators take.
MAX_STEPS = 10_000_000


class TrainConfig(ConfigSection):
    """How a LoRA adapter is trained on the kept facts of a curated dataset."""

    # --- model and data --------------------------------------------------------------------------
    model: str | None = Field(
        None, description="Base LM: 'bundled:<name>', a HF id or a local path; None = the LM the "
                          "dataset was scored with (its manifest), so drift means the same thing.")
    chat_template: bool | None = Field(
        None, description="Wrap prompts in the LM's chat template; None = as the dataset was probed.")
    add_eos: bool = Field(True, description="Train the end-of-sequence token after the target.")
    max_seq_len: int = Field(256, gt=1, le=131_072, description="Prompt + target tokens; a fact that does not fit "
                                                    "is an error (the target is never cut).")
    use_weights: bool = Field(True, description="Honour each fact's `weight`; False trains every kept "
                                                "fact with weight 1 (the ablation).")

    # --- LoRA ------------------------------------------------------------------------------------
    lora_rank: int = Field(8, gt=0, le=1024, description="LoRA rank r.")
    lora_alpha: float = Field(16.0, gt=0, le=1e6, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], max_length=64,
        description="Module names LoRA wraps (peft `target_modules`).")

    # --- optimisation ----------------------------------------------------------------------------
    learning_rate: float = Field(1e-3, gt=0, le=10.0, description="AdamW learning rate.")
    lr_scheduler: Scheduler = Field("constant", description="Learning-rate schedule.")
    warmup_steps: int = Field(0, ge=0, le=MAX_STEPS, description="Warm-up optimizer steps (not with 'constant').")
    weight_decay: float = Field(0.0, ge=0.0, le=100.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0.0, le=1e6, description="Gradient clipping; 0 = off.")
    epochs: float | None = Field(10.0, gt=0, le=100_000, description="Passes over the kept facts (or max_steps).")
    max_steps: int | None = Field(None, gt=0, le=MAX_STEPS, description="Optimizer steps in total (or epochs).")
    batch_size: int = Field(8, gt=0, le=65_536, description="Facts per micro-batch, per device.")
    gradient_accumulation_steps: int = Field(1, gt=0, le=65_536, description="Micro-batches per optimizer step.")
    seed: int = Field(0, ge=0, lt=2**32, description="Seed of LoRA init, data order and dropout.")
    precision: Precision = Field("fp32", description="fp32, or bf16 / fp16 mixed precision (GPU).")

    # --- loss ------------------------------------------------------------------------------------
    loss_reduction: Reduction = Field(
        "sample", description="sample: mean token loss per fact, then sum w*l / sum w; token: every "
                              "target token weighted by its fact's w (equal w = the plain HF loss).")
    semantic_weight: float = Field(
        0.0, ge=0.0, le=100.0, description="Add this times 1 - cos(sum_v p(v) E[v], E[target token]) at each "
                                 "target position (the LM's own embedding space); 0 = off.")

    # --- the closed loop (trainer.schedule, trainer.replay) -----------------------------------------
    schedule: Schedule = Field(
        "plain", description="plain: shuffled epochs over every fact; adaptive: batches filled with the facts "
                             "not learned and stable yet, stable ones rehearsed at rehearse_rate.")
    stop_when_learned: bool = Field(
        False, description="End training once every fact is learned and stable (or the length runs out).")
    stable_visits: int = Field(2, ge=1, le=1000, description="k: a fact is stable once learned on its last k "
                                                              "visits (and stable_prob holds).")
    stable_prob: float = Field(0.5, ge=0.0, le=1.0, description="tau: ... and its lowest target-token "
                                                                 "probability at the last visit is at least this.")
    rehearse_rate: float = Field(0.1, ge=0.0, le=1.0, description="r: share of each adaptive round's slots "
                                                                   "that rehearse stable facts.")
    locality_weight: float = Field(
        0.0, ge=0.0, le=100.0, description="Add this times KL(base || adapted) of the next-token distributions "
                                           "on replay prompts (base = adapter disabled); 0 = off.")
    replay: str | None = Field(
        None, max_length=4096, description="Replay prompts for locality_weight: a .txt (one per line) or .jsonl "
                                           "({\"prompt\": ...}) file; None = the taught prompts' templates "
                                           "filled with other facts' subjects (trainer.replay).")
    replay_batch_size: int = Field(4, gt=0, le=65_536, description="Replay prompts per micro-batch.")
    augment: Augment = Field(
        "none", description="paraphrases: also train on a share of each fact's paraphrases (the rest stay "
                            "for evaluation); none: paraphrases are for evaluation only.")
    paraphrase_share: float = Field(0.5, gt=0.0, lt=1.0, description="With augment: paraphrases, the share "
                                                                     "of each fact's paraphrases trained on "
                                                                     "(at least one is always held out).")

    # --- checkpoints and logs --------------------------------------------------------------------
    save_steps: int = Field(50, gt=0, le=MAX_STEPS, description="Checkpoint every this many optimizer steps.")
    save_total_limit: int | None = Field(2, gt=0, le=10_000, description="Checkpoints kept (oldest deleted).")
    logging_steps: int = Field(10, gt=0, le=MAX_STEPS, description="Log the loss every this many steps.")
    progress: bool = Field(True, description="Show progress bars.")
    trace: bool = Field(True, description="Write R/trace.parquet: each fact's loss, target probability, "
                                          "learned or not and distance at every visit (from the training "
                                          "forward pass; changes nothing learned).")

    @model_validator(mode="before")
    @classmethod
    def _one_length(cls, data: Any) -> Any:
        # Giving max_steps replaces the default epochs, and vice versa: a run has one length.
        if isinstance(data, dict):
            given = [k for k in LENGTH_KEYS if data.get(k) is not None]
            if len(given) == 1:
                data = {**data, **{k: None for k in LENGTH_KEYS if k not in given and k not in data}}
        return data

    @classmethod
    def merge(cls, base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
        """A layer that sets one length (epochs or max_steps) replaces the other from earlier layers."""
        given = [k for k in LENGTH_KEYS if override.get(k) is not None]
        if len(given) == 1:
            base = {k: v for k, v in base.items() if k not in LENGTH_KEYS}
        return {**base, **override}

    @model_validator(mode="after")
    def _check_cross_fields(self) -> "TrainConfig":
        if (self.epochs is None) == (self.max_steps is None):
            raise ValueError(f"give exactly one of epochs and max_steps (got epochs={self.epochs}, "
                             f"max_steps={self.max_steps})")
        if self.lr_scheduler == "constant" and self.warmup_steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} needs lr_scheduler "
                             "'constant_with_warmup', 'linear' or 'cosine', not 'constant'")
        if self.max_steps is not None and self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be below max_steps ({self.max_steps})")
        if self.replay is not None and not self.locality_weight:
            raise ValueError(f"replay={self.replay!r} is set but locality_weight is 0, so the replay prompts "
                             "would not be used; set locality_weight > 0 (e.g. 1.0)")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module (e.g. ['q_proj', 'v_proj'])")
        return self

    def compared(self) -> dict[str, Any]:
        """The values a resumed run must share with the run it continues."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in NOT_COMPARED_ON_RESUME}


class EvalConfig(ConfigSection):
    """How ``beacon eval`` measures a trained run."""

    batch_size: int = Field(16, gt=0, le=65_536, description="Prompts per forward / generate batch.")
    extra_new_tokens: int = Field(2, ge=0, le=256, description="Greedy answer length = target tokens + this.")
    locality_new_tokens: int | None = Field(
        None, gt=0, le=64, description="Base-model answer tokens compared on locality prompts; None = as "
                                       "many as the prompt's recorded answer has (the answer slot).")
    pushed_away_epsilon: float = Field(0.01, ge=0.0, le=2.0,
                                       description="pushed_away = drift after > drift before + this.")
    progress: bool = Field(True, description="Show progress bars.")
