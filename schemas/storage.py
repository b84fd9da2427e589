"""Where datasets live: a local folder or an object-store URL (``s3://``, ``gs://``, ``azfs://``).

Every read and write of a dataset's files that may be remote goes through Beam's ``FileSystems``
(the same layer the pipeline's sources and sinks use), never through ``pathlib`` on a URL: a ``Path``
collapses ``s3://b/x`` into the local folder ``s3:/b/x``. The filesystems are configured once per
process from Beam's options (``--s3_endpoint_url=…`` on `beacon curate`) or, where a command has no
Beam options, from the object store's own environment (for S3, boto3's ``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID`` …).
"""

from __future__ import annotations

import os
import posixpath
import re
import threading
from pathlib import Path
from typing import IO, Any

# The Beam extra that registers each object-store scheme (an unknown scheme is an error naming it).
SCHEME_EXTRAS = {"s3": "apache-beam[aws]", "gs": "apache-beam[gcp]", "azfs": "apache-beam[azure]",
                 "hdfs": "apache-beam (and --hdfs_host/--hdfs_port options)"}

# The client library each scheme's filesystem needs: Beam registers azfs:// even without it, and then
# fails on first use with a NameError.
SCHEME_MODULES = {"s3": "boto3", "gs": "google.cloud.storage", "azfs": "azure.storage.blob"}

_lock = threading.Lock()
_options: Any = None
_reached: set[tuple[str, str]] = set()  # (scheme, bucket) checked reachable in this process


def is_url(path: str | Path) -> bool:
    """Whether ``path`` names an object-store location rather than a local path."""
    return "://" in str(path)


def scheme(path: str | Path) -> str:
    return str(path).split("://", 1)[0].lower() if is_url(path) else ""


def join(base: str | Path, *parts: str) -> str:
    """``base/part/...``: ``/``-joined for a URL (its trailing slashes kept single), os-joined locally."""
    if not is_url(base):
        return os.path.join(str(base), *parts)
    return posixpath.join(str(base).rstrip("/"), *parts)


def relative(path: str, base: str | Path) -> str:
    """``path`` relative to the folder ``base`` (both URLs, or both local), ``/``-separated."""
    prefix = str(base).rstrip("/") + "/"
    if is_url(base):
        if not path.startswith(prefix):
            raise ValueError(f"{path} is not under {base}")
        return path[len(prefix):]
    return os.path.relpath(path, str(base)).replace(os.sep, "/")


def configure(options: Any = None) -> None:
    """Uses ``options`` (PipelineOptions, or a list of Beam command-line flags) for this process's
    object-store access from now on; None: empty options, each store then reads its own environment
    (`beacon curate` sets its Beam options for its run, and ``reset`` puts the default back)."""
    global _options
    from apache_beam.options.pipeline_options import PipelineOptions

    if options is not None and not isinstance(options, PipelineOptions):
        options = PipelineOptions(list(options))
    with _lock:
        _options = options
        _reached.clear()


def reset() -> None:
    """Back to the default: empty options, each store's own environment."""
    configure(None)


