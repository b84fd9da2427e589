"""The dashboard: HTML pages for people, served by `beacon serve` with every asset from the package.

Light on purpose: the pages are server-rendered shells (Jinja2) and one hand-written script
(``service/static/dashboard.js``, no framework, no build step) that reads the same JSON API as every
other client, with the same bearer token, which the page asks for once and keeps for the tab
(``sessionStorage``: never in a URL, never in a log). The pages themselves hold no data, so they need no
token; every read and write they make goes through the API's own checks.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from service.api.models import DATASET_ID, JOB_ID
from service.html import templates

router = APIRouter(include_in_schema=False)


def _render(name: str, *, status_code: int = 200, **context) -> HTMLResponse:
    page = templates().get_template(name).render(**context)
    return HTMLResponse(page, status_code=status_code, headers={"Cache-Control": "no-store"})


@router.get("/")
async def jobs_page() -> HTMLResponse:
    return _render("dashboard.html", page="jobs", title="Jobs", item="")


@router.get("/ui/jobs/{job_id}")
async def job_page(job_id: str) -> HTMLResponse:
    return _item_page("job", "Job", job_id, JOB_ID)


@router.get("/ui/datasets/{dataset_id}")
async def dataset_page(dataset_id: str) -> HTMLResponse:
    return _item_page("dataset", "Dataset", dataset_id, DATASET_ID)


def _item_page(page: str, noun: str, item: str, pattern: str) -> HTMLResponse:
    """The page of one job or dataset; an id of the wrong shape is a 404 page that says so."""
    import re

    if not re.fullmatch(pattern, item):
        return _render("dashboard.html", page="missing", title="Not found", item=item, status_code=404)
    return _render("dashboard.html", page=page, title=f"{noun} {item}", item=item)


def static_folder() -> str:
    """``service/static``: the dashboard's stylesheet and script (package data)."""
    return str(Path(__file__).resolve().parents[2] / "static")
