"""The QA console in a real headless Chromium against a real ``iso-switch serve``.

Each test drives the page as a person would (clicks, typing, the keyboard), runs real
``iso-terminal purchase`` processes against the switch, and checks what the page shows against
what the switch did (its API, ``iso-switch ledger --json``). Every page gets an axe-core check and
a screenshot in docs/console/; any request to another origin, or a script error, fails the test.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from switch.testing import SwitchProcess
from tests.browser.conftest import (
    PHONE,
    START_LIMIT,
    TERMINAL_LIMIT,
    UI_LIMIT_MS,
    Console,
    open_context,
    purchase,
    purchase_args,
)

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture fails (CI) or skips (locally) with the reason
    expect = None  # type: ignore[assignment]

pytestmark = pytest.mark.slow


def api(switch: SwitchProcess, method: str, path: str, **kwargs: Any) -> Any:
    assert switch.admin_url is not None
    response = httpx.request(method, f"{switch.admin_url}/api/v1/{path}", timeout=10, **kwargs)
    response.raise_for_status()
    return response.json()


def traffic_row(console: Console, terminal: str, stan: str, mti: str = "0200") -> Any:
    return console.page.locator(f"#traffic-body tr[data-terminal='{terminal}'][data-stan='{stan}']").filter(
        has=console.page.locator("td:nth-child(4)", has_text=re.compile(f"^{mti}$")))


def test_a_purchase_appears_live_with_its_code_and_decodes_field_by_field(console: Console, switch: SwitchProcess,
                                                                          workdir: Path) -> None:
    console.open("traffic")
    expect(console.page.locator("#conn-status")).to_have_text("live", timeout=UI_LIMIT_MS)
    status, outcome = purchase(switch, "BRLIVE01", "12.34", workdir)
    assert status == 0, outcome
    row = traffic_row(console, "BRLIVE01", outcome["stan"])
    expect(row).to_have_attribute("data-code", "00", timeout=UI_LIMIT_MS)
    expect(row.locator("td").nth(2)).to_have_text("BRLIVE01")
    expect(row.locator("td").nth(5)).to_have_text("12.34")

    # keyboard only: Tab from the top of the page to the row's button, then Enter
    console.page.locator("body").focus()
    on_row = ("(stan) => document.activeElement.tagName === 'BUTTON' && document.activeElement"
              ".closest(`tr[data-terminal='BRLIVE01'][data-stan='${stan}']`) !== null")
    for _ in range(60):  # the nav, the filters, the list: well under 60 stops
        console.page.keyboard.press("Tab")
        if console.page.evaluate(on_row, outcome["stan"]):
            break
    else:
        pytest.fail("the message's row cannot be reached with Tab")
    console.page.keyboard.press("Enter")
    detail = console.page.locator("#detail-body")
    expect(detail).to_contain_text("Request: 0200", timeout=UI_LIMIT_MS)
    expect(detail).to_contain_text("Response: 0210")
    expect(detail).to_contain_text("476173******0010")  # masked, as `iso-switch describe` masks it
    assert "4761739001010010" not in detail.inner_text()
    expect(detail).to_contain_text("System Trace Audit Number")
    field_39 = detail.locator(".message-view").nth(1).locator("tr", has=console.page.locator("td", has_text="39"))
    expect(field_39.first).to_contain_text("00")

    # filters and pause: a filter hides other terminals; while paused a new purchase is not drawn
    console.page.fill("#f-terminal", "NOSUCH01")
    expect(console.page.locator("#traffic-body tr")).to_have_count(0)
    console.page.fill("#f-terminal", "BRLIVE01")
    expect(traffic_row(console, "BRLIVE01", outcome["stan"])).to_have_count(1)
    console.page.click("#pause")
    expect(console.page.locator("#pause")).to_have_attribute("aria-pressed", "true")
    status, second = purchase(switch, "BRLIVE01", "1.00", workdir)
    assert status == 0, second
    expect(console.page.locator("#traffic-count")).to_contain_text("paused", timeout=UI_LIMIT_MS)
    expect(console.page.locator("#traffic-count")).not_to_contain_text("(0 new)", timeout=UI_LIMIT_MS)
    expect(traffic_row(console, "BRLIVE01", second["stan"])).to_have_count(0)
    console.page.click("#pause")
    expect(traffic_row(console, "BRLIVE01", second["stan"])).to_have_attribute("data-code", "00", timeout=UI_LIMIT_MS)
    console.page.fill("#f-terminal", "")
    console.screenshot("traffic")
    console.assert_accessible()


def test_disabling_a_fault_rule_in_the_page_lets_the_next_purchase_be_answered(
        console: Console, switch: SwitchProcess, workdir: Path) -> None:
    api(switch, "POST", "faults", json={"id": "lose-reply", "name": "BRFAULT1 replies are lost",
                                        "when": {"mti": ["0200"], "terminal": ["BRFAULT1"]}, "drop_response": True})
    console.open("faults")
    rule = console.page.locator("#rules-body tr[data-rule='lose-reply']")
    expect(rule).to_contain_text("drop_response", timeout=UI_LIMIT_MS)

    status, lost = purchase(switch, "BRFAULT1", "5.00", workdir, "--timeout", "1.5")
    assert status == 2, lost  # no answer: the terminal reverses
    console.page.click("a[data-nav='traffic']")
    row = traffic_row(console, "BRFAULT1", lost["stan"])
    expect(row).to_have_attribute("data-code", "none", timeout=UI_LIMIT_MS)
    expect(row.locator("td").nth(8)).to_have_text("drop_response (lose-reply)")  # the action and the rule id

    console.page.click("a[data-nav='faults']")
    console.page.get_by_label("Enable rule lose-reply").uncheck()
    expect(console.page.locator("#faults-message")).to_contain_text("lose-reply disabled", timeout=UI_LIMIT_MS)
    assert api(switch, "GET", "faults/lose-reply")["enabled"] is False
    status, answered = purchase(switch, "BRFAULT1", "6.00", workdir, "--timeout", "5")
    assert status == 0 and answered["response_code"] == "00", answered
    console.page.click("a[data-nav='traffic']")
    expect(traffic_row(console, "BRFAULT1", answered["stan"])).to_have_attribute("data-code", "00", timeout=UI_LIMIT_MS)
    traffic_row(console, "BRFAULT1", lost["stan"]).locator("button").click()
    expect(console.page.locator("#detail-body")).to_contain_text("Faults: drop_response (rules lose-reply)",
                                                                 timeout=UI_LIMIT_MS)
    console.screenshot("traffic-faults")

    # an edit the engine refuses shows the API's own message; nothing changes
    console.page.click("a[data-nav='faults']")
    console.page.get_by_role("button", name="Edit rule lose-reply").click()
    table = json.loads(console.page.input_value("#rule-json"))
    table["probability"] = 2
    console.page.fill("#rule-json", json.dumps(table))
    console.page.click("#rule-save")
    expect(console.page.locator("#faults-error")).to_contain_text("probability", timeout=UI_LIMIT_MS)
    assert api(switch, "GET", "faults/lose-reply")["probability"] == 1.0
    console.page.click("#rule-cancel")

    # add from a template
    console.page.select_option("#template", "respond")
    console.page.click("#use-template")
    assert json.loads(console.page.input_value("#rule-json"))["respond"] == "91"
    console.page.click("#rule-save")
    expect(console.page.locator("#faults-message")).to_contain_text("added", timeout=UI_LIMIT_MS)
    rules = api(switch, "GET", "faults")["rules"]
    assert [r.get("respond") for r in rules] == [None, "91"]
    expect(console.page.locator("#rules-body tr")).to_have_count(2)
    console.screenshot("faults")
    console.assert_accessible()


def test_loading_a_scenario_from_the_page(console: Console, switch: SwitchProcess) -> None:
    console.open("faults")
    console.page.fill("#scenario-input", "flaky-network")
    console.page.fill("#scenario-seed", "8583")
    console.page.get_by_role("button", name="Load scenario").click()
    expect(console.page.locator("#faults-message")).to_contain_text("Scenario flaky-network loaded",
                                                                     timeout=UI_LIMIT_MS)
    expect(console.page.locator("#scenario-name")).to_have_text("flaky-network")
    expect(console.page.locator("#seed-value")).to_have_text("8583")
    expect(console.page.locator("#rules-body tr[data-rule='latency']")).to_have_count(1)
    loaded = api(switch, "GET", "scenarios")
    assert loaded["loaded"] == "flaky-network"
    assert api(switch, "GET", "faults")["seed"] == 8583
    console.screenshot("scenario")
    # a name the switch does not know: the loader's message, and nothing changes
    console.page.fill("#scenario-input", "no-such-scenario")
    console.page.get_by_role("button", name="Load scenario").click()
    expect(console.page.locator("#faults-error")).to_contain_text("no-such-scenario", timeout=UI_LIMIT_MS)
    assert api(switch, "GET", "scenarios")["loaded"] == "flaky-network"
    api(switch, "POST", "scenario", json={"name": "healthy"})


def test_a_held_request_is_released_from_the_page(console: Console, switch: SwitchProcess, workdir: Path) -> None:
    api(switch, "POST", "faults", json={"id": "park", "when": {"mti": ["0200"], "terminal": ["BRHELD01"]},
                                        "hold": True})
    terminal = subprocess.Popen(purchase_args(switch, "BRHELD01", "7.00", workdir, "--timeout", "30"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        console.open("held")
        row = console.page.locator("#held-body tr[data-held]")
        expect(row).to_contain_text("BRHELD01", timeout=UI_LIMIT_MS)
        expect(row).to_contain_text("park")
        console.screenshot("held")
        console.assert_accessible()
        row.get_by_role("button", name="Approve").click()
        expect(console.page.locator("#held-message")).to_contain_text("released as approve", timeout=UI_LIMIT_MS)
        out, err = terminal.communicate(timeout=TERMINAL_LIMIT)
    finally:
        if terminal.poll() is None:
            terminal.kill()
            terminal.wait()
    assert terminal.returncode == 0, (out, err)
    assert json.loads(out.strip().splitlines()[-1])["response_code"] == "00"
    expect(console.page.locator("#held-body")).to_contain_text("No held requests", timeout=UI_LIMIT_MS)


def _ledger_json(workdir: Path) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "switch", "ledger", "--ledger", str(workdir / "ledger.sqlite"),
                           "--json"], capture_output=True, text=True, timeout=TERMINAL_LIMIT, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _money(minor: int) -> str:
    return f"{minor / 100:.2f}"


def test_ledger_page_totals_equal_the_ledger_command(console: Console, switch: SwitchProcess, workdir: Path) -> None:
    for amount in ("10.00", "2.50"):
        status, outcome = purchase(switch, "BRLEDGR1", amount, workdir)
        assert status == 0, outcome
    ledger = _ledger_json(workdir)  # the command first, then the page: nothing runs in between
    assert ledger["batches"], ledger
    console.open("ledger")
    expect(console.page.locator("#batches-body tr[data-terminal='BRLEDGR1']")).to_have_count(1, timeout=UI_LIMIT_MS)
    expect(console.page.locator("#batches-body tr")).to_have_count(len(ledger["batches"]))
    for batch in ledger["batches"]:
        selector = f"tr[data-terminal='{batch['terminal']}'][data-batch='{batch['batch']}']"
        row = console.page.locator(f"#batches-body {selector}")
        for column in ("debit_count", "credit_count"):
            expect(row.locator(f"td[data-col='{column}']")).to_have_text(str(batch[column]))
        for column in ("debit_amount", "credit_amount"):
            expect(row.locator(f"td[data-col='{column}']")).to_have_text(_money(batch[column]))
        expect(row.locator("td[data-col='net_amount']")).to_have_text(_money(batch["debit_amount"]
                                                                             - batch["credit_amount"]))
    total = console.page.locator("#batches-total")
    expect(total.locator("td[data-col='debit_amount']")).to_have_text(
        _money(sum(b["debit_amount"] for b in ledger["batches"])))
    expect(total.locator("td[data-col='debit_count']")).to_have_text(
        str(sum(b["debit_count"] for b in ledger["batches"])))
    mine = next(b for b in ledger["batches"] if b["terminal"] == "BRLEDGR1")
    assert (mine["debit_count"], mine["debit_amount"]) == (2, 1250)

    console.page.fill("#postings-search", "BRLEDGR1")
    expect(console.page.locator("#postings-body tr")).to_have_count(2)
    expect(console.page.locator("#postings-count")).to_have_text(f"2 of {len(ledger['postings'])} postings")
    console.page.fill("#terminal-input", "BRLEDGR1")
    console.page.get_by_role("button", name="Show terminal").click()
    expect(console.page.locator("#terminal-open-batch")).to_contain_text("2 debits 12.50", timeout=UI_LIMIT_MS)
    console.screenshot("ledger")
    console.assert_accessible()


def test_health_page_shows_connections_rates_and_commit_path(console: Console, switch: SwitchProcess,
                                                             workdir: Path) -> None:
    status, outcome = purchase(switch, "BRHLTH01", "3.00", workdir)
    assert status == 0, outcome
    console.open("health")
    cards = console.page.locator("#health-cards")
    expect(cards).to_contain_text("Status", timeout=UI_LIMIT_MS)
    expect(cards).to_contain_text("ok")
    expect(cards).to_contain_text("Commit lag")
    expect(console.page.locator("#chart svg")).to_have_count(2)
    expect(console.page.locator("#chart svg polyline.rate")).to_have_count(1, timeout=UI_LIMIT_MS)
    points = api(switch, "GET", "health/history")["points"]
    assert any(p["messages_per_second"] > 0 for p in points), points
    console.screenshot("health")
    console.assert_accessible()


def test_phone_width_has_no_sideways_page_scroll(browser: Any, switch: SwitchProcess) -> None:
    assert switch.admin_url is not None
    context, console = open_context(browser, switch.admin_url, viewport=PHONE)
    try:
        for page in ("traffic", "faults", "ledger"):
            console.open(page)
            overflow = console.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{page}: the page is {overflow}px wider than a phone"
        console.open("traffic")
        console.screenshot("traffic-phone")
        console.assert_accessible()
    finally:
        context.close()
    assert not console.foreign and not console.errors, (console.foreign, console.errors)


def test_docs_and_console_load_only_from_the_switch(browser: Any, switch: SwitchProcess) -> None:
    """No CDN: Swagger UI and the console load with the CSP enforced and no request elsewhere."""
    assert switch.admin_url is not None
    context, console = open_context(browser, switch.admin_url, bypass_csp=False)
    try:
        response = console.page.goto(f"{switch.admin_url}/")
        assert response is not None and "default-src 'self'" in response.headers["content-security-policy"]
        expect(console.page.locator("#conn-status")).to_have_text("live", timeout=UI_LIMIT_MS)
        console.page.goto(f"{switch.admin_url}/docs")
        expect(console.page.locator(".swagger-ui .info .title")).to_contain_text("iso-switch admin API",
                                                                                 timeout=UI_LIMIT_MS)
        console.screenshot("docs")
    finally:
        context.close()
    assert not console.foreign, console.foreign
    assert not console.errors, console.errors


def test_with_a_token_the_console_refuses_until_it_is_given(browser: Any, workdir: Path) -> None:
    token = "qa-console-secret"
    with SwitchProcess.start(["--ledger", str(workdir / "token-ledger.sqlite"), "--no-signon",
                              "--admin-token", token], cwd=workdir, startup_timeout=START_LIMIT) as switch:
        assert switch.admin_url is not None
        context, console = open_context(browser, switch.admin_url)
        try:
            console.page.goto(f"{switch.admin_url}/#faults")
            expect(console.page.locator("#login")).to_be_visible(timeout=UI_LIMIT_MS)
            expect(console.page.locator("#page-faults")).to_be_hidden()
            expect(console.page.locator("#rules-body tr")).to_have_count(0)
            console.screenshot("login")
            console.assert_accessible()
            console.page.fill("#token", "wrong-token")
            console.page.press("#token", "Enter")
            expect(console.page.locator("#login-error")).to_contain_text("refused", timeout=UI_LIMIT_MS)
            expect(console.page.locator("#page-faults")).to_be_hidden()
            console.page.fill("#token", token)
            console.page.get_by_role("button", name="Sign in").click()
            expect(console.page.locator("#page-faults")).to_be_visible(timeout=UI_LIMIT_MS)
            expect(console.page.locator("#scenario-name")).to_have_text("default", timeout=UI_LIMIT_MS)
            assert console.page.evaluate("sessionStorage.getItem('iso-switch-admin-token')") == token
            # the page's session holds the token; a new tab's session does not
            other = context.new_page()
            other.goto(f"{switch.admin_url}/")
            expect(other.locator("#login")).to_be_visible(timeout=UI_LIMIT_MS)
            other.close()
            # the token is needed by the API itself, not only by the page
            assert httpx.get(f"{switch.admin_url}/api/v1/faults", timeout=5).status_code == 401
        finally:
            context.close()
        assert not console.errors, console.errors
        assert not console.foreign, console.foreign
    assert switch.returncode == 0, switch.text
