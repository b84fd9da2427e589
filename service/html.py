"""The Jinja2 environment of Beacon's pages: the dashboard's shell and the `beacon report` file."""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def templates() -> Any:
    """``service/templates`` with HTML autoescaping and the number filters the templates use."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("service", "templates"),
                             autoescape=jinja2.select_autoescape(["html"]))
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.0f}%"
    env.filters["num"] = lambda v: "–" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)
    return env
