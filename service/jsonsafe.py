"""JSON that every reader accepts: non-finite numbers (NaN, ±Infinity) become null.

Python's ``json`` writes ``NaN`` and ``Infinity``; SQLite's JSON functions, browsers and Starlette's
JSON responses refuse them. Anything the service stores or answers goes through here.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (dicts, lists and tuples walked)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """Strict JSON text of ``value`` (non-finite numbers written as null)."""
    return json.dumps(finite(value), allow_nan=False)
