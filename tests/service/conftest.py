"""Fixtures every service test module shares; each module defines its own module-scoped ``service``."""

from __future__ import annotations

import httpx
import pytest

from service_fixtures import MINI_FACTS, Service


@pytest.fixture(scope="module")
def client(service: Service) -> httpx.Client:
    with service.client() as c:
        yield c


@pytest.fixture(scope="module")
def raw_id(client: httpx.Client) -> str:
    """The id of ``mini_facts.jsonl`` uploaded as a raw dataset."""
    r = client.post("/datasets", files={"file": ("mini_facts.jsonl", MINI_FACTS.read_bytes())})
    assert r.status_code == 201, r.text
    return r.json()["id"]
