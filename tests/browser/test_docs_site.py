"""The documentation site, as a person uses it in Chromium: it opens, its navigation reaches
every page, and its search finds "idempotency".

The site is built here, strictly, as `make docs` builds it, and served from site/ on a free
port. Its pages load nothing from other sites but the diagrams' script, mermaid, from a CDN:
the tests serve it from the npm package, which `make test-browser` fetches into build/.
"""

from __future__ import annotations

import functools
import http.server
import pathlib
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tools.check_docs import load_nav

from .conftest import ROOT, offline


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A browser that moves on to the next page drops the downloads of the last one.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    zensical = pathlib.Path(sys.executable).parent / "zensical"
    build = subprocess.run(
        [str(zensical), "build", "--strict", "--clean"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, f"the strict build failed:\n{build.stdout}\n{build.stderr}"
    handler = functools.partial(QuietHandler, directory=str(ROOT / "site"))
    server = Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        thread.join(timeout=30)
        server.server_close()


# Where the site's theme loads mermaid from, and the local copy answered in its place.
MERMAID = "https://unpkg.com/mermaid@12/dist/mermaid.min.js"


@pytest.fixture(scope="module")
def scripts() -> dict[str, pathlib.Path]:
    copy = ROOT / "build" / "mermaid@12" / "package" / "dist" / "mermaid.min.js"
    if not copy.is_file():
        pytest.fail(f"no local mermaid at {copy}: `make test-browser` fetches it")
    return {MERMAID: copy}


def url_of(base: str, page: str) -> str:
    """Where Zensical puts a page: `a/b.md` at `a/b/`, `a/index.md` at `a/`."""
    path = page.removesuffix(".md").removesuffix("index")
    return base + (path if path.endswith("/") or not path else f"{path}/")


def test_the_site_opens_on_its_home_page(page: Page, site: str) -> None:
    outside = offline(page, site, {})
    page.goto(site)
    expect(page).to_have_title("Home - esm_tasks")
    expect(page.get_by_role("heading", level=1)).to_contain_text("esm_tasks")
    expect(page.get_by_role("heading", name="Quick start")).to_be_visible()
    assert outside.served == outside.refused == []  # the home page needs nothing outside


def test_the_navigation_reaches_every_page(
    page: Page, site: str, scripts: dict[str, pathlib.Path]
) -> None:
    outside = offline(page, site, scripts)
    page.goto(site)
    for title, source in load_nav():  # each from the one before: every page has the nav
        navigation = page.locator("nav.md-nav--primary")
        navigation.get_by_role("link", name=title, exact=True).first.click()
        expect(page).to_have_url(url_of(site, source))
        heading = page.get_by_role("heading", level=1)
        expect(heading).to_be_visible()
        assert heading.inner_text().strip(), f"{source} has an empty title"
    assert outside.refused == []


def test_the_merge_order_diagram_is_drawn(
    page: Page, site: str, scripts: dict[str, pathlib.Path]
) -> None:
    outside = offline(page, site, scripts)
    page.goto(url_of(site, "tutorial/merge-order.md"))
    # Drawn, the diagram's source gives way to a picture in a closed shadow root, which no
    # selector reaches: what shows is a box the size of a drawing, and no source text.
    diagram = page.locator("div.mermaid")
    expect(diagram).to_be_visible()
    expect(page.get_by_text("sequenceDiagram")).to_have_count(0)
    box = diagram.bounding_box()
    assert box is not None
    assert box["height"] > 300, f"the diagram is {box['height']} px high"
    assert outside.served == [MERMAID]


def test_search_finds_idempotency(page: Page, site: str) -> None:
    offline(page, site, {})
    page.goto(site)
    page.get_by_role("button", name="Search").click()
    page.keyboard.type("idempotency")
    # The results are options of a list box, each a link to a section of a page.
    heading = "Idempotency keys and the Idempotency-Key header"
    result = page.get_by_role("option", name=re.compile(f"^{heading}"))
    expect(result).to_be_visible()
    anchor = r"/scaling-out/.*#idempotency-keys-and-the-idempotency-key-header$"
    expect(result).to_have_attribute("href", re.compile(anchor))
    result.click()
    expect(page).to_have_url(re.compile(anchor))
    expect(page.get_by_role("heading", name=heading)).to_be_in_viewport()


def test_every_include_was_expanded(site: str) -> None:
    # A snippet line the build left as it is (in a block it does not read, say) shows as text.
    left = [
        str(html.relative_to(ROOT))
        for html in (ROOT / "site").rglob("*.html")
        if "--8&lt;--" in html.read_text()
    ]
    assert left == []
