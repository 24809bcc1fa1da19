"""The demo's API page, as a person sees it in Chromium: Swagger UI renders the document and
shows the tasks each operation declares.

The demo is served by a real uvicorn on a free port. The page loads Swagger UI from a CDN; the
test answers those requests from the same version of the npm package swagger-ui-dist, which
`make test-browser` fetches into build/.
"""

from __future__ import annotations

import json
import pathlib
import re

import httpx
import pytest
from playwright.sync_api import Page, expect

from docs_src import demo
from esm_tasks.openapi import SWAGGER_UI

from ..support import serve
from .conftest import ROOT, offline


def swagger_ui_copy() -> dict[str, pathlib.Path]:
    """The local files, by the CDN URL the page loads them from."""
    version = re.search(r"swagger-ui-dist@([\d.]+)$", SWAGGER_UI)
    assert version, SWAGGER_UI
    package = ROOT / "build" / f"swagger-ui-dist@{version.group(1)}" / "package"
    if not (package / "swagger-ui-bundle.js").is_file():
        pytest.fail(f"no local Swagger UI in {package}: `make test-browser` fetches it")
    return {
        f"{SWAGGER_UI}/{name}": package / name
        for name in ("swagger-ui-bundle.js", "swagger-ui.css")
    }


def test_the_demos_api_page_lists_its_operations_and_shows_their_tasks(page: Page) -> None:
    copies = swagger_ui_copy()
    with serve(demo.app, lifespan="on") as base:
        document = httpx.get(f"{base}/openapi.json").json()
        site = offline(page, base, copies)
        page.goto(f"{base}/docs/swagger")

        operations = [
            (method.upper(), path) for path, item in document["paths"].items() for method in item
        ]
        blocks = page.locator(".opblock")
        expect(blocks).to_have_count(len(operations))
        shown = [
            (
                block.locator(".opblock-summary-method").inner_text(),
                block.locator(".opblock-summary-path").get_attribute("data-path"),
            )
            for block in blocks.all()
        ]
        assert shown == operations
        expect(page.get_by_text("Unable to render this definition")).to_have_count(0)

        # One operation opened: its extensions list the tasks it declares, as the document does.
        register = page.locator(".opblock", has=page.locator('[data-path="/register"]'))
        register.locator(".opblock-summary").click()
        row = register.locator("tr", has_text="x-background-tasks")
        expect(row).to_be_visible()
        declared = document["paths"]["/register"]["post"]["x-background-tasks"]
        assert declared == [{"name": "send_email", "source": "handler"}]
        assert json.loads(row.locator("td").nth(1).inner_text()) == declared

    assert sorted(site.served) == sorted(copies), "Swagger UI did not come from the local copy"
