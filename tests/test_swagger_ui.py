"""The API page of every esm_tasks App loads a Swagger UI that reads the document Lilya writes.

Lilya writes OpenAPI 3.2.0 and loads Swagger UI 5.17.4 by default, which answers "Unable to
render this definition" to anything after 3.1; Swagger UI reads 3.2 from 5.32 on. The browser
tests (tests/browser/) show the page rendered; these check what it loads.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from lilya.apps import Lilya
from lilya.contrib.openapi.config import OpenAPIConfig as LilyaOpenAPIConfig

from esm_tasks import App, get
from esm_tasks.openapi import OpenAPIConfig

pytestmark = pytest.mark.anyio

# The first Swagger UI that reads OpenAPI 3.2.0.
READS_3_2 = (5, 32, 0)


async def audit() -> None: ...


@get("/ping", background=audit)
async def ping() -> str:
    return "pong"


async def page_and_document(app: Any) -> tuple[str, dict[str, Any]]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as http:
        page = await http.get("/docs/swagger")
        document = await http.get("/openapi.json")
    assert page.status_code == 200, page.text
    return page.text, document.json()


def swagger_ui_versions(page: str) -> set[tuple[int, ...]]:
    """The swagger-ui-dist versions of every script and stylesheet the page loads."""
    assets = re.findall(r'(?:src|href)="([^"]*swagger-ui[^"]*\.(?:js|css))"', page)
    assert len(assets) == 2, f"expected Swagger UI's script and stylesheet, found {assets}"
    versions = set()
    for url in assets:
        match = re.search(r"swagger-ui-dist@(\d+)\.(\d+)\.(\d+)/", url)
        assert match, f"{url} names no swagger-ui-dist version"
        versions.add(tuple(int(part) for part in match.groups()))
    return versions


async def test_an_apps_swagger_ui_reads_the_openapi_version_of_its_document() -> None:
    page, document = await page_and_document(App(routes=[ping], enable_openapi=True))
    assert document["openapi"] == "3.2.0"
    (version,) = swagger_ui_versions(page)
    assert version >= READS_3_2


async def test_an_app_given_lilyas_config_gets_the_newer_swagger_ui_and_keeps_its_fields() -> None:
    config = LilyaOpenAPIConfig(title="Shop", docs_url="/docs/swagger")
    page, document = await page_and_document(
        App(routes=[ping], enable_openapi=True, openapi_config=config)
    )
    assert document["info"]["title"] == "Shop"
    (version,) = swagger_ui_versions(page)
    assert version >= READS_3_2


async def test_a_swagger_ui_the_app_chose_is_kept() -> None:
    config = LilyaOpenAPIConfig(
        swagger_js_url="/static/swagger-ui-dist@5.40.1/swagger-ui-bundle.js",
        swagger_css_url="/static/swagger-ui-dist@5.40.1/swagger-ui.css",
    )
    page, _ = await page_and_document(
        App(routes=[ping], enable_openapi=True, openapi_config=config)
    )
    assert swagger_ui_versions(page) == {(5, 40, 1)}
    assert 'src="/static/swagger-ui-dist@5.40.1/swagger-ui-bundle.js"' in page


async def test_a_plain_lilya_app_with_esm_tasks_config_gets_the_newer_swagger_ui() -> None:
    app = Lilya(routes=[ping], enable_openapi=True, openapi_config=OpenAPIConfig())
    page, document = await page_and_document(app)
    assert document["openapi"] == "3.2.0"
    (version,) = swagger_ui_versions(page)
    assert version >= READS_3_2
