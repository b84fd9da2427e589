"""Beacon's trainer: weighted LoRA training on a curated dataset, and what the model learned.

Modules, lightest first: ``config`` (TrainConfig, EvalConfig), ``runs`` (a run folder's files, read
without torch), ``metrics`` (pure aggregation and the ``eval.parquet`` schema), ``data`` (scored rows ->
examples), ``loss`` (the weighted loss, one pure function), ``weighted_trainer`` (HF Trainer subclass),
``model_io`` (LoRA adapters), ``setup`` (model + LoRA + data + Trainer, for every run), ``train``,
``evaluate``. The LM scoring math it shares with the pipeline lives in ``scoring``.
Nothing heavy is imported here: ``import trainer`` costs no torch.
"""
