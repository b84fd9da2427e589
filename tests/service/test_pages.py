"""The pages people look at, in a real browser (headless Chromium): nothing may come from the network."""

from __future__ import annotations

import pytest

from service_fixtures import Service

pytestmark = pytest.mark.slow  # a real server and a real browser


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Service:
    svc = Service(tmp_path_factory.mktemp("pages")).start_server()
    yield svc
    svc.stop()


def test_the_openapi_ui_renders_offline(service: Service, page, screenshot) -> None:
    page.goto(f"{service.url}/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=15_000)
    paths = set(page.locator(".opblock-summary-path").all_inner_texts())
    assert {"/jobs", "/datasets", "/healthz"} <= {p.replace("\u200b", "") for p in paths}
    assert page.external == []  # every script and stylesheet came from this server
    screenshot(page, "docs-1280")
    page.set_viewport_size({"width": 390, "height": 844})
    screenshot(page, "docs-390")
