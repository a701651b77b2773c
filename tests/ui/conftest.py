"""Browser fixtures: Debian's `chromium` driven by Playwright (no browser download) against a real
`seekd serve` on the demo model with an admin and a user key. Every page records each request it
makes; a test fails if any went elsewhere than the server's origin.

The tests skip, saying why, where playwright or chromium is missing (`skip_without_a_browser`).
Set SEEKD_UI_SCREENSHOTS to a folder to write the screenshots that docs/ui/ holds."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from live_server import ServerHandle, running_server

from seekd.ops.keys import KeyStore

try:
    from playwright import sync_api
except ImportError:  # the test modules skip, saying so (a conftest cannot skip without erroring)
    sync_api = None
CHROMIUM = os.environ.get("SEEKD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def skip_without_a_browser() -> None:
    """Called at the top of each browser test module."""
    if sync_api is None:
        pytest.skip("playwright is not installed (pip install -e '.[test]')", allow_module_level=True)
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (apt-get install chromium)", allow_module_level=True)


AXE = Path(__file__).parent / "data" / "axe.min.js"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@dataclass
class UiServer:
    handle: ServerHandle
    admin_key: str
    user_key: str
    data_dir: Path

    @property
    def url(self) -> str:
        return f"{self.handle.base_url}/ui/"


@dataclass
class Tab:
    """A page plus every URL it requested."""

    page: sync_api.Page
    requests: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory) -> Iterator[UiServer]:
    data_dir = tmp_path_factory.mktemp("ui-data")
    store = KeyStore.in_data_dir(data_dir)
    admin_key = store.create("ops", "admin", name="console")[0]
    user_key = store.create("team-a", "user", name="alice")[0]
    log_path = tmp_path_factory.mktemp("ui-log") / "server.log"
    options = {"headers": {"Authorization": f"Bearer {admin_key}"}}
    with running_server(data_dir, log_path, client_options=options) as handle:
        yield UiServer(handle, admin_key, user_key, data_dir)


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def open_tab(browser: sync_api.Browser, ui_server: UiServer) -> Iterator[Callable[..., Tab]]:
    """Opens /ui in a fresh browser context (its own sessionStorage and localStorage)."""
    tabs: list[Tab] = []
    contexts = []

    def open_(viewport: dict = DESKTOP, context: sync_api.BrowserContext | None = None) -> Tab:
        if context is None:
            context = browser.new_context(viewport=viewport, locale="en-US")
            context.set_default_timeout(60_000)
            contexts.append(context)
        page = context.new_page()
        tab = Tab(page)
        page.on("request", lambda request: tab.requests.append(request.url))
        page.goto(ui_server.url)
        tabs.append(tab)
        return tab

    yield open_
    for context in contexts:
        context.close()
    origin = ui_server.handle.base_url + "/"
    for tab in tabs:
        assert tab.requests, "the page made no requests at all"
        elsewhere = [url for url in tab.requests if not url.startswith(origin)]
        assert not elsewhere, f"the page requested other origins: {elsewhere}"


def sign_in(page: sync_api.Page, key: str) -> None:
    """With the keyboard only: the key field has focus on arrival, Enter submits."""
    field = page.get_by_label("API key", exact=True)
    sync_api.expect(field).to_be_focused()
    page.keyboard.type(key)
    page.keyboard.press("Enter")


def axe_violations(page: sync_api.Page) -> list[dict]:
    """axe-core's serious and critical violations of the page as it is now (WCAG 2.x A/AA rules)."""
    page.evaluate(AXE.read_text())  # through DevTools: the page's CSP forbids inline scripts, rightly
    result = page.evaluate(
        "async () => await axe.run(document, {runOnly: {type: 'tag', values: "
        "['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}})"
    )
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["html"][:120] for n in v["nodes"][:3]]}
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def screenshot(page: sync_api.Page, name: str, mask: list[sync_api.Locator] | None = None) -> None:
    """`mask`: parts blanked in the picture (a new key's secret, which docs/ must not show)."""
    folder = os.environ.get("SEEKD_UI_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), mask=mask or [])
