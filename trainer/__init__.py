"""Beacon's trainer: weighted LoRA training on a curated dataset, and what the model learned.

Modules, lightest first: ``config`` (TrainConfig, EvalConfig), ``metrics`` (pure aggregation and the
``eval.parquet`` schema), ``data`` (scored rows -> examples), ``lm_scores`` (teacher-forced scores and
greedy answers, shared with the pipeline), ``loss`` (the weighted loss, one pure function),
``weighted_trainer`` (HF Trainer subclass), ``model_io``, ``train``, ``evaluate``.
Nothing heavy is imported here: ``import trainer`` costs no torch.
"""
