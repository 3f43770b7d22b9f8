"""Fixtures for the console's browser tests: Debian's chromium driven by Playwright, a real switch.

The browser is the distribution's ``/usr/bin/chromium`` (never ``playwright install``: no
downloads at test time). Without it, or without the playwright package, the tests are skipped on a
developer machine and FAIL in CI (``CI`` set), so a CI run can never pass by skipping them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from switch.testing import SwitchProcess

CHROMIUM = Path(os.environ.get("ISO_SWITCH_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-default-apps", "--disable-sync"]
ASSETS = Path(__file__).parent / "assets"
DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"
SCREENSHOTS = (DOCS_SCREENSHOTS if os.environ.get("ISO_CONSOLE_SCREENSHOTS")
               else Path(tempfile.gettempdir()) / "iso-console-screenshots")
"""Where each page's screenshot goes: the README's ``docs/console/`` with ISO_CONSOLE_SCREENSHOTS=1
(to refresh them), else a temporary directory, so a test run leaves the source tree untouched."""
START_LIMIT = 30.0
UI_LIMIT_MS = 30_000  # generous for a loaded CI machine: an expectation returns as soon as it holds
TERMINAL_LIMIT = 60.0
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
EXPECTED_REFUSAL = "Failed to load resource: the server responded with a status of 4"
"""Chromium logs every 4xx answer; the tests provoke some (a refused edit, a wrong token) and the
page shows them as messages, so only other console errors fail a test."""


def _unavailable(reason: str) -> None:
    message = (f"browser tests need {reason}: install Debian's chromium (apt-get install chromium) and "
               "the test extras (pip install -e '.[test]'); never `playwright install`")
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package")
    if not CHROMIUM.is_file() or not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"an executable chromium at {CHROMIUM}")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Console:
    """A page on the console plus what the browser did that a test must not let pass."""

    page: Any
    origin: str
    foreign: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def open(self, hash_: str = "traffic") -> None:
        self.page.goto(f"{self.origin}/#{hash_}")
        self.page.wait_for_selector(f"#page-{hash_}:not([hidden])", timeout=UI_LIMIT_MS)

    def screenshot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))

    def assert_accessible(self) -> None:
        """axe-core in the page: no serious or critical violation."""
        self.page.add_script_tag(path=str(ASSETS / "axe.min.js"))
        violations = self.page.evaluate("""async () => {
            const result = await axe.run(document, { resultTypes: ["violations"] });
            return result.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help,
              nodes: v.nodes.slice(0, 3).map((n) => n.target.join(" ")) }));
        }""")
        bad = [v for v in violations if v["impact"] in ("serious", "critical")]
        assert not bad, json.dumps(bad, indent=2)


def open_context(browser: Any, origin: str, *, viewport: dict[str, int] = DESKTOP, bypass_csp: bool = True
                 ) -> tuple[Any, Console]:
    """A fresh context (its own sessionStorage); ``bypass_csp`` lets axe be injected as a script tag."""
    context = browser.new_context(viewport=viewport, bypass_csp=bypass_csp)
    page = context.new_page()
    console = Console(page, origin)
    page.on("request", lambda request: None if request.url.startswith(origin) or request.url.startswith("data:")
            else console.foreign.append(request.url))
    page.on("pageerror", lambda error: console.errors.append(str(error)))
    page.on("console", lambda message: console.errors.append(message.text) if message.type == "error"
            and not message.text.startswith(EXPECTED_REFUSAL) else None)
    return context, console


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The switch's directory (ledger, journal) and the terminals' stores."""
    return tmp_path_factory.mktemp("console-switch")


@pytest.fixture(scope="module")
def switch(workdir: Path) -> Iterator[SwitchProcess]:
    running = SwitchProcess.start(["--ledger", str(workdir / "ledger.sqlite"), "--no-signon", "--seed", "14"],
                                  cwd=workdir, startup_timeout=START_LIMIT)
    try:
        yield running
    finally:
        returncode = running.stop()
    assert returncode == 0, running.text
    assert running.closed_cleanly, running.text


@pytest.fixture
def console(browser: Any, switch: SwitchProcess) -> Iterator[Console]:
    import httpx

    assert switch.admin_url is not None
    httpx.post(f"{switch.admin_url}/api/v1/reset", json={"what": "faults"}, timeout=5).raise_for_status()
    context, opened = open_context(browser, switch.admin_url)
    try:
        yield opened
    finally:
        context.close()
    assert not opened.foreign, f"the console made requests elsewhere: {opened.foreign}"
    assert not opened.errors, f"errors in the page: {opened.errors}"


def purchase_args(switch: SwitchProcess, terminal: str, amount: str, store: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "terminal", "purchase", "--port", str(switch.port), "--terminal-id", terminal,
            "--amount", amount, "--store", str(store / f"{terminal}.sqlite"), "--json", "--connect-attempts", "1",
            *extra]


def purchase(switch: SwitchProcess, terminal: str, amount: str, store: Path, *extra: str
             ) -> tuple[int, dict[str, Any]]:
    """``iso-terminal purchase`` as a user runs it; its exit status and JSON outcome."""
    done = subprocess.run(purchase_args(switch, terminal, amount, store, *extra), capture_output=True, text=True,
                          timeout=TERMINAL_LIMIT, check=False)
    assert done.stdout.strip(), f"no outcome (exit {done.returncode}): {done.stderr}"
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])
