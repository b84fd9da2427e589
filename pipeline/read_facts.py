"""ReadFacts: input files -> normalised facts, and dead letters for every record that is not one.

The files were checked on the driver first (``pipeline.inputs.check_inputs``). ``ReadFacts``
streams each file into ``(source_index, position, payload)`` records, spreads them over workers
(``Reshuffle``: one big file must not pin the work to one worker), then parses and validates each
one into the ``facts`` or the ``rejected`` output. Nothing is dropped: every record read lands in
exactly one of them, and both are counted in the ``beacon`` metrics namespace.

``position`` is the 0-based index of a record in its file: the non-blank line for JSON Lines
(malformed lines count, blank lines do not), the element of a JSON array, the data row of a CSV
(header excluded), the row of a Parquet file.

JSON arrays are loaded whole into memory by one worker; large inputs should be JSON Lines or Parquet.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from typing import Any, Iterator

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline import METRICS_NS
from pipeline.config import CurateConfig
from pipeline.formats import RecordError, detect_layout, to_fact
from pipeline.inputs import BOM, InputSpec
from schemas.rejected import truncate_raw

_PARQUET_BATCH_ROWS = 1024
# JSON may escape a lone UTF-16 surrogate ("\udcff"): valid JSON, but no UTF-8 text can hold it.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_NOT_UTF8 = "not valid UTF-8; re-encode the file as UTF-8"


class ReadFacts(beam.PTransform):
    """Read checked inputs into ``facts`` (Fact dicts), ``rejected`` (dead letters) and ``read`` (one
    element: how many records the files held, counted as they were read, before any parsing)."""

    def __init__(self, specs: list[InputSpec], config: CurateConfig):
        super().__init__()
        if not specs:
            raise ValueError("ReadFacts needs at least one input; call check_inputs first")
        self._specs = list(specs)
        self._config = config

    def expand(self, pbegin):
        records = (
            pbegin
            | "ListInputs" >> beam.Create(self._specs)
            | "SpreadFiles" >> beam.Reshuffle()  # unfused from Create: files are read in parallel
            | "ReadRecords" >> beam.ParDo(_ReadRecordsFn()))
        parsed = (
            records
            | "Spread" >> beam.Reshuffle()
            | "ParseAndValidate" >> beam.ParDo(_ParseRecordFn(self._specs, self._config))
            .with_outputs("rejected", main="facts"))
        # Counted here, where records leave the files: a record lost anywhere later breaks the
        # manifest's input == scored + rejected check.
        read = records | "CountRead" >> beam.combiners.Count.Globally()
        return {"facts": parsed["facts"], "rejected": parsed["rejected"], "read": read}


# --- reading ----------------------------------------------------------------------------------------

class _ReadRecordsFn(beam.DoFn):
    """Stream one file into ``(source_index, position, payload)``.

    The payload is the undecoded line (bytes) for JSON Lines, so decode errors become dead letters in
    the parse step; for the other containers it is the already-decoded value (a row dict, or any JSON
    value of an array).
    """

    def __init__(self):
        self._read = beam.metrics.Metrics.counter(METRICS_NS, "records_read")

    def process(self, spec: InputSpec) -> Iterator[tuple[int, int, Any]]:
        for position, payload in enumerate(iter_payloads(spec)):
            self._read.inc()
            yield spec.source_index, position, payload


def iter_payloads(spec: InputSpec) -> Iterator[Any]:
    """The records of one checked file, undecoded: bytes for a JSON line, else the decoded value
    (an unreadable CSV row or JSON value arrives as ``_Undecodable``, already judged)."""
    reader = {"jsonl": _jsonl_records, "json": _json_records, "csv": _csv_records,
              "parquet": _parquet_records}[spec.container]
    return reader(spec.path)


def payload_line(payload: Any) -> bytes:
    """A payload as one JSON line that ``ReadFacts`` reads back to the same payload (or dead letter)."""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, _Undecodable):
        return payload.raw.encode("utf-8", "backslashreplace")
    return json.dumps(payload, ensure_ascii=False, default=str).encode("utf-8")


def _jsonl_records(path: str) -> Iterator[bytes]:
    with FileSystems.open(path) as f:
        first = True
        while True:
            line = f.readline()
            if not line:
                return
            if first:
                line, first = line.removeprefix(BOM), False
            if line.strip():  # blank lines are layout, not records: skipped and not counted
                yield line.rstrip(b"\r\n")


def _json_records(path: str) -> Iterator[Any]:
    with FileSystems.open(path) as f:
        text = f.read().removeprefix(BOM).decode("utf-8")
    data = json.loads(text)
    check = _SURROGATE_ESCAPE.search(text) is not None  # rare: only then pay for the check
    # A file holding one object is one record; check_inputs has refused anything else.
    for value in data if isinstance(data, list) else [data]:
        if check and _has_surrogates(json.dumps(value, ensure_ascii=False)):
            yield _Undecodable(raw=json.dumps(value),  # ASCII JSON shows the escape as written
                               error=f"record holds a lone surrogate escape; {_NOT_UTF8}")
        else:
            yield value


def _csv_records(path: str) -> Iterator[dict]:
    with FileSystems.open(path) as f:
        # surrogateescape keeps undecodable bytes in the cells, so the parse step can reject just
        # that row (stage 'decode') instead of the whole file failing mid-read.
        text = io.TextIOWrapper(f, encoding="utf-8-sig", errors="surrogateescape", newline="")
        for row in csv.DictReader(text):
            if any(_has_surrogates(k) or _has_surrogates(v) for k, v in row.items()):
                # Beam cannot encode such strings; ship the row escaped, already judged.
                escaped = {_escape(str(k)): _escape(v) for k, v in row.items()}
                yield _Undecodable(raw=json.dumps(escaped, ensure_ascii=False),
                                   error=f"row is {_NOT_UTF8}")
            else:
                yield {k: (v if v != "" else None) for k, v in row.items()}


@dataclass(frozen=True)
class _Undecodable:
    """A record that is not UTF-8 text (Beam could not even encode it), shown escaped."""

    raw: str
    error: str


def _has_surrogates(value: Any) -> bool:
    if isinstance(value, list):  # surplus CSV cells arrive as a list
        return any(_has_surrogates(v) for v in value)
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _escape(value: Any) -> Any:
    """Surrogate-escaped bytes (from errors='surrogateescape') as visible backslash escapes."""
    if isinstance(value, list):  # surplus CSV cells arrive as a list
        return [_escape(v) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return value


def _parquet_records(path: str) -> Iterator[dict]:
    import pyarrow.parquet as pq

    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=_PARQUET_BATCH_ROWS):
            yield from batch.to_pylist()


# --- parsing and validation -------------------------------------------------------------------------

class _ParseRecordFn(beam.DoFn):
    """Turn one payload into a fact (main output) or a dead letter (``rejected``), and count it."""

    def __init__(self, specs: list[InputSpec], config: CurateConfig):
        self._specs = {s.source_index: s for s in specs}
        self._config = config
        self._rejected = beam.metrics.Metrics.counter(METRICS_NS, "records_rejected")
        self._valid = beam.metrics.Metrics.counter(METRICS_NS, "records_valid")

    def process(self, element: tuple[int, int, Any]):
        source_index, position, payload = element
        spec = self._specs[source_index]
        try:
            record = _decode(payload)
            layout = spec.layout or detect_layout(record)
            fact = to_fact(record, layout=layout, source=spec.path, position=position,
                           config=self._config)
        except RecordError as e:
            self._rejected.inc()
            beam.metrics.Metrics.counter(METRICS_NS, f"rejected_{e.stage}").inc()
            yield beam.pvalue.TaggedOutput("rejected", {
                "source": spec.path, "position": position, "raw": _raw_text(payload),
                "stage": e.stage, "error": e.message})
            return
        self._valid.inc()
        yield fact


def _decode(payload: Any) -> Any:
    """A JSONL line (bytes) to its JSON value; other payloads are already decoded."""
    if isinstance(payload, bytes):
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RecordError("decode", f"line is not valid UTF-8 (byte {e.start}: "
                                        f"{payload[e.start:e.start + 4]!r}); re-encode the file "
                                        f"as UTF-8") from None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise RecordError("parse", f"line is not valid JSON: {e.msg} at column {e.colno}") from None
        if _SURROGATE_ESCAPE.search(text) and _has_surrogates(json.dumps(value, ensure_ascii=False)):
            raise RecordError("decode", f"line holds a lone surrogate escape; {_NOT_UTF8}")
        return value
    if isinstance(payload, dict) and None in payload:  # csv.DictReader's key for surplus cells
        raise RecordError("parse", f"row has {len(payload) - 1 + len(payload[None])} cells but the "
                                   f"header names {len(payload) - 1}; quote cells holding commas")
    if isinstance(payload, _Undecodable):
        raise RecordError("decode", payload.error)
    return payload


def _raw_text(payload: Any) -> str:
    if isinstance(payload, bytes):
        return truncate_raw(payload)
    if isinstance(payload, _Undecodable):
        return truncate_raw(payload.raw)
    if isinstance(payload, dict):
        payload = {str(k): v for k, v in payload.items()}  # csv's None key for surplus cells
    return truncate_raw(json.dumps(payload, ensure_ascii=False, default=str))
