"""Headless Chromium, the system's own (Debian's `chromium`), driven by Playwright.

Nothing here downloads a browser, and no page reaches the network: each test serves what a
page would fetch from a CDN out of a local copy, and refuses every other outside request.
"""

from __future__ import annotations

import pathlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

ROOT = pathlib.Path(__file__).parent.parent.parent

# Generous: the machine may be busy. Every wait is for something a page shows, never a sleep.
TIMEOUT_MS = 30_000
expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("the browser tests need Chromium: apt-get install chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1300, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    yield context.new_page()
    context.close()


@dataclass
class Offline:
    """What a page asked of other sites: served from a local copy, or refused."""

    origin: str
    copies: dict[str, pathlib.Path]
    served: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def __call__(self, route: Route) -> None:
        url = route.request.url
        if url in self.copies:
            self.served.append(url)
            route.fulfill(path=self.copies[url])
        else:
            self.refused.append(url)
            route.abort()


def offline(page: Page, origin: str, copies: dict[str, pathlib.Path]) -> Offline:
    """Keep `page` on `origin`: a URL of `copies` is answered from its file, any other
    outside request is refused."""
    handler = Offline(origin, copies)
    page.route(lambda url: not url.startswith(origin), handler)
    return handler