def _filesystems():
    """Beam's ``FileSystems``, set to this module's options (a pipeline built in between may have set
    its own: Beam keeps one set per process)."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    with _lock:
        FileSystems.set_options(_options if _options is not None else PipelineOptions([]))
    return FileSystems


_GLOB = re.compile(r"[*?\[\]{}]")


def check_location(path: str | Path, role: str) -> None:
    """Raises ValueError, in a sentence, when ``path`` (a URL) cannot be used: no installed Beam
    filesystem handles its scheme (the message names the package that adds it), or, for ``s3://``,
    its bucket does not answer. A local path passes."""
    if not is_url(path):
        return
    name = scheme(path)
    if _GLOB.search(str(path).split("://", 1)[1]):
        raise ValueError(f"{role} {path}: a dataset location may not hold a glob character (* ? [ ] {{ }}): "
                         "Beam's filesystems would read it as a pattern and match other prefixes")
    try:
        _filesystems().get_filesystem(str(path))
        module = SCHEME_MODULES.get(name)
        if module is not None and not _importable(module):
            raise ValueError(module)
    except ValueError:
        extra = SCHEME_EXTRAS.get(name)
        if extra:
            raise ValueError(f"{role} {path}: no filesystem for {name}:// is installed; install {extra}") from None
        known = ", ".join(s + "://" for s in SCHEME_EXTRAS)
        raise ValueError(f"{role} {path}: Beam has no filesystem for {name}://; use {known} or a local "
                         "path") from None
    if name == "s3":
        _check_s3_reachable(str(path), role)


def has_parent_segment(url: str) -> bool:
    """Whether the path part of ``url`` holds a ``..`` segment (which could climb out of a prefix)."""
    return ".." in str(url).split("://", 1)[-1].split("/")


def check_prefix(url: str, role: str) -> str:
    """``url`` (trailing ``/`` dropped) as a place to write a dataset or a run: a usable location
    (``check_location``) that names a prefix inside its bucket, not the bucket itself.

    Raises:
        ValueError: it cannot be used (the message names it and why).
    """
    check_location(url, role)
    url = str(url).rstrip("/")
    if "/" not in url.split("://", 1)[1]:
        raise ValueError(f"{role} {url}: name a prefix inside the bucket ({scheme(url)}://bucket/name), "
                         "not the bucket itself")
    return url


def check_writable(folder: str, role: str, shown: str | None = None) -> None:
    """Fails fast, naming ``shown`` (default ``folder``), when the object store refuses a write under
    ``folder`` (no bucket, no rights), rather than after the models have run."""
    from schemas.config_file import first_line

    probe = join(folder, ".write-check")
    try:
        write_bytes(probe, b"ok")  # not empty: Beam's S3 writer cannot complete an empty upload
        delete([probe])
    except Exception as e:  # noqa: BLE001 - whatever the store says, it is the reason
        raise ValueError(f"{role} {shown or folder}: cannot write there: {first_line(e)}") from None


def _check_s3_reachable(url: str, role: str) -> None:
    """One HEAD of the bucket with short timeouts, once per bucket and process: an endpoint that does
    not answer, missing credentials or a missing bucket are one sentence in seconds, where Beam's
    S3 client retries with exponential backoff for minutes before it says anything."""
    import boto3
    from apache_beam.options.pipeline_options import S3Options
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    bucket = url.split("://", 1)[1].split("/", 1)[0]
    if ("s3", bucket) in _reached:
        return
    from apache_beam.options.pipeline_options import PipelineOptions

    o = (_options if _options is not None else PipelineOptions([])).view_as(S3Options)
    client = boto3.session.Session().client(
        "s3", endpoint_url=o.s3_endpoint_url, region_name=o.s3_region_name, use_ssl=not o.s3_disable_ssl,
        verify=o.s3_verify, aws_access_key_id=o.s3_access_key_id, aws_secret_access_key=o.s3_secret_access_key,
        aws_session_token=o.s3_session_token,
        config=Config(connect_timeout=5, read_timeout=20, retries={"max_attempts": 2, "mode": "standard"}))
    where = client.meta.endpoint_url
    try:
        client.head_bucket(Bucket=bucket)
    except NoCredentialsError:
        raise ValueError(f"{role} {url}: no S3 credentials found (set AWS_ACCESS_KEY_ID and "
                         "AWS_SECRET_ACCESS_KEY, or pass --s3_access_key_id / --s3_secret_access_key)") from None
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket"):
            raise ValueError(f"{role} {url}: bucket {bucket!r} does not exist at {where}") from None
        if code not in ("403", "AccessDenied"):  # credentials that may read objects but not list
            raise ValueError(f"{role} {url}: the S3 endpoint {where} refused bucket {bucket!r}: {e}") from None
    except BotoCoreError as e:  # no answer, DNS, TLS
        raise ValueError(f"{role} {url}: cannot reach the S3 endpoint {where} ({e}); set --s3_endpoint_url "
                         "or AWS_ENDPOINT_URL for an S3 API server other than AWS") from None
    _reached.add(("s3", bucket))


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def open_read(path: str | Path) -> IO[bytes]:
    """The file at ``path`` for reading, as stored (no decompression)."""
    from apache_beam.io.filesystem import CompressionTypes

    if not is_url(path):
        return open(path, "rb")
    return _filesystems().open(str(path), compression_type=CompressionTypes.UNCOMPRESSED)


def read_bytes(path: str | Path) -> bytes:
    """The bytes of the file at ``path``.

    Raises:
        FileNotFoundError: there is none (the message names it).
    """
    if not is_url(path):
        return Path(path).read_bytes()
    if not exists(path):
        raise FileNotFoundError(f"{path} not found")
    with open_read(path) as f:
        return f.read()


def write_bytes(path: str | Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` in one piece (on an object store, one PUT: readers see the old
    object or the new one, never a part)."""
    from apache_beam.io.filesystem import CompressionTypes

    if not is_url(path):
        Path(path).write_bytes(data)
        return
    with _filesystems().create(str(path), compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(data)


def copy_file(source: str | Path, dest: str | Path, *, chunk: int = 8 * 2**20) -> int:
    """Copies the file ``source`` to ``dest`` (either may be a URL), streamed in ``chunk`` pieces
    (Beam's ``FileSystems.copy`` wants both on one filesystem); on an object store the object appears
    whole when the upload ends. Returns the bytes copied."""
    from apache_beam.io.filesystem import CompressionTypes

    copied = 0
    with open_read(source) as src:
        if is_url(dest):
            out = _filesystems().create(str(dest), compression_type=CompressionTypes.UNCOMPRESSED)
        else:
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
            out = open(dest, "wb")
        with out:
            while block := src.read(chunk):
                out.write(block)
                copied += len(block)
    return copied


def stat(path: str | Path) -> tuple[int, float]:
    """(size in bytes, last modified as a Unix time) of the file at ``path``.

    Raises:
        FileNotFoundError: there is none (the message names it).
    """
    if not is_url(path):
        st = os.stat(path)
        return st.st_size, st.st_mtime
    found = [m for m in _filesystems().match([str(path)])[0].metadata_list if m.path == str(path)]
    if not found:
        raise FileNotFoundError(f"{path} not found")
    return found[0].size_in_bytes, found[0].last_updated_in_seconds


def exists(path: str | Path) -> bool:
    if not is_url(path):
        return os.path.exists(path)
    return _filesystems().exists(str(path))


def list_files(folder: str | Path) -> list[str]:
    """Every file under ``folder`` (recursively), sorted; empty when there is none."""
    return [path for path, _ in list_files_with_times(folder)]


def list_files_with_times(folder: str | Path) -> list[tuple[str, float]]:
    """(path, last modified as a Unix time) of every file under ``folder``, sorted by path."""
    if not is_url(folder):
        root = Path(folder)
        return sorted((str(p), p.stat().st_mtime) for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    if _GLOB.search(str(folder).split("://", 1)[1]):
        raise ValueError(f"{folder}: a glob character in a location would match other prefixes")
    prefix = str(folder).rstrip("/") + "/"
    results = _filesystems().match([prefix + "**"])[0].metadata_list
    return sorted((m.path, m.last_updated_in_seconds) for m in results if not m.path.endswith("/"))


def delete(paths: list[str]) -> None:
    """Deletes ``paths`` (files); the ones already gone are not an error."""
    if not paths:
        return
    from apache_beam.io.filesystem import BeamIOError

    try:
        _filesystems().delete(list(paths))
    except BeamIOError as e:
        failed = {p: err for p, err in (e.exception_details or {}).items()
                  if not isinstance(err, FileNotFoundError) and "not found" not in str(err).lower()}
        if failed:
            path, err = next(iter(failed.items()))
            raise OSError(f"could not delete {path}: {err}") from None
