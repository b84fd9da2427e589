"""The pages people look at, in a real browser (headless Chromium): nothing may come from the network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service_fixtures import MINI_FACTS, Service

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


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory) -> Path:
    """`beacon run` on the mini fixture, 3 steps: a run folder with its report."""
    from service.cli import main as beacon

    out = tmp_path_factory.mktemp("report") / "run"
    assert beacon(["run", str(MINI_FACTS), "--out", str(out), "--max-steps", "3", "--no-progress"]) == 0
    return out


def test_beacon_run_writes_a_self_contained_report(sample_run: Path, page, screenshot) -> None:
    report = sample_run / "report.html"
    text = report.read_text()
    assert "<script src" not in text and "<link" not in text and "http://" not in text.replace(
        "http://www.w3.org", "")  # nothing to fetch
    metrics = json.loads((sample_run / "run" / "metrics.json").read_text())
    page.goto(report.as_uri())
    assert page.locator(".summary").inner_text() == metrics["summary"]
    rows = page.locator("#fact-table tr[data-state]")
    assert rows.count() == metrics["all"]["n"] == 8
    # Filter to the facts that did not stick, then search among all of them.
    not_learned = sum(1 for i in range(rows.count()) if rows.nth(i).get_attribute("data-state") == "not learned")
    page.select_option("#state", "not learned") if not_learned else None
    visible = page.locator("#fact-table tr[data-state]:not([hidden])")
    assert visible.count() == (not_learned or 8)
    page.select_option("#state", "")
    page.fill("#search", "Kenya")
    assert page.locator("#count").inner_text() == f"{visible.count()} of 8 shown" and visible.count() == 2
    page.fill("#search", "")
    assert page.locator("svg.chart").count() >= 3  # the curve and the histograms, inline
    assert page.external == []
    screenshot(page, "report-1280")
    page.set_viewport_size({"width": 390, "height": 844})
    screenshot(page, "report-390")
    # By keyboard: Tab reaches the filter (past the tables Chromium makes focusable when they scroll
    # sideways at phone width), then the search box; typing there filters the table.
    page.click("h1")  # start sequential focus navigation at the top
    for _ in range(6):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "state":
            break
    assert page.evaluate("document.activeElement.id") == "state"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "search"
    page.keyboard.type("Kenya")
    assert page.locator("#count").inner_text() == "2 of 8 shown"


def test_a_dataset_report_shows_reasons_conflicts_and_rejections(curated: Path, tmp_path: Path, page,
                                                                   screenshot) -> None:
    from service.cli import main as beacon

    out = tmp_path / "dataset-report.html"
    assert beacon(["report", str(curated), "--out", str(out)]) == 0
    page.goto(out.as_uri())
    text = page.locator("body").inner_text()
    assert "Conflicts: the same question, two answers" in text and "Rejected records (4)" in text
    assert "Mombasa" in text and "Kisumu" in text and "line is not valid JSON" in text
    assert page.locator("#fact-table").count() == 0  # a dataset alone has no run to show
    assert page.external == []
    screenshot(page, "report-dataset-1280")


@pytest.fixture(scope="module")
def busy_service(tmp_path_factory) -> Service:
    """A server and a worker: the dashboard drives real jobs."""
    svc = Service(tmp_path_factory.mktemp("dashboard")).start_server()
    svc.start_worker()
    yield svc
    svc.stop()


def test_a_newcomer_uploads_runs_a_job_and_finds_the_facts_that_did_not_stick(busy_service: Service, page,
                                                                              screenshot) -> None:
    from service_fixtures import TOKEN

    svc = busy_service
    page.goto(f"{svc.url}/")
    page.wait_for_selector("#train-fields input[name='train.max_steps']")
    screenshot(page, "dashboard-jobs-empty-1280")

    def fill_and_submit() -> None:
        page.set_input_files("#file", str(MINI_FACTS))
        page.fill("input[name='train.max_steps']", "3")
        page.click("#new-job button[type=submit]")

    fill_and_submit()
    # Uploading needs the token: the page asks for it once, as a sentence, and keeps it for the tab.
    page.wait_for_selector("#token-form:not([hidden])")
    assert "API token" in page.locator("#error").inner_text()
    page.fill("#token", TOKEN)
    page.click("#token-form button[type=submit]")
    page.wait_for_selector("#train-fields input[name='train.max_steps']")
    assert page.evaluate("sessionStorage.getItem('beacon-token')") == TOKEN
    assert TOKEN not in page.url
    # A form left as it is sends only what was changed: chat_template stays "as the dataset was probed".
    sent = []
    page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/jobs") and r.method == "POST" else None)
    fill_and_submit()
    page.wait_for_url("**/ui/jobs/job_*", timeout=30_000)
    assert sent and sent[-1]["train"] == {"max_steps": 3} and sent[-1]["curate"] == {}
    job_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector("#status:text('succeeded')", timeout=400_000)
    assert page.locator("#timeline li").count() >= 5  # queued, claimed, stages, succeeded
    assert page.locator("#curve svg").count() == 1
    summary = page.locator("#summary").inner_text()
    assert "answer with the target" in summary
    page.wait_for_selector("#facts tbody tr")
    assert page.locator("#fact-count").inner_text() == "8 facts"
    screenshot(page, "dashboard-job-1280")
    # The facts that did not stick, with what the model said instead.
    page.select_option("#filter", "not_learned")
    page.wait_for_function("document.querySelector('#fact-count').textContent !== '8 facts'")
    not_learned = int(page.locator("#fact-count").inner_text().split()[0])
    assert page.locator("#facts tbody tr").count() == not_learned
    page.select_option("#filter", "all")
    page.fill("#search", "Kenya")
    page.wait_for_function("document.querySelector('#fact-count').textContent === '2 facts'")
    page.fill("#search", "")
    page.locator("#facts th button", has_text="drift before").click()  # sortable
    page.wait_for_function("document.querySelector('#facts th[aria-sort=ascending]') !== null")
    page.set_viewport_size({"width": 390, "height": 844})
    screenshot(page, "dashboard-job-390")
    page.set_viewport_size({"width": 1280, "height": 900})

    # The curated dataset: reasons, charts, conflicts, rejected records, and the SQL box.
    page.click("#dataset-link")
    page.wait_for_selector("#reasons tbody tr")
    assert "Kisumu" in page.locator("#conflicts").inner_text()
    page.wait_for_selector("#rejected tbody tr")
    assert page.locator("#rejected tbody tr").count() == 4
    assert page.locator("#charts svg").count() == 3
    page.fill("#sql", "select count(*) as n from scored where keep")
    page.click("#sql-form button")
    page.wait_for_selector("#sql-result tbody tr")
    assert page.locator("#sql-result tbody td").inner_text() == "6"
    page.fill("#sql", "delete from scored")
    page.click("#sql-form button")
    page.wait_for_selector("#sql-error:not([hidden])")
    assert "only SELECT queries are allowed" in page.locator("#sql-error").inner_text()
    screenshot(page, "dashboard-dataset-1280")
    page.set_viewport_size({"width": 390, "height": 844})
    screenshot(page, "dashboard-dataset-390")

    # Back on the jobs list: the job, finished; a bad page is a sentence, not a stack.
    page.goto(f"{svc.url}/")
    page.wait_for_selector(f"#jobs a:text('{job_id}')")
    assert "succeeded" in page.locator("#jobs tbody").inner_text()
    assert page.external == []
    assert page.goto(f"{svc.url}/ui/jobs/nope").status == 404
    assert "There is no page" in page.locator("main").inner_text()
