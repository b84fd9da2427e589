"""What both the pipeline and the trainer need from the models, below both of them.

``models`` resolves ``bundled:`` names (and converts the bundled GGUF once) and loads an LM or a
sentence encoder; ``lm_scores`` is the torch math of teacher-forced target scores and greedy answers;
``drift`` holds each drift definition once. The pipeline scores facts before training with these, the
evaluation after it, so "drift after training" means what the dataset's drift meant.

Import rule (tests/test_layers.py): everyone may import ``schemas`` and ``scoring``; ``pipeline`` and
``trainer`` never import each other; ``service`` may import both; nothing imports ``bench``.
Nothing heavy is imported here: torch and transformers load inside the functions that need them.
"""
