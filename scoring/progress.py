"""Progress of long work: a tqdm bar on a terminal, a plain line every few seconds anywhere else.

In CI logs, ``docker compose logs`` or a worker's stage log a bar is hundreds of carriage-return
frames on one line; there ``bar`` prints ``desc: done/total unit (pct), rate, time left`` as its own
line at most every ``LINE_SECONDS``, and once at the end (work done sooner prints nothing). tqdm
still counts, times and formats.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Iterable

from tqdm import tqdm  # not tqdm.auto: Beacon runs in terminals and logs, not notebooks

LINE_SECONDS = 5.0
_LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%), {rate_fmt}, {remaining} left"
_LINE_FORMAT_OPEN = "{desc}: {n_fmt} {unit}, {rate_fmt}, {elapsed} elapsed"


def quiet_library_bars() -> None:
    """Off a terminal, turns off the libraries' own bars (weights loading, ``datasets`` saving): they
    are carriage-return frames in a log, and Beacon's long work reports lines instead. Call it before
    they are imported; an explicit setting in the environment wins."""
    if not is_terminal():
        for switch in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
            os.environ.setdefault(switch, "1")


def is_terminal(stream: Any = None) -> bool:
    stream = stream if stream is not None else sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


class _Lines:
    """A stream for tqdm that turns its carriage-return frames into whole lines."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").rstrip()
        if text:
            self._stream.write(text + "\n")

    def flush(self) -> None:
        self._stream.flush()


class LineProgress(tqdm):
    """tqdm writing one whole line at most every ``mininterval`` seconds, and one at the end."""

    def __init__(self, iterable: Iterable | None = None, *, file: Any = None, **kwargs: Any) -> None:
        kwargs.setdefault("mininterval", LINE_SECONDS)
        kwargs.setdefault("delay", LINE_SECONDS)  # work shorter than that prints no line at all
        sized = kwargs.get("total") is not None or hasattr(iterable, "__len__")
        kwargs.update(bar_format=_LINE_FORMAT if sized else _LINE_FORMAT_OPEN, dynamic_ncols=False, leave=True)
        super().__init__(iterable, file=_Lines(file if file is not None else sys.stderr), **kwargs)


def bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str, unit: str = "it",
        stream: Any = None) -> tqdm:
    """A progress bar over ``iterable`` (or one to ``update`` by hand): tqdm's own on a terminal,
    ``LineProgress`` elsewhere."""
    stream = stream if stream is not None else sys.stderr
    cls = tqdm if is_terminal(stream) else LineProgress
    leave = {} if cls is LineProgress else {"leave": False}
    return cls(iterable, total=total, desc=desc, unit=unit, file=stream, **leave)
