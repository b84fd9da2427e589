"""The input files, checked on the driver before any pipeline is built.

``check_inputs`` refuses what would otherwise become an empty or all-garbage dataset (a missing,
empty or binary file, a ``.json`` that is not JSON, a Parquet file pyarrow cannot open), decides each
file's container, and records the file's sha256 and size for the manifest. Every path goes through
Beam's ``FileSystems``, so local paths and object-store URLs are checked alike.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import posixpath
from dataclasses import dataclass
from typing import get_args

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.config import InputFormat
from schemas import storage

# The --format values (pipeline.config.InputFormat) besides 'auto': a container, or a layout it forces.
CONTAINERS = ("jsonl", "json", "parquet", "csv")
FORCED_LAYOUTS = ("counterfact", "rome", "zsre")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet",
               ".csv": "csv"}
_HEAD_BYTES = 64 * 1024
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class InputSpec:
    """One checked input file: where it is, how to read it, and its digest for the manifest."""

    path: str
    container: str             # one of CONTAINERS
    layout: str | None         # forced layout, or None to detect it per record
    source_index: int          # position of the file in the inputs given
    sha256: str
    size: int


def check_inputs(paths: list[str], fmt: str) -> list[InputSpec]:
    """Check every input file and decide how to read it, before any pipeline is built.

    Args:
        paths: local paths or any URL Beam's FileSystems opens (gs://, s3://, ...).
        fmt: a container ('jsonl', 'json', 'parquet', 'csv'), 'auto' (from the extension, or the
            content when the extension says nothing), or a layout ('counterfact', 'rome', 'zsre')
            which forces the layout and takes the container from the extension.

    Raises:
        ValueError: no paths, an unknown ``fmt``, or a file that is missing, empty, unreadable or
            not in the container it claims to be (the message names the file).
    """
    if not paths:
        raise ValueError("no input files given; pass at least one JSONL, JSON, Parquet or CSV file")
    known = get_args(InputFormat)
    if fmt not in known:
        raise ValueError(f"unknown input format {fmt!r}; use one of {', '.join(known)}")
    specs = []
    for index, path in enumerate(paths):
        size = _file_size(path)
        head = _read_head(path)
        if not head.strip():
            raise ValueError(f"input {path} holds only whitespace; it has no records")
        container = fmt if fmt in CONTAINERS else _container_of(path, head)
        if container == "json" and _looks_like_json_lines(head):
            container = "jsonl"  # a .json file of one object per line is JSON Lines
        container = _check_content(path, container, head)
        # Absolute before any worker starts: a worker may run in another folder (or on another host,
        # where a local path means nothing anyway).
        resolved = path if storage.is_url(path) else os.path.abspath(path)
        specs.append(InputSpec(path=resolved, container=container,
                               layout=fmt if fmt in FORCED_LAYOUTS else None,
                               source_index=index, sha256=_sha256(path), size=size))
    return specs


def _file_size(path: str) -> int:
    if "://" not in path:
        if not os.path.exists(path):
            raise ValueError(f"input {path} does not exist; check the path")
        if not os.path.isfile(path):
            raise ValueError(f"input {path} is not a file; pass the data files themselves")
        size = os.path.getsize(path)
    else:
        try:
            matches = FileSystems.match([path])[0].metadata_list
        except Exception as e:  # noqa: BLE001 - any filesystem error means we cannot read it
            raise ValueError(f"input {path} cannot be listed: {e}") from None
        exact = [m for m in matches if m.path.rstrip("/") == path.rstrip("/")]
        if not exact:
            raise ValueError(f"input {path} does not exist; check the path")
        size = exact[0].size_in_bytes
    if size == 0:
        raise ValueError(f"input {path} is empty; it has no records")
    return size


def _read_head(path: str) -> bytes:
    try:
        with FileSystems.open(path) as f:
            return f.read(_HEAD_BYTES).removeprefix(BOM)
    except Exception as e:  # noqa: BLE001 - permission, decompression or transport errors alike
        raise ValueError(f"input {path} cannot be read: {e}") from None


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    # The digest is of the bytes as stored, so a compressed input is hashed compressed.
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _container_of(path: str, head: bytes) -> str:
    name = path.lower()
    for suffix in (".gz", ".bz2"):  # FileSystems.open decompresses these transparently
        name = name.removesuffix(suffix)
    ext = posixpath.splitext(name)[1]
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    # No telling extension: look at the content, and refuse rather than guess wrongly.
    if head.startswith(b"PAR1"):
        return "parquet"
    first = head.lstrip()[:1]
    if first == b"[":
        return "json"
    if first == b"{":
        return "jsonl"
    raise ValueError(f"cannot tell the format of {path} from its extension or content; rename it "
                     f"(.jsonl, .json, .parquet, .csv) or pass --format")


def _looks_like_json_lines(head: bytes) -> bool:
    """True when the first line is a whole JSON object: JSON Lines, not one pretty-printed object."""
    stripped = head.lstrip()
    if not stripped.startswith(b"{"):
        return False
    line = stripped.split(b"\n", 1)[0]
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _has_json_line(head: bytes) -> bool:
    """Whether a line of ``head`` is a whole JSON object (a cut-off last line parses as none)."""
    return any(_looks_like_json_lines(line) for line in head.splitlines() if b"\x00" not in line)


def _check_content(path: str, container: str, head: bytes) -> str:
    """Refuse files that are not their container at all; single bad records are left to the reader.

    Returns the container, corrected to 'jsonl' for a JSON file that turns out to be JSON Lines.
    """
    if container == "parquet":
        _check_parquet(path)
        return container
    # A NUL byte in a JSON Lines file of otherwise good lines is one bad record (rejected with its
    # error by the reader), not a binary file.
    if b"\x00" in head and not (container == "jsonl" and _has_json_line(head)):
        raise ValueError(f"input {path} looks binary (it has NUL bytes), not {container.upper()} "
                         f"text; check the file or pass the right --format")
    first = head.lstrip()[:1]
    if container == "jsonl" and first != b"{":
        hint = "; it looks like a JSON array, use --format json" if first == b"[" else ""
        raise ValueError(f"input {path} is not JSON Lines: it starts with {first!r}, not '{{'{hint}")
    if container == "json":
        return _check_json(path, first)
    if container == "csv":
        try:
            header = next(csv.reader(io.StringIO(head.decode("utf-8", errors="replace"))), [])
        except csv.Error as e:
            raise ValueError(f"input {path} is not a readable CSV file: {e}") from None
        if not any(cell.strip() for cell in header):
            raise ValueError(f"input {path} has no CSV header row; the first row must name the "
                             f"columns (prompt, target, ...)")
    return container


def _check_json(path: str, first: bytes) -> str:
    if first not in (b"[", b"{"):
        raise ValueError(f"input {path} is not JSON: it starts with {first!r}; a JSON input must be "
                         f"an array of records or JSON Lines")
    # The JSON container is read whole anyway; parsing it here turns a broken file into one clear
    # error instead of a failed worker.
    try:
        with FileSystems.open(path) as f:
            data = json.loads(f.read().removeprefix(BOM).decode("utf-8"))
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and first == b"{":
            return "jsonl"  # objects one after another: JSON Lines whose first line was too long
        raise ValueError(f"input {path} is not valid JSON: {e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"input {path} is not valid JSON: {e}") from None
    if not isinstance(data, (list, dict)):
        raise ValueError(f"input {path} holds a JSON {type(data).__name__}, not an array of records")
    return "json"


def _check_parquet(path: str) -> None:
    import pyarrow.parquet as pq

    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            pq.ParquetFile(f).schema_arrow  # noqa: B018 - reading the footer is the check
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a broken file
        raise ValueError(f"input {path} is not a readable Parquet file: {e}") from None
