"""Which models a job may load: the worker runs them, so a request must not name any path on the host.

Allowed in a job: ``bundled:<name>`` (the offline defaults), ``models/<name>`` (a folder the operator
placed under the data root's ``models/``), and Hugging Face hub ids only where the operator allows
them (``BEACON_ALLOW_HUB_MODELS``). The command line is not confined: a user may load any path.
"""

from __future__ import annotations

import os
import re

from scoring.models import BUNDLED_ENCODERS, BUNDLED_LMS, BUNDLED_PREFIX
from service.datasets import Layout, PathError, confined

MODELS_PREFIX = "models/"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")


class ModelNotAllowed(ValueError):
    """A model spec a job may not use; the message says what is allowed."""


def check_job_model(spec: str, *, kind: str, layout: Layout, allow_hub: bool) -> None:
    """Raises ModelNotAllowed unless ``spec`` is a model a job may load (``kind``: 'lm' or 'encoder')."""
    bundled = BUNDLED_LMS if kind == "lm" else BUNDLED_ENCODERS
    if spec.startswith(BUNDLED_PREFIX):
        if spec[len(BUNDLED_PREFIX):] not in bundled:
            raise ModelNotAllowed(f"unknown bundled {kind} {spec!r}; known: "
                                  f"{', '.join(BUNDLED_PREFIX + n for n in sorted(bundled))}")
        return
    if spec.startswith(MODELS_PREFIX):
        try:
            folder = confined(layout.models, spec[len(MODELS_PREFIX):])
        except PathError as e:
            raise ModelNotAllowed(f"{spec!r} is not a model under the data root's models/ folder: {e}") from None
        if not folder.is_dir():
            raise ModelNotAllowed(f"{spec!r} is not a folder under the data root's models/ folder")
        return
    # A hub id that names a folder where the worker runs would be loaded from disk, not the hub.
    if allow_hub and _HUB_ID.match(spec) and ".." not in spec and not os.path.exists(spec):
        return
    hub = ("a Hugging Face hub id (org/name)" if allow_hub
           else "(hub ids only where the operator sets BEACON_ALLOW_HUB_MODELS)")
    raise ModelNotAllowed(f"{kind} {spec!r} is not allowed in a job: give {BUNDLED_PREFIX}<name>, "
                          f"{MODELS_PREFIX}<folder> (under the data root's models/), or {hub}")


def resolve_job_model(spec: str, layout: Layout) -> str:
    """What the worker loads for an allowed spec: ``models/<name>`` becomes the folder's path."""
    if spec.startswith(MODELS_PREFIX):
        return str(confined(layout.models, spec[len(MODELS_PREFIX):]))
    return spec
