"""The five seed failure modes end to end: the real ``iso-switch serve`` and the real terminal over loopback.

Each test starts the switch as a user does (``python -m switch serve --port 0 --admin-port 0
--scenario NAME``, ports read from what it prints) and drives the terminal with the real CLI
(``python -m terminal purchase|settle|status ... --json``) or, where one terminal must live
across a late reply or an expiring session, with ``TerminalClient`` in-process over real TCP. Each
shows what the terminal reports (exit status and JSON outcome), what the switch's journal saw
(admin API) and what the host's ledger holds afterwards (``python -m switch ledger --json``).

Real time: terminals run with ``--timeout 2`` instead of 30 s. Where a scenario's own delays would
make a test slow (system-timeout's 35 s late reply, order-expired's 12 s queue and 2 min
sessions), the test shortens them at run time through the admin API or runs a copy of the shipped
scenario with shorter values, as each test's docstring says; the ordering of events the scenario is
about stays the same. Every test is bounded by ``trio.fail_after`` and every subprocess by a timeout.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from specs import scenarios_dir
from switch.codec import Codec, Message, load_dialect
from switch.codec.framing import Framing
from switch.codec.stream import FrameStream
from terminal.client import TerminalClient, TrioClock, tcp_connector
from terminal.policy import Echo, Note, Outcome, Purchase, SignOn, TerminalPolicy
from terminal.profile import TerminalProfile
from terminal.store import TerminalStore

START_LIMIT = 30.0  # the switch imports FastAPI and hypercorn before it prints its ports
STOP_LIMIT = 15.0
TEST_LIMIT = 30.0  # a hard stop; each test is built to finish well under 20 s
CLI_LIMIT = 20.0
TIMEOUT = 2.0  # the terminal's response timeout in these tests (30 s by default)
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
ADMIN = re.compile(r"admin API (http://127\.0\.0\.1:\d+)/docs")

ISO = load_dialect("iso87-binary")
TID = "TERM0001"
MID = "MERCHANT0000001"
PAN = "4761739001010010"  # not in the test-card table: approved
EXPIRY = "3012"


# ---------------------------------------------------------------------------------------------
# The switch and the CLIs as subprocesses


@dataclass
class RunningSwitch:
    port: int
    admin_url: str
    ledger_path: Path
    output_path: Path


@asynccontextmanager
async def running_switch(workdir: Path, scenario: str | Path) -> AsyncIterator[RunningSwitch]:
    """``iso-switch serve`` on free ports with ``scenario``; SIGTERM at the end must close the ledger cleanly.

    Its output goes to a file (read for the ports), so nothing has to keep draining a pipe.
    """
    ledger_path, output_path = workdir / "ledger.sqlite", workdir / "switch.out"
    argv = [sys.executable, "-m", "switch", "serve", "--port", "0", "--admin-port", "0", "--ledger",
            str(ledger_path), "--scenario", str(scenario), "--seed", "8583"]
    with output_path.open("wb") as output:
        process = await trio.lowlevel.open_process(argv, stdout=output, stderr=subprocess.STDOUT, cwd=workdir,
                                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        with trio.fail_after(START_LIMIT):
            while not (ADMIN.search(text := output_path.read_text(errors="replace")) and LISTENING.search(text)):
                assert process.poll() is None, f"the switch exited with {process.returncode}:\n{text}"
                await trio.sleep(0.05)
        port, admin_url = LISTENING.search(text), ADMIN.search(text)
        assert port is not None and admin_url is not None
        yield RunningSwitch(int(port.group(1)), admin_url.group(1), ledger_path, output_path)
    finally:
        with trio.CancelScope(shield=True):  # even when the test ran out of time: never leave it running
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(STOP_LIMIT):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
    text = output_path.read_text(errors="replace")
    assert process.returncode == 0 and "ledger closed cleanly" in text, text


@dataclass
class CliResult:
    exit_code: int
    outcome: dict[str, Any]
    stderr: str
    seconds: float


async def terminal(switch: RunningSwitch, store: Path, command: str, *args: str,
                   timeout: float = TIMEOUT) -> CliResult:
    """``python -m terminal COMMAND ... --json -v`` against the switch: exit status, JSON outcome, notes."""
    argv = [sys.executable, "-m", "terminal", command, "--port", str(switch.port), "--store", str(store),
            "--terminal-id", TID, "--timeout", f"{timeout:g}", "--json", "-v", *args]
    started = time.monotonic()
    with trio.fail_after(CLI_LIMIT):
        done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    stdout = done.stdout.decode().strip()
    assert stdout, f"{command} printed nothing (exit {done.returncode}): {done.stderr.decode()}"
    return CliResult(done.returncode, json.loads(stdout.splitlines()[-1]), done.stderr.decode(),
                     time.monotonic() - started)


async def status(store: Path) -> dict[str, Any]:
    """``python -m terminal status --json``: the terminal's store, read without connecting."""
    argv = [sys.executable, "-m", "terminal", "status", "--store", str(store), "--terminal-id", TID, "--json"]
    with trio.fail_after(CLI_LIMIT):
        done = await trio.run_process(argv, capture_stdout=True, check=True)
    report: dict[str, Any] = json.loads(done.stdout)
    return report


