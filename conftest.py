"""Fixtures shared across the test folders (here, at the root: a conftest in tests/ would put tests/ on
sys.path, where tests/schemas would shadow the schemas package)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

MINI_FACTS = Path(__file__).parent / "tests" / "fixtures" / "mini_facts.jsonl"
BUCKET = "beacon-test"  # the bucket ``s3_env`` creates


def free_port() -> int:
    """A loopback port nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on (test modules cannot import ``free_port``: see BUCKET's note
    in tests/pipeline/test_object_store.py)."""
    return free_port()


@pytest.fixture(scope="module")
def s3_env():
    """A moto S3 server on loopback, the environment that points boto3 (and so Beam) at it, and the
    test bucket holding the fixture's input file."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import boto3

        client = boto3.client("s3")
        deadline = time.monotonic() + 30
        while True:
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
        client.upload_file(str(MINI_FACTS), BUCKET, "in/mini_facts.jsonl")
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.terminate()
        server.wait(10)


@pytest.fixture(scope="session")
def curated(tmp_path_factory) -> Path:
    """``mini_facts.jsonl`` curated once per session with the bundled models, through the CLI as a user
    runs it (a small probe batch, so the run has several LM batches). Read it; never write into it."""
    from service.cli import main as beacon

    out = tmp_path_factory.mktemp("curated") / "dataset"
    assert beacon(["curate", str(MINI_FACTS), "--out", str(out), "--probe-batch-size", "4"]) == 0
    return out


def _read_everywhere(files: list[Path], cache: Path) -> dict[str, tuple[list[str], list[dict]]]:
    """``files`` (Parquet, one table) read by every library a user reaches for: name -> (columns, rows)."""
    import datasets
    import duckdb
    import pandas as pd
    import polars as pl

    paths = [str(f) for f in files]
    hf = datasets.load_dataset("parquet", data_files=paths, split="train", cache_dir=str(cache / "hf"))
    hf_direct = datasets.Dataset.from_parquet(paths, cache_dir=str(cache / "hf-direct"))
    frame = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    polars = pl.read_parquet(paths)
    duck = duckdb.connect().execute("SELECT * FROM read_parquet(?)", [paths])
    return {
        "datasets.load_dataset": (hf.column_names, hf.to_list()),
        "datasets.Dataset.from_parquet": (hf_direct.column_names, hf_direct.to_list()),
        "pandas": (list(frame.columns), frame.to_dict("records")),
        "polars": (polars.columns, polars.to_dicts()),
        "duckdb": ([d[0] for d in duck.description], [dict(zip([d[0] for d in duck.description], r))
                                                     for r in duck.fetchall()]),
    }


@pytest.fixture
def read_everywhere(tmp_path: Path):
    """``read_everywhere(files)``: what each library reads from ``files`` (see ``_read_everywhere``)."""
    return lambda files: _read_everywhere(files, tmp_path)


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL cluster on a free loopback port for the session (scripts/postgres.sh;
    `make setup` installs Debian's package when it is missing): its server URL."""
    import shutil
    import subprocess
    import tempfile

    script = Path(__file__).parent / "scripts" / "postgres.sh"
    folder = Path(tempfile.mkdtemp(prefix="beacon-pg-"))
    folder.chmod(0o755)  # the cluster's owner (postgres, when the tests run as root) must reach it
    port = free_port()
    started = subprocess.run([str(script), "start", str(folder / "data"), str(port)], capture_output=True, text=True)
    if started.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {started.stderr.strip()} (scripts/postgres.sh install)")
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run([str(script), "stop", str(folder / "data")], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def new_postgres_database(server: str) -> str:
    """A new, empty database on ``server``: its URL."""
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as con:
        con.execute(f"CREATE DATABASE {name}")
    return server.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A new, empty database on the session's server (``new_postgres_database``)."""
    return new_postgres_database(postgres_server)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def job_store_url(request, tmp_path_factory) -> str:
    """For a module's service: SQLite in its data dir (empty string: the default) or a new PostgreSQL
    database; the module's tests run once per store."""
    if request.param == "sqlite":
        return ""
    return new_postgres_database(request.getfixturevalue("postgres_server"))


ARTIFACTS = Path(__file__).parent / "out" / "test-artifacts"


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (Debian's, through Playwright's executable_path), refusing every request that
    does not go to this machine: a page that needs the network fails its test."""
    import shutil

    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("no chromium on PATH: scripts/chromium.sh install")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh page at 1280 px; ``page.external`` lists the off-machine requests it tried (refused)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.external = []

    def guard(route):
        url = route.request.url
        if url.startswith(("http://127.0.0.1", "file://", "data:", "about:")):
            route.continue_()
        else:
            page.external.append(url)
            route.abort()
    page.route("**/*", guard)
    yield page
    context.close()


@pytest.fixture
def screenshot():
    """``screenshot(page, name)``: a full-page PNG under out/test-artifacts/ (CI's clone keeps them)."""
    def take(page, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path
    return take
