"""The admin API against a running ``iso-switch serve``: HTTP changes change what terminals get on TCP.

One switch per module, started as a user starts it (``python -m switch serve --port 0 --admin-port
0``, ports read from what it prints), driven over real loopback sockets: fault rules added,
patched and deleted over HTTP apply to the next message, in-flight messages keep their plan,
maintenance mode answers 91 or refuses connections, bad payloads are 422 naming the key, and the
journal and /metrics show what happened. Every test uses its own terminal id and resets the fault
engine first, so the tests do not depend on each other's order. SIGTERM at the end must drain and
close the ledger cleanly.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from switch.codec import Message
from switch.testing import SwitchProcess
from tests.fault_wire import Client

START_LIMIT = 30.0  # seconds for the subprocess to print its ports (imports FastAPI, hypercorn)
TEST_LIMIT = 15.0
STOP_LIMIT = 15.0


@pytest.fixture(scope="module")
def switch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwitchProcess]:
    workdir: Path = tmp_path_factory.mktemp("switch")
    running = SwitchProcess.start(["--ledger", str(workdir / "ledger.sqlite"), "--no-signon", "--seed", "8583"],
                                  cwd=workdir, startup_timeout=START_LIMIT)
    try:
        yield running
    finally:
        returncode = running.stop(STOP_LIMIT)
    assert returncode == 0, running.text
    assert running.closed_cleanly, running.text


@pytest.fixture
async def admin(switch: SwitchProcess) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the switch's admin API, with the fault engine reset (no rules, maintenance off)."""
    async with httpx.AsyncClient(base_url=switch.admin_url, timeout=5.0) as http:
        response = await http.post("/api/v1/reset", json={"what": "faults"})
        assert response.status_code == 200, response.text
        yield http


def purchase(stan: int, terminal: str, amount: int = 1500) -> Message:
    """A purchase stamped with the current time (the switch checks field 7 against its clock)."""
    f7 = datetime.now(UTC).strftime("%m%d%H%M%S")
    return Message("0200", {2: "4761739001010010", 3: "000000", 4: f"{amount:012d}", 7: f7, 11: f"{stan:06d}",
                            12: f7[4:], 13: f7[:4], 14: "3012", 22: "051", 25: "00", 41: terminal,
                            42: "MERCHANT0000001", 49: "840"})


async def journal_entry(admin: httpx.AsyncClient, terminal: str, stan: int, *, settled: bool = True
                        ) -> dict[str, Any]:
    """The request's journal entry, read over HTTP; with ``settled``, once it was answered or given up."""
    while True:
        response = await admin.get("/api/v1/journal", params={"terminal": terminal, "stan": stan, "mti": "0200"})
        assert response.status_code == 200, response.text
        requests = [e for e in response.json()["entries"] if e["direction"] == "in"]
        if requests and (not settled or requests[-1]["matched"] or requests[-1]["note"]):
            return requests[-1]
        await trio.sleep(0.02)


async def postings(admin: httpx.AsyncClient, terminal: str) -> dict[str, dict[str, Any]]:
    response = await admin.get("/api/v1/ledger/postings", params={"terminal": terminal})
    assert response.status_code == 200, response.text
    return {p["stan"]: p for p in response.json()["postings"]}


# ---------------------------------------------------------------------------------------------


async def test_fault_added_over_http_drops_the_next_reply_and_deleting_it_restores_replies(
        switch: SwitchProcess, admin: httpx.AsyncClient) -> None:
    terminal = "E2EDROP1"
    with trio.fail_after(TEST_LIMIT):
        client = await Client.connect(switch.port)
        await client.send(purchase(1, terminal))
        assert (await client.reply())[39] == "00"

        added = await admin.post("/api/v1/faults", json={
            "id": "lose-0210", "when": {"mti": ["0200"], "terminal": [terminal]}, "drop_response": True})
        assert added.status_code == 201, added.text
        assert added.json()["id"] == "lose-0210"
        await client.send(purchase(2, terminal))
        lost = await journal_entry(admin, terminal, 2)
        assert lost["faults"] == ["drop_response"] and lost["matched"] is False
        assert "000002" in await postings(admin, terminal)  # committed, never confirmed to the terminal

        deleted = await admin.delete("/api/v1/faults/lose-0210")
        assert deleted.status_code == 200, deleted.text
        await client.send(purchase(3, terminal))
        reply = await client.reply()  # the first frame since the fault: the 0210 for STAN 2 never came
        assert (reply[11], reply[39]) == ("000003", "00")
        await client.expect_silence()
        assert (await admin.get("/api/v1/faults")).json()["rules"] == []
        await client.aclose()


