"""Schemathesis over the OpenAPI schema of a real server: whatever it sends, no 5xx comes back."""

from __future__ import annotations

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from service_fixtures import AUTH, MINI_FACTS, Service, seed_scored_dataset

EXAMPLES = 20  # per operation and mode: ~450 requests in all


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Service:
    svc = Service(tmp_path_factory.mktemp("schema"), max_upload_bytes=64 * 1024, query_timeout_seconds=1)
    svc.start_server()
    seed_scored_dataset(svc.data_dir)
    with svc.client() as c:  # something for generated ids and paths to find
        c.post("/datasets", files={"file": ("mini_facts.jsonl", MINI_FACTS.read_bytes())})
    yield svc
    svc.stop()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_request_makes_a_server_error(service: Service, mode: GenerationMode):
    # Each operation in turn (one strategy over all would starve some); schemathesis's pytest plugin
    # (from_fixture) does not run on pytest 9, so the operations' Hypothesis strategies are driven here.
    schema = schemathesis.openapi.from_url(f"{service.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 11
    skipped: list[str] = []
    for operation in operations:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def call(case) -> None:
            case.call_and_validate(base_url=service.url, headers=AUTH, checks=[not_a_server_error], timeout=30)

        try:
            call()
        except Unsatisfiable:
            # No invalid request exists for an operation without inputs (GET /healthz, GET /jobs?...).
            assert mode is GenerationMode.NEGATIVE, operation.label
            skipped.append(operation.label)
    assert len(skipped) <= 2, skipped


# --- hostile values the OpenAPI schema does not describe -----------------------------------------------

def _knobs() -> dict[str, list[str]]:
    from pipeline.config import CurateConfig
    from trainer.config import EvalConfig, TrainConfig

    return {"curate": list(CurateConfig.model_fields), "train": list(TrainConfig.model_fields),
            "eval": list(EvalConfig.model_fields)}


HOSTILE_NUMBERS = [float("nan"), float("inf"), -float("inf"), 2**63, 2**64, -2**63, 10**30, 1e308, -0.0, 0, -1]


def _hostile_values():
    from hypothesis import strategies as st

    leaf = st.one_of(st.sampled_from(HOSTILE_NUMBERS), st.integers(), st.floats(), st.booleans(), st.none(),
                     st.text(max_size=30), st.text(min_size=2000, max_size=5000))
    return st.recursive(leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(max_size=12), inner, max_size=3), max_leaves=12)


def _jobs_page(client) -> str:
    r = client.get("/jobs", params={"limit": 200})
    assert r.status_code == 200, r.text
    return r.text


def test_hostile_job_bodies_never_make_a_server_error_nor_change_the_job_list(service: Service):
    """Non-finite numbers, huge integers, deep nesting and long strings in every job knob."""
    from hypothesis import strategies as st

    knobs = _knobs()
    with service.client() as client:
        raw_id = client.get("/datasets", params={"kind": "raw"}).json()["data"][0]["id"]
        body = st.fixed_dictionaries({"dataset_id": st.sampled_from([raw_id, None, 12, float("nan")])}, optional={
            section: st.dictionaries(st.sampled_from(keys), _hostile_values(), min_size=1, max_size=3)
            for section, keys in knobs.items()})

        @given(payload=body)
        @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def post(payload) -> None:
            before = _jobs_page(client)
            # json.dumps writes NaN and Infinity, exactly as a careless Python client sends them.
            r = client.post("/jobs", content=json.dumps(payload), headers={"Content-Type": "application/json"})
            assert r.status_code < 500, (payload, r.text)
            after = _jobs_page(client)
            if r.status_code >= 400:
                assert after == before, payload
            else:
                client.post(f"/jobs/{r.json()['id']}/cancel")

        post()
        for text in ("[" * 100_000 + "]" * 100_000, '{"train": ' * 50_000 + "1" + "}" * 50_000,
                     '{"dataset_id": "' + "x" * 1_000_000 + '"}'):
            before = _jobs_page(client)
            r = client.post("/jobs", content=text, headers={"Content-Type": "application/json"})
            assert 400 <= r.status_code < 500, r.text[:200]
            assert _jobs_page(client) == before


def test_hostile_queries_never_make_a_server_error(service: Service):
    from hypothesis import strategies as st

    with service.client() as client:
        scored = client.get("/datasets", params={"kind": "scored"}).json()["data"][0]["id"]
        body = st.fixed_dictionaries({"sql": st.one_of(st.text(max_size=200), st.sampled_from([
            "select 1", "select * from scored", "PIVOT scored ON reason USING count(*)",
            "select repeat('x', 100000) from range(100)", "select current_setting('temp_directory')"]))},
            optional={"limit": st.sampled_from(HOSTILE_NUMBERS)})

        @given(payload=body)
        @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def post(payload) -> None:
            r = client.post(f"/datasets/{scored}/query", content=json.dumps(payload),
                            headers={"Content-Type": "application/json"})
            assert r.status_code < 500, (payload, r.text)

        post()
        assert client.post(f"/datasets/{scored}/query", json={"sql": "select 1"}).status_code == 200