async def ledger(switch: RunningSwitch) -> dict[str, Any]:
    """``python -m switch ledger --json`` on the running switch's ledger (what it has committed)."""
    argv = [sys.executable, "-m", "switch", "ledger", "--ledger", str(switch.ledger_path), "--json"]
    with trio.fail_after(CLI_LIMIT):
        done = await trio.run_process(argv, capture_stdout=True, check=True)
    book: dict[str, Any] = json.loads(done.stdout)
    return book


async def journal(admin: httpx.AsyncClient, terminal_id: str = TID) -> list[dict[str, Any]]:
    """The switch's journal entries of one terminal, oldest first (admin API)."""
    response = await admin.get("/api/v1/journal", params={"terminal": terminal_id, "limit": 1000})
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()["entries"]
    return entries


def traffic(entries: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(direction, MTI, response code) per journal entry: the exchange as the switch saw it."""
    return [(entry["direction"], entry["mti"], entry["response_code"] or "") for entry in entries]


def posting(book: dict[str, Any], stan: str) -> dict[str, Any]:
    (found,) = [p for p in book["postings"] if p["terminal"] == TID and p["stan"] == stan]
    return found


def scenario_copy(workdir: Path, name: str, replacements: dict[str, str]) -> Path:
    """The shipped scenario ``name`` with some lines replaced (each must exist: the test says which)."""
    text = (scenarios_dir() / f"{name}.toml").read_text()
    for old, new in replacements.items():
        assert old in text, f"{name}.toml no longer contains {old!r}"
        text = text.replace(old, new)
    path = workdir / f"{name}-short.toml"
    path.write_text(text)
    return path


@asynccontextmanager
async def in_process_terminal(switch: RunningSwitch, store_path: Path, notes: list[Note],
                              terminal_id: str = TID) -> AsyncIterator[TerminalClient]:
    """A long-lived terminal over real TCP on the wall clock (the CLI lives for one command only)."""
    store = TerminalStore.open(store_path, terminal_id)
    try:
        profile = TerminalProfile.for_dialect(ISO, terminal_id, MID, response_timeout=TIMEOUT)
        clock = TrioClock.wall()
        policy = TerminalPolicy(profile, store, clock.now())
        async with TerminalClient(policy, Codec(ISO), Framing.from_dialect(ISO),
                                  tcp_connector("127.0.0.1", switch.port), clock, on_note=notes.append) as client:
            yield client
    finally:
        store.close()


def kinds(notes: list[Note]) -> list[str]:
    return [note.kind for note in notes]


# ---------------------------------------------------------------------------------------------
# pending-confirmation


async def test_pending_confirmation_reversed_and_the_batch_balances(tmp_path: Path) -> None:
    """Approved and booked, the answer lost four ways: dropped 0210 (card ...0013), TCP reset after the
    commit (...0021), the every-3rd-0200 drop (here on the wrong-amount-echo card ...0039), a 0210
    echoing another STAN (...0047). Each purchase ends "reversed" (exit 2): the reversal stored before
    the 0200 left went out at the timeout (or at once after the reset) and the host undid its posting.
    The one clean purchase stays approved and the settlement balances on it alone."""
    store = tmp_path / "terminal.sqlite"
    with trio.fail_after(TEST_LIMIT):
        async with running_switch(tmp_path, "pending-confirmation") as switch:
            dropped = await terminal(switch, store, "purchase", "--minor", "1300", "--pan", "4999000000000013")
            reset = await terminal(switch, store, "purchase", "--minor", "2100", "--pan", "4999000000000021")
            wrong_amount = await terminal(switch, store, "purchase", "--minor", "3900", "--pan", "4999000000000039")
            clean = await terminal(switch, store, "purchase", "--minor", "5000", "--pan", PAN)
            wrong_stan = await terminal(switch, store, "purchase", "--minor", "4700", "--pan", "4999000000000047")
            for result in (dropped, reset, wrong_amount, wrong_stan):
                assert (result.exit_code, result.outcome["kind"]) == (2, "reversed"), result
                assert "reversal-queued" in result.stderr and "reversal-cleared" in result.stderr
            assert (clean.exit_code, clean.outcome["kind"]) == (0, "approved"), clean
            assert "no reply within 2s" in dropped.stderr
            assert "no reply within" not in reset.stderr  # a reset is noticed at once, not at the timeout
            assert "field 4 not echoed" in wrong_amount.stderr or "no reply within" in wrong_amount.stderr
            assert "unexpected-message-discarded" in wrong_stan.stderr  # the 0210 matched no request

            book = await ledger(switch)
            for result in (dropped, reset, wrong_amount, wrong_stan):
                booked = posting(book, result.outcome["stan"])
                assert booked["approved"] and booked["reversed"] and not booked["captured"], booked
            assert posting(book, clean.outcome["stan"])["captured"]
            report = await status(store)
            assert report["pending_reversals"] == [] and report["summary"]["pending_reversals"] == 0
            assert report["summary"]["open_batch_states"] == {"reversed": 4, "approved": 1}

            settled = await terminal(switch, store, "settle")
            assert (settled.exit_code, settled.outcome["kind"], settled.outcome["response_code"]) == (0, "approved",
                                                                                                     "00"), settled
            book = await ledger(switch)
            (batch,) = [b for b in book["batches"] if b["terminal"] == TID and b["batch"] == "000001"]
            assert batch["status"] == "closed"
            assert (batch["debit_count"], batch["debit_amount"], batch["debit_reversal_count"]) == (1, 5000, 4)
            assert book["discrepancies"] == []


async def test_pending_confirmation_unanswered_reversal_goes_out_before_the_next_purchase(tmp_path: Path) -> None:
    """The 0210 of card ...0013 is lost, and (a rule added through the admin API) the answers to its
    0400 and 0401 repeats too: the purchase ends "unknown-queued" (exit 2) with the reversal stored
    (reason 98, 3 attempts). The host did reverse it, once. The next purchase sends the stored
    reversal first (a 0401, answered as the first one was) and only then its own 0200."""
    store = tmp_path / "terminal.sqlite"
    with trio.fail_after(TEST_LIMIT):
        async with running_switch(tmp_path, "pending-confirmation") as switch, \
                httpx.AsyncClient(base_url=switch.admin_url, timeout=5.0) as admin:
            rule = {"id": "lost-0410", "when": {"mti": ["0400", "0401"]}, "drop_response": True}
            assert (await admin.post("/api/v1/faults", json=rule)).status_code == 201
            lost = await terminal(switch, store, "purchase", "--minor", "1300", "--pan", "4999000000000013")
            assert (lost.exit_code, lost.outcome["kind"]) == (2, "unknown-queued"), lost
            (queued,) = (await status(store))["pending_reversals"]
            assert (queued["stan"], queued["reason"], queued["attempts"]) == (lost.outcome["stan"], "98", 3)
            booked = posting(await ledger(switch), lost.outcome["stan"])
            assert booked["approved"] and booked["reversed"]  # undone at the host; the terminal cannot know yet

            assert (await admin.delete("/api/v1/faults/lost-0410")).status_code == 200
            mark = len(await journal(admin))
            after = await terminal(switch, store, "purchase", "--minor", "2500", "--pan", PAN)
            assert (after.exit_code, after.outcome["kind"]) == (0, "approved"), after
            requests = [e["mti"] for e in (await journal(admin))[mark:] if e["direction"] == "in"]
            assert requests.index("0401") < requests.index("0200"), requests

            report = await status(store)
            assert report["pending_reversals"] == []
            states = {e["stan"]: e["state"] for e in report["open_batch_entries"]}
            assert states == {lost.outcome["stan"]: "reversed", after.outcome["stan"]: "approved"}
            book = await ledger(switch)
            assert len([r for r in book["postings"] if r["reversed"]]) == 1
            assert posting(book, after.outcome["stan"])["captured"]


# ---------------------------------------------------------------------------------------------
# zero-amount


async def _raw_zero_amount_purchase(port: int) -> Message:
    """A hand-made 0200 for 0.00 (after a sign-on) on a raw socket: what a careless terminal would send."""
    codec, framing = Codec(ISO), Framing.from_dialect(ISO)
    f7 = time.strftime("%m%d%H%M%S", time.gmtime())
    signon = Message("0800", {7: f7, 11: "000001", 41: "RAW00001", 70: "001"})
    zero = Message("0200", {2: PAN, 3: "000000", 4: "000000000000", 7: f7, 11: "000002", 12: f7[4:],
                            13: f7[:4], 14: EXPIRY, 22: "012", 25: "00", 41: "RAW00001", 42: MID, 49: "840"})
    stream = FrameStream(await trio.open_tcp_stream("127.0.0.1", port), framing)
    try:
        replies = []
        for request in (signon, zero):
            await stream.send_frame(codec.encode(request))
            frame = await stream.receive_frame()
            assert frame is not None
            replies.append(codec.decode(frame.payload))
    finally:
        await stream.aclose()
    assert replies[0].fields[39] == "00"
    return replies[1]


async def test_zero_amount_refused_locally_and_settlement_95_uploads_then_closes(tmp_path: Path) -> None:
    """Amount 0: the terminal refuses it (exit 1, "refused") without connecting, so the host never
    sees it; a 0200 for 0.00 sent by hand is declined 13 and only booked as a decline. Then two
    purchases and a settlement: the first 0500 is answered 95 (the scenario's rule), the terminal
    uploads both records and sends 0500 960000 ("after upload"); the host closes the batch as
    uploaded (00) with no discrepancy, and the terminal reports it as unbalanced (exit 4). Finally
    card ...0062, "approved" by the fault engine without being booked, makes the totals really
    differ: the host itself answers 95, the upload shows the sale it never saw, and the batch closes
    with that discrepancy recorded."""
    store = tmp_path / "terminal.sqlite"
    with trio.fail_after(TEST_LIMIT):
        async with running_switch(tmp_path, "zero-amount") as switch, \
                httpx.AsyncClient(base_url=switch.admin_url, timeout=5.0) as admin:
            zero = await terminal(switch, store, "purchase", "--amount", "0")
            assert (zero.exit_code, zero.outcome["kind"]) == (1, "refused"), zero
            assert "amount must be greater than zero" in zero.outcome["text"]
            assert await journal(admin) == []  # nothing reached the switch
            assert (await ledger(switch))["postings"] == []
            assert (await status(store))["summary"]["open_batch_entries"] == 0

            reply = await _raw_zero_amount_purchase(switch.port)
            assert (reply.mti, reply.fields[39]) == ("0210", "13")
            (raw,) = (await ledger(switch))["postings"]
            assert (raw["terminal"], raw["response_code"], raw["approved"]) == ("RAW00001", "13", False)

            for amount in ("12.34", "5.00"):
                bought = await terminal(switch, store, "purchase", "--amount", amount)
                assert (bought.exit_code, bought.outcome["kind"]) == (0, "approved"), bought
            mark = len(await journal(admin))
            settled = await terminal(switch, store, "settle")
            assert (settled.exit_code, settled.outcome["kind"], settled.outcome["batch"]) == (4, "unbalanced",
                                                                                             "000001"), settled
            assert "upload-started" in settled.stderr
            assert traffic(await journal(admin))[mark:] == [
                ("in", "0800", ""), ("out", "0810", "00"),
                ("in", "0500", ""), ("out", "0510", "95"),  # the rule: answered 95 unprocessed
                ("in", "0320", ""), ("out", "0330", "00"), ("in", "0320", ""), ("out", "0330", "00"),
                ("in", "0500", ""), ("out", "0510", "00"),  # 960000: totals after upload
            ]
            book = await ledger(switch)
            (batch,) = [b for b in book["batches"] if b["terminal"] == TID]
            assert (batch["status"], batch["upload_count"]) == ("closed", 2)  # closed as uploaded, see below
            assert (batch["debit_count"], batch["debit_amount"]) == (2, 1734)
            assert book["discrepancies"] == []
            assert (await status(store))["summary"]["batch"] == "000002"

            unbooked = await terminal(switch, store, "purchase", "--amount", "9.99", "--pan", "4999000000000062")
            assert (unbooked.exit_code, unbooked.outcome["kind"]) == (0, "approved"), unbooked
            assert [p for p in (await ledger(switch))["postings"] if p["terminal"] == TID and
                    p["stan"] == unbooked.outcome["stan"]] == []
            settled = await terminal(switch, store, "settle")
            assert (settled.exit_code, settled.outcome["kind"], settled.outcome["batch"]) == (4, "unbalanced",
                                                                                             "000002"), settled
            response = await admin.get("/api/v1/ledger/settlements", params={"terminal": TID})
            results = [s["result"] for s in response.json()["settlements"]]
            assert results == ["accepted-after-upload", "unbalanced", "accepted-after-upload"], results
            (difference,) = (await ledger(switch))["discrepancies"]
            assert (difference["kind"], difference["stan"], difference["upload_amount"]) == (
                "unknown-to-ledger", unbooked.outcome["stan"], 999)


# ---------------------------------------------------------------------------------------------
# system-timeout


async def test_system_timeout_reverses_with_98_and_discards_the_late_0210(tmp_path: Path) -> None:
    """Every 0200 is approved and committed at once and its 0210 held back. The scenario holds it
    35 s against a 30 s timeout; here the terminal waits 2 s and the rule is patched (admin API) to
    hold it 4 s: the same order of events in seconds. At its timeout the terminal sends the stored
    reversal with reason 98, the host undoes the posting and answers at once (outcome "reversed");
    the late 0210 (code 00) then arrives on the same connection and is logged and discarded, and
    the purchase stays reversed. This terminal lives in-process (over real TCP), because the CLI
    would have exited before the late reply."""
    store_path = tmp_path / "terminal.sqlite"
    notes: list[Note] = []
    with trio.fail_after(TEST_LIMIT):
        async with running_switch(tmp_path, "system-timeout") as switch, \
                httpx.AsyncClient(base_url=switch.admin_url, timeout=5.0) as admin:
            patched = await admin.patch("/api/v1/faults/late-0210", json={"delay_response": "4s"})
            assert patched.status_code == 200, patched.text
            async with in_process_terminal(switch, store_path, notes) as client:
                assert (await client.run_command(SignOn())).kind == "approved"
                started = trio.current_time()
                outcome: Outcome = await client.run_command(Purchase(1000, PAN, EXPIRY))
                elapsed = trio.current_time() - started
                assert outcome.kind == "reversed", outcome
                assert TIMEOUT <= elapsed < 4.0  # after the timeout, before the late reply
                assert f"reversal of STAN {outcome.stan} queued with reason 98" in [n.text for n in notes]
                assert "late-reply-discarded" not in kinds(notes)

                await trio.sleep_until(started + 4.5)  # the 0210 lands meanwhile, between commands
                for _ in range(20):  # a command feeds what arrived; a loaded machine may deliver it later
                    assert (await client.run_command(Echo())).kind == "approved"
                    if "late-reply-discarded" in kinds(notes):
                        break
                    await trio.sleep(0.25)
                (late,) = [note for note in notes if note.kind == "late-reply-discarded"]
                assert late.stan == outcome.stan and late.message is not None
                assert (late.message.mti, late.message.fields[39]) == ("0210", "00")
                assert client.policy.store.entry(outcome.journal_id).state == "reversed"  # unchanged by it

            seen = await journal(admin)
            order = [(e["direction"], e["mti"]) for e in seen if e["mti"] in ("0200", "0210", "0400", "0410")]
            assert order == [("in", "0200"), ("in", "0400"), ("out", "0410"), ("out", "0210")], order
            (reversal,) = [e for e in seen if e["mti"] == "0400"]
            assert reversal["fields"]["39"] == "98"
            (late_out,) = [e for e in seen if e["mti"] == "0210"]
            assert "delay_response" in late_out["faults"]

            booked = posting(await ledger(switch), outcome.stan)
            assert booked["approved"] and booked["reversed"]
            report = await status(store_path)
            assert report["pending_reversals"] == []
            (entry,) = report["open_batch_entries"]
            assert (entry["stan"], entry["state"], entry["money_moved"]) == (outcome.stan, "reversed", False)


# ---------------------------------------------------------------------------------------------
# signon-timeout


async def test_signon_timeout_retries_with_backoff_and_sends_nothing_unsigned(tmp_path: Path) -> None:
    """The first two 0800 are dropped unprocessed. A purchase (which signs on first) sees two sign-on
    timeouts of 2 s with backoffs of 2 s and 4 s between the attempts, signs on at the third, and
    only then sends its 0200: the journal shows three 0800 in, one 0810 out, and the 0200 after it."""
    store = tmp_path / "terminal.sqlite"
    with trio.fail_after(TEST_LIMIT):
        async with running_switch(tmp_path, "signon-timeout") as switch, \
                httpx.AsyncClient(base_url=switch.admin_url, timeout=5.0) as admin:
            bought = await terminal(switch, store, "purchase", "--minor", "4200")
            assert (bought.exit_code, bought.outcome["kind"]) == (0, "approved"), bought
            assert bought.seconds >= 2 * TIMEOUT + 2.0 + 4.0  # two timeouts and the backoffs after them
            assert "attempt 1 of 3" in bought.stderr and "attempt 2 of 3" in bought.stderr
            seen = await journal(admin)
            assert traffic(seen) == [("in", "0800", ""), ("in", "0800", ""), ("in", "0800", ""),
                                     ("out", "0810", "00"), ("in", "0200", ""), ("out", "0210", "00")]
            assert [e["faults"] for e in seen if e["direction"] == "in"][:3] == [["drop_request"], ["drop_request"],
                                                                               []]
            (booked,) = (await ledger(switch))["postings"]
            assert (booked["stan"], booked["approved"]) == (bought.outcome["stan"], True)


async def test_signon_refused_gives_up_after_bounded_attempts_without_a_sale(tmp_path: Path) -> None:
    """The scenario's "switch-inoperative" variant, switched on through the admin API (and the
    blackout off): every sign-on is answered 91. A purchase tries three sign-ons, 2 s and 4 s apart,
    then fails (exit 3) having sent no 0200 and stored nothing. Once the switch is back, the next
    purchase signs on once and is approved."""
    store = tmp_path / "terminal.sqlite"
    with trio.fail_after(TEST_LIMIT):
        async with running_switch(tmp_path, "signon-timeout") as switch, \
                httpx.AsyncClient(base_url=switch.admin_url, timeout=5.0) as admin:
            for rule, enabled in (("signon-blackout", False), ("switch-inoperative", True)):
                response = await admin.patch(f"/api/v1/faults/{rule}", json={"enabled": enabled})
                assert response.status_code == 200, response.text
            refused = await terminal(switch, store, "purchase", "--minor", "4200")
            assert (refused.exit_code, refused.outcome["kind"]) == (3, "failed"), refused
            assert "sign-on failed 3 times" in refused.outcome["text"]
            assert refused.seconds >= 2.0 + 4.0  # the backoffs between the attempts
            assert "answered 91" in refused.stderr and "attempt 3 of 3" in refused.stderr
            assert "no reply within" not in refused.stderr  # answered at once: no timeouts
            assert traffic(await journal(admin)) == [("in", "0800", ""), ("out", "0810", "91")] * 3
            assert (await ledger(switch))["postings"] == []
            assert (await status(store))["summary"]["open_batch_entries"] == 0

            response = await admin.patch("/api/v1/faults/switch-inoperative", json={"enabled": False})
            assert response.status_code == 200, response.text
            bought = await terminal(switch, store, "purchase", "--minor", "4200")
            assert (bought.exit_code, bought.outcome["kind"]) == (0, "approved"), bought
            assert traffic(await journal(admin))[6:] == [("in", "0800", ""), ("out", "0810", "00"),
                                                         ("in", "0200", ""), ("out", "0210", "00")]


# ---------------------------------------------------------------------------------------------
# order-expired


async def test_order_expired_declines_and_resigns_on_with_a_new_stan(tmp_path: Path) -> None:
    """A copy of order-expired.toml with shorter times (stale window 10 s → 2 s, the 4600...0022 card
    held 12 s → 3 s, sessions 2 min → 5 s); the same events, in seconds. Card ...0054 is declined 54
    and card ...0022 declined 22 (its field 7 is stale once it reaches the host): clear answers, so
    no reversal is kept, and the host booked both as declines. Then an in-process terminal signs
    on, waits out its session and buys: the host answers A0 (sign on again) and books nothing; the
    terminal signs on again and sends a NEW purchase with a new STAN, which is approved — the host
    never sees the refused STAN twice, so nothing is a duplicate (94)."""
    scenario = scenario_copy(tmp_path, "order-expired", {
        'stale_window = "10s"': 'stale_window = "2s"',
        'delay_request = "12s"': 'delay_request = "3s"',
        'session_timeout = "2m"': 'session_timeout = "5s"',
    })
    store = tmp_path / "terminal.sqlite"
    notes: list[Note] = []
    with trio.fail_after(TEST_LIMIT):
        async with running_switch(tmp_path, scenario) as switch, \
                httpx.AsyncClient(base_url=switch.admin_url, timeout=5.0) as admin:
            expired = await terminal(switch, store, "purchase", "--minor", "5400", "--pan", "4700000000000054")
            assert (expired.exit_code, expired.outcome["kind"], expired.outcome["response_code"]) == (1, "declined",
                                                                                                     "54"), expired
            stale = await terminal(switch, store, "purchase", "--minor", "2200", "--pan", "4600000000000022",
                                   timeout=10.0)
            assert (stale.exit_code, stale.outcome["kind"], stale.outcome["response_code"]) == (1, "declined",
                                                                                               "22"), stale
            assert stale.seconds >= 3.0  # held at the host until its field 7 was stale
            report = await status(store)
            assert report["pending_reversals"] == []
            # 54 and 22, each declined once. On a loaded machine the 5 s session can run out while card
            # ...0022 is held: then that purchase is answered A0 first, the terminal signs on again and
            # sends a new STAN (answered 22) — the scenario's third failure, handled as it must be.
            declined = sorted(e["response_code"] for e in report["open_batch_entries"] if e["state"] == "declined")
            assert declined in (["22", "54"], ["22", "54", "A0"]), report
            assert report["summary"]["open_batch_states"] == {"declined": len(declined)}, report
            book = await ledger(switch)
            for result, code in ((expired, "54"), (stale, "22")):
                booked = posting(book, result.outcome["stan"])
                assert (booked["response_code"], booked["approved"]) == (code, False)

            async with in_process_terminal(switch, store, notes) as client:
                assert (await client.run_command(SignOn())).kind == "approved"
                await trio.sleep(5.5)  # the session expires
                bought = await client.run_command(Purchase(1500, PAN, EXPIRY))
                assert bought.kind == "approved", bought
                assert kinds(notes).count("signed-on") == 2 and "signon-demanded" in kinds(notes)
                refused, approved = client.policy.store.entries()[-2:]
                assert (refused.state, refused.response_code) == ("declined", "A0")
                assert approved.stan == bought.stan and int(approved.stan) > int(refused.stan)

            seen = await journal(admin)
            codes = {(e["mti"], e["stan"]): e["response_code"] for e in seen if e["direction"] == "out"}
            assert codes[("0210", refused.stan)] == "A0" and codes[("0210", approved.stan)] == "00"
            assert "94" not in codes.values()
            book = await ledger(switch)
            assert [p for p in book["postings"] if p["stan"] == refused.stan] == []  # refused at the gate
            assert posting(book, approved.stan)["captured"]