async def test_patching_a_rule_over_http_changes_the_next_answer(switch: SwitchProcess,
                                                                 admin: httpx.AsyncClient) -> None:
    terminal = "E2EPATCH"
    with trio.fail_after(TEST_LIMIT):
        client = await Client.connect(switch.port)
        added = await admin.post("/api/v1/faults", json={"when": {"terminal": [terminal]}, "respond": "96"})
        assert added.status_code == 201, added.text
        rule_id = added.json()["id"]
        codes = []
        for stan, change in enumerate([None, {"respond": "91"}, {"enabled": False}], start=1):
            if change is not None:
                patched = await admin.patch(f"/api/v1/faults/{rule_id}", json=change)
                assert patched.status_code == 200, patched.text
            await client.send(purchase(stan, terminal))
            codes.append((await client.reply())[39])
        assert codes == ["96", "91", "00"]
        counters = (await admin.get("/api/v1/faults")).json()["counters"][rule_id]
        assert counters == {"matched": 2, "fired": 2}  # disabled: not consulted, not counted
        await client.aclose()


async def test_a_message_in_flight_keeps_the_plan_it_started_with(switch: SwitchProcess,
                                                                  admin: httpx.AsyncClient) -> None:
    terminal = "E2EFLITE"
    with trio.fail_after(TEST_LIMIT):
        client = await Client.connect(switch.port)
        added = await admin.post("/api/v1/faults", json={
            "id": "slow", "when": {"terminal": [terminal]}, "delay_response": "600ms"})
        assert added.status_code == 201, added.text
        sent = await client.send(purchase(1, terminal))
        assert (await journal_entry(admin, terminal, 1, settled=False))["faults"] == ["delay_response"]
        assert (await admin.delete("/api/v1/faults/slow")).status_code == 200
        late = await client.reply()
        assert late[11] == "000001" and trio.current_time() - sent >= 0.6  # still delayed
        sent = await client.send(purchase(2, terminal))
        assert (await client.reply())[11] == "000002"
        assert trio.current_time() - sent < 0.5  # the next one is not
        await client.aclose()


async def test_maintenance_over_http_answers_91_then_refuses_then_ends(switch: SwitchProcess,
                                                                       admin: httpx.AsyncClient) -> None:
    terminal = "E2EMAINT"
    with trio.fail_after(TEST_LIMIT):
        client = await Client.connect(switch.port)
        response = await admin.put("/api/v1/maintenance", json={"mode": "respond", "code": "91"})
        assert response.status_code == 200, response.text
        assert response.json() == {"mode": "respond", "code": "91"}
        await client.send(purchase(1, terminal))
        assert (await client.reply())[39] == "91"
        assert "000001" not in await postings(admin, terminal)  # answered without processing

        assert (await admin.put("/api/v1/maintenance", json={"mode": "refuse"})).status_code == 200
        refused = await Client.connect(switch.port)
        assert await refused.receive_raw() == b""  # closed at once
        await refused.aclose()

        assert (await admin.put("/api/v1/maintenance", json={"mode": "off"})).status_code == 200
        back = await Client.connect(switch.port)
        await back.send(purchase(2, terminal))
        assert (await back.reply())[39] == "00"
        health = (await admin.get("/health")).json()
        assert health["status"] == "ok" and health["maintenance"] == "off"
        await back.aclose()
        await client.aclose()


@pytest.mark.parametrize(("method", "path", "body", "loc", "reason"), [
    ("post", "/api/v1/faults", {"close": "later"}, ["body", "close"], '"before" or "after"'),
    ("post", "/api/v1/faults", {"when": {"nth": 0}, "drop_request": True}, ["body", "when", "nth"], ">= 1"),
    ("post", "/api/v1/faults", {"drop_responce": True}, ["body", "drop_responce"], "unknown key"),
    ("post", "/api/v1/faults", {"when": {"mti": ["0200"]}}, ["body"], "no action"),
    ("post", "/api/v1/faults", {"drop_request": True, "delay_response": "1s"}, ["body", "delay_response"],
     "no effect"),
    ("post", "/api/v1/faults", {"delay_response": {"uniform": ["300ms", "100ms"]}},
     ["body", "delay_response", "uniform[2]"], "upper bound"),  # list positions as in a scenario file's key
    ("put", "/api/v1/maintenance", {"mode": "sometimes"}, ["body", "mode"], "refuse"),
    ("patch", "/api/v1/faults/keep", {"probability": 2}, ["body", "probability"], "0 to 1"),
])
async def test_bad_payloads_are_422_naming_the_key_and_change_nothing(
        switch: SwitchProcess, admin: httpx.AsyncClient, method: str, path: str, body: dict[str, Any],
        loc: list[str | int], reason: str) -> None:
    with trio.fail_after(TEST_LIMIT):
        kept = await admin.post("/api/v1/faults", json={"id": "keep", "when": {"terminal": ["NOBODY00"]},
                                                         "respond": "96"})
        assert kept.status_code == 201, kept.text
        before = (await admin.get("/api/v1/faults")).json()
        response = await admin.request(method.upper(), path, json=body)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert any(error["loc"] == loc and reason in error["msg"] for error in detail), detail
        assert (await admin.get("/api/v1/faults")).json() == before


