"""A streamed multipart upload: the file part goes straight to disk, and stops at the size limit.

Starlette's form parser spools a whole file before the route sees it; this parser counts bytes as
they arrive and gives up (413) the moment the limit is passed, so a huge body never lands on disk.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

FILE_FIELD = "file"
TEXT_FIELDS = {"format"}  # other parts are ignored
MAX_TEXT_FIELD = 256
MAX_PARTS = 8
# The extensions the pipeline reads a format from; any other name is stored without one.
SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv")
COMPRESSIONS = (".gz", ".bz2")


class UploadError(Exception):
    """A request the upload cannot accept; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class Upload:
    path: Path  # a temporary file beside its final place; the caller moves or removes it
    filename: str | None
    bytes: int
    sha256: str
    fields: dict[str, str] = field(default_factory=dict)


TEMP_PREFIX = ".upload-"


def remove_stale_uploads(tmp_dir: Path, older_than_s: float) -> int:
    """Deletes upload temp files untouched for ``older_than_s`` (left by a killed server); returns how many.

    A live upload writes its temp file as bytes arrive, so its modification time stays recent.
    """
    removed, now = 0, time.time()
    for path in tmp_dir.glob(f"{TEMP_PREFIX}*"):
        try:
            if now - path.stat().st_mtime > older_than_s:
                path.unlink()
                removed += 1
        except OSError:
            continue  # gone already, or not ours to remove
    return removed


def safe_suffix(filename: str | None) -> str:
    """The file's extension if the pipeline knows it (``.jsonl``, ``.csv.gz`` ...), else ''."""
    name = (filename or "").lower().replace("\\", "/").rsplit("/", 1)[-1]
    compression = next((c for c in COMPRESSIONS if name.endswith(c)), "")
    name = name[: len(name) - len(compression)] if compression else name
    suffix = next((s for s in SUFFIXES if name.endswith(s)), "")
    return suffix + compression if suffix else ""


class _Receiver:
    def __init__(self, tmp_dir: Path, limit: int):
        self.tmp_dir, self.limit = tmp_dir, limit
        self.parts = 0
        self.headers: dict[str, str] = {}
        self._name = self._value = b""
        self.current: str | None = None
        self.text = bytearray()
        self.fields: dict[str, str] = {}
        self.file = None
        self.path: Path | None = None
        self.filename: str | None = None
        self.size = 0
        self.digest = hashlib.sha256()
        self.done = False

    # python-multipart callbacks ------------------------------------------------------------------
    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise UploadError(422, f"too many multipart parts (more than {MAX_PARTS})")
        self.headers, self.current, self.text = {}, None, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self._name.decode("latin-1").lower()] = self._value.decode("latin-1")
        self._name = self._value = b""

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self.headers.get("content-disposition", ""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if name == FILE_FIELD:
            if self.file is not None:
                raise UploadError(422, "send one file per upload (the multipart field 'file' came twice)")
            self.filename = params.get(b"filename", b"").decode("utf-8", "replace") or None
            self.path = self.tmp_dir / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
            self.file = open(self.path, "xb")
        self.current = name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self.current == FILE_FIELD:
            self.size += len(chunk)
            if self.size > self.limit:
                raise UploadError(413, f"the file is larger than the upload limit of {self.limit} bytes")
            self.digest.update(chunk)
            self.file.write(chunk)
        elif self.current in TEXT_FIELDS:
            self.text += chunk
            if len(self.text) > MAX_TEXT_FIELD:
                raise UploadError(422, f"multipart field {self.current!r} is longer than {MAX_TEXT_FIELD} bytes")

    def on_part_end(self) -> None:
        if self.current in TEXT_FIELDS:
            self.fields[self.current] = self.text.decode("utf-8", "replace").strip()

    def on_end(self) -> None:
        self.done = True

    def close(self, *, keep: bool) -> None:
        if self.file is not None:
            self.file.close()
        if not keep and self.path is not None:
            self.path.unlink(missing_ok=True)


async def receive_upload(request: Request, *, tmp_dir: Path, limit: int) -> Upload:
    """Streams the multipart body's ``file`` part to a temporary file in ``tmp_dir``.

    Raises:
        UploadError: not multipart (415), too large (413), malformed or without a file (422).
    """
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        raise UploadError(415, "send the dataset as multipart/form-data with the file in field 'file'")
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise UploadError(422, "the multipart Content-Type has no (valid) boundary")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise UploadError(413, f"the request is larger than the upload limit of {limit} bytes")
    receiver = _Receiver(tmp_dir, limit)
    callbacks = {name: getattr(receiver, name) for name in (
        "on_part_begin", "on_part_data", "on_part_end", "on_header_field", "on_header_value",
        "on_header_end", "on_headers_finished", "on_end")}
    kept = False
    try:
        parser = MultipartParser(boundary, callbacks, max_size=limit + 64 * 1024)
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit + 64 * 1024:
                raise UploadError(413, f"the request is larger than the upload limit of {limit} bytes")
            parser.write(chunk)
        parser.finalize()
        if not receiver.done:
            raise UploadError(422, "the multipart body ended early (no closing boundary)")
        if receiver.file is None:
            raise UploadError(422, "the multipart field 'file' is missing: send the dataset in it")
        if receiver.size == 0:
            raise UploadError(422, "the uploaded file is empty")
        receiver.file.flush()
        os.fsync(receiver.file.fileno())
        kept = True
        return Upload(path=receiver.path, filename=receiver.filename, bytes=receiver.size,
                      sha256=receiver.digest.hexdigest(), fields=receiver.fields)
    except UploadError:
        raise
    except Exception as e:  # noqa: BLE001 - the parser's errors are all a malformed body
        raise UploadError(422, f"malformed multipart body: {e}") from None
    finally:
        receiver.close(keep=kept)
