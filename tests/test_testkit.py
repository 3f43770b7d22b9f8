"""switch.testkit without a switch: configs, the ledger/journal assertions, the admin client's
reading of answers, and the plugin's import cost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from switch.journal import JournalEntry
from switch.ledger_records import Posting
from switch.testkit import SwitchConfig, assert_not_posted, assert_posted, assert_reversed_once, reversal_requests
from switch.testkit.admin import AdminError, SwitchAdmin


def posting(stan: str, *, terminal: str = "TERM0001", approved: bool = True, reversal_seq: int | None = None,
            amount: int = 1234) -> Posting:
    return Posting(seq=int(stan), received_at=0.0, terminal=terminal, stan=stan, transmission_time="0101120000",
                   mti="0200", kind="purchase", direction="debit", amount=amount, currency="840",
                   pan="476173******0010", batch="000001", response_code="00" if approved else "51",
                   approved=approved, rrn="000000000001", auth_code="123456", reversal_seq=reversal_seq)


def request(mti: str, stan: str, *, original: str | None = None, terminal: str = "TERM0001",
            direction: str = "in") -> JournalEntry:
    fields = {"11": stan, "41": terminal}
    if original is not None:
        fields["90"] = f"0200{original}0101120000" + "0" * 22
    return JournalEntry(seq=0, time=1.0, connection=1, peer="127.0.0.1:1", direction=direction, mti=mti, stan=stan,
                        terminal=terminal, response_code=None, faults=(), fields=fields, raw_hex="", note="",
                        error=None, matched=True)


# ---------------------------------------------------------------------------------------------
# SwitchConfig


def test_config_from_marker_keywords_and_serve_arguments(tmp_path: Path) -> None:
    config = SwitchConfig.of({"scenario": "system-timeout", "dialect": "cup-pos", "framing": "ascii4",
                              "tpdu": False, "seed": 7, "signon": False, "args": ["-v"]})
    assert config.serve_args(tmp_path) == [
        "--dialect", "cup-pos", "--ledger", str(tmp_path / "ledger.sqlite"), "--scenario", "system-timeout",
        "--length-header", "ascii4", "--no-tpdu", "--seed", "7", "--no-signon", "-v"]
    assert SwitchConfig.of("flaky-network").scenario == "flaky-network"
    assert SwitchConfig.of(None) == SwitchConfig()
    assert SwitchConfig(ledger=":memory:").serve_args(tmp_path)[3] == ":memory:"


@pytest.mark.parametrize(("settings", "message"), [
    ({"scenaro": "x"}, "unknown switch setting 'scenaro' (known: args, dialect,"),
    ({"framing": "binary3"}, "framing='binary3': expected one of binary2"),
    ({"args": "-v"}, "args must be a sequence of strings"),
])
def test_config_mistakes_are_named(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        SwitchConfig.of(settings)


# ---------------------------------------------------------------------------------------------
# Ledger and journal assertions


def test_assert_posted_finds_one_and_checks_it() -> None:
    rows = [posting("000001"), posting("000002", approved=False), posting("000001", terminal="OTHER001")]
    assert assert_posted(rows, 2, approved=False).response_code == "51"
    assert assert_posted(rows, "1", terminal="TERM0001", amount=1234).terminal == "TERM0001"
    with pytest.raises(AssertionError, match="expected one posting for STAN 000001, found 2"):
        assert_posted(rows, 1)
    with pytest.raises(AssertionError, match=r"amount 1234, expected 99; declined \(code 51\), expected approved"):
        assert_posted(rows, 2, amount=99)
    with pytest.raises(AssertionError, match="not reversed, expected reversed"):
        assert_posted(rows, 1, terminal="TERM0001", reversed=True)
    with pytest.raises(ValueError, match="a STAN is 1-6 digits"):
        assert_posted(rows, "12345678")
    assert_not_posted(rows, 3)
    with pytest.raises(AssertionError, match="expected no posting for STAN 000002"):
        assert_not_posted(rows, 2)


def test_reversed_once_allows_repeats_of_one_reversal() -> None:
    rows = [posting("000005", reversal_seq=9)]
    journal = [request("0200", "000005"), request("0400", "000006", original="000005"),
               request("0401", "000006", original="000005"), request("0410", "000006", direction="out"),
               request("0400", "000008", original="000007")]
    assert [entry.mti for entry in reversal_requests(journal, 5)] == ["0400", "0401"]
    assert assert_reversed_once(rows, journal, 5).stan == "000005"


def test_reversed_once_refuses_two_reversals_none_and_an_unreversed_posting() -> None:
    rows = [posting("000005", reversal_seq=9)]
    twice = [request("0400", "000006", original="000005"), request("0400", "000007", original="000005")]
    with pytest.raises(AssertionError, match="2 distinct reversals"):
        assert_reversed_once(rows, twice, 5)
    with pytest.raises(AssertionError, match="0 distinct reversals"):
        assert_reversed_once(rows, [], 5)
    with pytest.raises(AssertionError, match="not reversed, expected reversed"):
        assert_reversed_once([posting("000005")], twice[:1], 5)


def test_a_cup_reversal_keeps_the_original_stan() -> None:
    rows = [posting("000005", reversal_seq=9)]
    assert assert_reversed_once(rows, [request("0400", "000005")], "000005").reversed


# ---------------------------------------------------------------------------------------------
# The admin client's reading of answers (a mock transport: no switch)


def test_admin_client_reads_records_and_raises_admin_errors() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/ledger/postings":
            assert request.url.params["terminal"] == "TERM0001"
            return httpx.Response(200, json={"count": 1, "postings": [{**posting("000001").as_dict()}]})
        if request.url.path == "/health":
            return httpx.Response(503, json={"status": "unhealthy", "problems": ["stalled"]})
        return httpx.Response(404, json={"detail": "no fault rule with id 'x'"})

    with SwitchAdmin("http://127.0.0.1:1/") as admin:
        admin._http = httpx.Client(base_url=admin.base_url, transport=httpx.MockTransport(answer))
        assert admin.postings(terminal="TERM0001") == [posting("000001")]
        assert admin.health()["status"] == "unhealthy"  # 503 is an answer from /health
        with pytest.raises(AdminError, match="DELETE /api/v1/faults/x: 404 no fault rule") as failure:
            admin.delete_fault("x")
        assert failure.value.status == 404


def test_importing_switch_loads_neither_pytest_nor_hypothesis() -> None:
    code = ("import sys, switch, switch.testkit, terminal; "
            "print(sorted(m for m in ('pytest', 'hypothesis', 'httpx') if m in sys.modules))")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert shown.stdout.strip() == "[]"