async def test_journal_over_http_shows_both_frames_with_the_faults_applied(switch: SwitchProcess,
                                                                         admin: httpx.AsyncClient) -> None:
    terminal = "E2EJRNL1"
    with trio.fail_after(TEST_LIMIT):
        client = await Client.connect(switch.port)
        added = await admin.post("/api/v1/faults", json={"when": {"terminal": [terminal], "nth": 1},
                                                          "wrong_echo": ["stan"]})
        assert added.status_code == 201, added.text
        for stan in (1, 2):
            await client.send(purchase(stan, terminal))
            await client.reply()
        await client.aclose()
        response = await admin.get("/api/v1/journal", params={"terminal": terminal})
        entries = response.json()["entries"]
        requests = [e for e in entries if e["direction"] == "in"]
        replies = {e["request_seq"]: e for e in entries if e["direction"] == "out"}
        assert len(entries) == 4 and [e["mti"] for e in requests] == ["0200", "0200"]
        # a reply is journalled once written, so it may come after the next request is read: pair by request_seq
        (first_in, second_in), (first_out, second_out) = requests, [replies[e["seq"]] for e in requests]
        assert first_out["mti"] == second_out["mti"] == "0210"
        assert first_in["faults"] == first_out["faults"] == ["wrong_echo"]
        assert first_out["stan"] != "000001"  # what was really sent: the wrong echo
        assert second_in["faults"] == second_out["faults"] == []
        assert first_in["matched"] is second_in["matched"] is True
        assert first_in["fields"]["2"] != "4761739001010010" and first_in["fields"]["2"].startswith("476173")
        faulted = (await admin.get("/api/v1/journal", params={"terminal": terminal, "faults": "true"})).json()
        assert sorted(e["seq"] for e in faulted["entries"]) == sorted([first_in["seq"], first_out["seq"]])


async def test_metrics_count_messages_faults_and_connections(switch: SwitchProcess,
                                                             admin: httpx.AsyncClient) -> None:
    terminal = "E2EMETRC"
    with trio.fail_after(TEST_LIMIT):
        added = await admin.post("/api/v1/faults", json={"when": {"terminal": [terminal]}, "respond": "05"})
        assert added.status_code == 201, added.text
        client = await Client.connect(switch.port)
        await client.send(purchase(1, terminal))
        assert (await client.reply())[39] == "05"
        response = await admin.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        text = response.text
        await client.aclose()

    def sample(name: str, **labels: str) -> float:
        """The sum of ``name``'s series carrying every label given (other labels, e.g. a rule id, may be there)."""
        total, found = 0.0, False
        for series, value in re.findall(rf"^{re.escape(name)}(\{{[^}}]*\}})? ([0-9.e+]+)$", text, re.MULTILINE):
            if all(f'{key}="{wanted}"' in series for key, wanted in labels.items()):
                total, found = total + float(value), True
        assert found, f"{name}{labels} not in /metrics:\n{text}"
        return total

    assert sample("iso_switch_messages_total", mti="0200", response_code="05") >= 1
    assert sample("iso_switch_faults_applied_total", action="respond") >= 1
    assert sample("iso_switch_connections_open") >= 1  # this test's connection, read while it was open
    assert sample("iso_switch_request_latency_seconds_count") >= 1


async def test_openapi_document_is_served(switch: SwitchProcess) -> None:
    with trio.fail_after(TEST_LIMIT):
        async with httpx.AsyncClient(base_url=switch.admin_url, timeout=5.0) as http:
            document = (await http.get("/openapi.json")).json()
    assert {"/api/v1/faults", "/api/v1/faults/{rule_id}", "/api/v1/maintenance", "/api/v1/journal",
            "/metrics", "/health"} <= set(document["paths"])


@pytest.mark.slow
async def test_scenario_paths_allowed_hosts_and_the_no_token_warning(tmp_path: Path) -> None:
    """The hostile-caller options as a user passes them: ``--scenario-path`` and ``--admin-allow-host``."""
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    (scenarios / "mine.toml").write_text('[scenario]\nname = "mine"\n\n[[fault]]\nid = "slow"\n'
                                         'delay_request = "10ms"\n', encoding="utf-8")
    running = SwitchProcess.start(["--ledger", ":memory:", "--no-signon", "--scenario-path", str(scenarios),
                                   "--admin-allow-host", "switch.lab"], cwd=tmp_path, startup_timeout=START_LIMIT)
    try:
        assert running.admin_url is not None
        async with httpx.AsyncClient(base_url=running.admin_url, timeout=5.0) as http:
            with trio.fail_after(TEST_LIMIT):
                loaded = await http.post("/api/v1/scenario", json={"name": "mine.toml"})
                assert loaded.status_code == 200, loaded.text
                assert [rule["id"] for rule in loaded.json()["fault_rules"]] == ["slow"]
                assert (await http.post("/api/v1/scenario", json={"name": "/dev/zero"})).status_code == 422
                assert (await http.get("/health", headers={"host": "evil.example"})).status_code == 421
                assert (await http.get("/health", headers={"host": "switch.lab:8584"})).status_code == 200
                health = (await http.get("/health")).json()
                assert health["status"] == "ok" and health["scenario"] == "mine"
    finally:
        returncode = running.stop(STOP_LIMIT)
    assert returncode == 0, running.text
    assert "WARNING: the admin API has no token" in running.text
