"""``iso-terminal session``: the command language (pure) and whole sessions against an in-process
switch over memory streams on a virtual clock (``autojump_clock``), so idle timeouts and waits are
instant and exact. The subprocess run through the real CLI is in ``test_session_e2e.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from switch.codec.dialect import load_dialect
from switch.codec.framing import Framing
from switch.codec.message import Codec
from switch.commit import GroupCommitter
from switch.faults import FaultEngine
from switch.host import Host, HostConfig
from switch.ledger import Ledger
from switch.scenario import default_scenario
from switch.server import ServerConfig, SwitchServer
from terminal.cli.session_command import EXIT_EXPECT_FAILED, Printer, ScriptLines, run_session
from terminal.cli.terminal_command import EXIT_TERMINAL_USAGE, TerminalSettings
from terminal.client import TrioClock
from terminal.policy import Echo, Outcome, Purchase, Refund, Settle, SignOn
from terminal.profile import TerminalProfile
from terminal.session import (
    MAX_WAIT,
    Expect,
    Help,
    Quit,
    Run,
    SessionError,
    Status,
    Wait,
    check_expectation,
    help_lines,
    parse_line,
)
from terminal.store import TerminalStore

ISO = load_dialect("iso87-binary")
TID, MID = "TERM0001", "MERCHANT0000001"
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC).timestamp()
TODAY = date(2026, 3, 2)

# ---------------------------------------------------------------------------------------------
# the language


def test_simple_commands_and_comments() -> None:
    assert parse_line("signon") == Run(SignOn())
    assert parse_line("  ECHO  # is the host there?") == Run(Echo())
    assert parse_line("settle") == Run(Settle())
    assert parse_line("") is None and parse_line("   # only a comment") is None
    assert parse_line("status") == Status() and parse_line("quit") == Quit() and parse_line("exit") == Quit()
    assert parse_line("help purchase") == Help("purchase")


def test_purchase_amounts_and_card_options() -> None:
    assert parse_line("purchase 12.34", today=TODAY) == Run(Purchase(1234, "4761739001010010", "2912"))
    assert parse_line("purchase --amount=7 --pan 4000000000000051 --expiry 3001", today=TODAY) == Run(
        Purchase(700, "4000000000000051", "3001"))
    assert parse_line("refund --minor 250", today=TODAY) == Run(Refund(250, "4761739001010010", "2912"))
    assert parse_line("purchase 5 --pin 1234", exponent=0, today=TODAY) == Run(
        Purchase(5, "4761739001010010", "2912", pin="1234"))


@pytest.mark.parametrize(("line", "reason"), [
    ("purchse 1", "unknown command 'purchse'"),
    ("purchase", "give the amount once"),
    ("purchase 1 --amount 2", "give the amount once"),
    ("purchase 1.234", "at most 2 decimal places"),
    ("purchase -1", "cannot be negative"),
    ("purchase --minor -5", "expected whole minor units"),
    ("purchase --minor --pan 1", "--minor needs a value"),
    ("purchase --minor 1x", "expected whole minor units"),
    ("purchase 1 --pan", "--pan needs a value"),
    ("purchase 1 --pan 1 --pan 2", "given twice"),
    ("purchase 1 --colour red", "no option --colour"),
    ("balance 5", "balance takes no amount"),
    ("signon now", "signon takes no arguments"),
    ("wait", "wait takes one number"),
    ("wait soon", "expected a number of seconds"),
    ("wait -1", "expected 0 to"),
    ("wait nan", "expected 0 to"),
    (f"wait {MAX_WAIT * 2}", "expected 0 to"),
    ("expect", "expect what?"),
    ("expect 000", "not a 2-character response code"),
    ("purchase 'unclosed", "cannot split the line"),
    ("help nothing", None),
])
def test_bad_lines_say_why(line: str, reason: str | None) -> None:
    if reason is None:  # help of an unknown command is judged when it runs
        assert parse_line(line) == Help("nothing")
        with pytest.raises(SessionError, match="no such command"):
            help_lines("nothing")
        return
    with pytest.raises(SessionError, match=reason):
        parse_line(line)


def test_wait_and_expect() -> None:
    assert parse_line("wait 2.5") == Wait(2.5)
    assert parse_line("expect 00 approved a0") == Expect(("00", "approved", "A0"))


def test_expectations_judge_the_last_outcome() -> None:
    approved = Outcome("approved", "purchase", "approved, RRN 1", response_code="00")
    declined = Outcome("declined", "purchase", "declined 51 (insufficient funds)", response_code="51")
    failed = Outcome("failed", "purchase", "not done: cannot connect")
    assert check_expectation(Expect(("00",)), approved) is None
    assert check_expectation(Expect(("approved",)), approved) is None
    assert check_expectation(Expect(("05", "51")), declined) is None
    reason = check_expectation(Expect(("00",)), declined)
    assert reason is not None and "purchase declined (answered 51)" in reason
    assert "no response code" in (check_expectation(Expect(("00",)), failed) or "")
    assert "no command has run yet" in (check_expectation(Expect(("00",)), None) or "")


def test_help_lists_every_command() -> None:
    text = "\n".join(help_lines())
    for name in ("signon", "purchase", "wait", "expect", "status", "quit"):
        assert name in text
    assert help_lines("purchase")[1].startswith("  options: --amount --minor")


# ---------------------------------------------------------------------------------------------
# whole sessions, in process


@dataclass
class Rig:
    server: SwitchServer
    clock: TrioClock
    nursery: trio.Nursery
    connections: int = 0
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)

    async def connect(self) -> trio.abc.Stream:
        client_side, server_side = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self.server.handle_stream, server_side)
        self.connections += 1
        return client_side

    async def session(self, script: str, store_path: str = ":memory:", **profile: Any) -> int:
        settings = TerminalSettings("127.0.0.1", 8583, ISO, Framing.from_dialect(ISO), None,
                                    TerminalProfile.for_dialect(ISO, TID, MID, **profile), store_path, False, False)
        with TerminalStore.open(store_path, TID) as store:
            return await run_session(settings, store, ScriptLines(script.splitlines()),
                                     Printer(self.out.append, self.err.append), connect=self.connect,
                                     clock=self.clock)


@asynccontextmanager
async def switch(*, idle_timeout: float | None = 300.0, auth_seed: int | None = None, **host: Any
                 ) -> AsyncIterator[Rig]:
    clock = TrioClock.starting_at(T0)
    ledger = Ledger.open(":memory:")
    server = SwitchServer(
        codec=Codec(ISO), framing=Framing.from_dialect(ISO),
        host=Host(HostConfig.for_dialect(ISO, **host), ledger, default_scenario().response_rules,
                  auth_seed=auth_seed),
        ledger=ledger, committer=GroupCommitter(ledger),
        config=ServerConfig(port=0, idle_timeout=idle_timeout, grace_period=2.0),
        clock=lambda: datetime.fromtimestamp(clock.now(), UTC), faults=FaultEngine(seed=1),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.committer.run)
        yield Rig(server, clock, nursery)
        nursery.cancel_scope.cancel()


async def test_one_connection_and_one_signon_across_commands(autojump_clock: Any, inline_threads: None) -> None:
    async with switch() as rig:
        status = await rig.session("signon\nexpect 00\npurchase 12.34\nexpect approved\npurchase 1\nsettle\n"
                                   "expect 00\nstatus\n")
    assert status == 0, rig.err
    assert rig.connections == 1
    lines = [line for line in rig.out if not line.startswith("  ")]
    assert lines[0] == "signon: signed on"
    assert lines[1].startswith("purchase 12.34 STAN ") and "approved" in lines[1]
    assert lines[2].startswith("purchase 1.00 STAN ") and "approved" in lines[2]
    assert lines[3].startswith("settle: settled, balanced")
    assert sum("signed-on:" in line for line in rig.out) == 1  # one sign-on for the whole session
    assert any(line.startswith("session: connected to 127.0.0.1:8583; signed on") for line in rig.out)
    assert rig.server.stats.connections_total == 1


async def test_an_idle_close_by_the_host_shows_at_the_next_command(autojump_clock: Any,
                                                                  inline_threads: None) -> None:
    async with switch(idle_timeout=60.0) as rig:
        start = trio.current_time()
        status = await rig.session("signon\nwait 61\npurchase 5\nexpect 00\n")
        assert trio.current_time() - start >= 61
    assert status == 0, rig.err
    text = "\n".join(rig.out)
    assert "connection-lost: " in text and "closed by the host" in text
    assert rig.connections == 2  # the purchase reconnected by itself
    assert rig.out[-1].startswith("purchase 5.00 STAN ") and "approved" in rig.out[-1]


async def test_a_host_that_drops_the_session_shows_at_the_next_command(autojump_clock: Any,
                                                                      inline_threads: None) -> None:
    """The host forgets every sign-on (what admin `reset sessions` does): the next purchase is
    answered "sign on first", and the session shows it and signs on again by itself."""
    async with switch() as rig:
        host = rig.server.host
        lines = iter(["signon", "purchase 1", "wait 1", "purchase 2", "expect 00"])

        class Dropping(ScriptLines):
            async def next_line(self) -> str | None:
                await trio.lowlevel.checkpoint()
                line = next(lines, None)
                if line == "wait 1":
                    host.reset_sessions()
                return line

        settings = TerminalSettings("127.0.0.1", 8583, ISO, Framing.from_dialect(ISO), None,
                                    TerminalProfile.for_dialect(ISO, TID, MID), ":memory:", False, False)
        with TerminalStore.open(":memory:", TID) as store:
            status = await run_session(settings, store, Dropping([]), Printer(rig.out.append, rig.err.append),
                                       connect=rig.connect, clock=rig.clock)
    assert status == 0, rig.err
    after_drop = rig.out[rig.out.index(next(line for line in rig.out if line.startswith("purchase 1.00"))) + 1:]
    assert any("signon-demanded" in line for line in after_drop), rig.out
    assert any("signed-on" in line for line in after_drop)
    assert after_drop[-1].startswith("purchase 2.00 STAN ") and "approved" in after_drop[-1]


async def test_a_failed_expect_stops_the_script_naming_its_line(autojump_clock: Any, inline_threads: None) -> None:
    async with switch() as rig:
        status = await rig.session("signon\n# a declined card\npurchase 3 --pan 4000000000000051\nexpect 00\n"
                                   "purchase 4\n")
    assert status == EXIT_EXPECT_FAILED
    assert rig.err == ["error: line 4: expect 00: the last outcome was purchase declined (answered 51): "
                       "declined 51 (insufficient funds)"]
    assert not any(line.startswith("purchase 4") for line in rig.out)  # nothing after the failure ran


async def test_a_bad_line_stops_the_script_before_it_runs(autojump_clock: Any, inline_threads: None) -> None:
    async with switch() as rig:
        status = await rig.session("signon\n\npurchase 1.234\npurchase 1\n")
    assert status == EXIT_TERMINAL_USAGE
    assert rig.err == ["error: line 3: purchase: '1.234': this currency has at most 2 decimal places"]
    assert rig.out[-1] == "signon: signed on"


async def test_the_first_auth_code_depends_on_the_seed(autojump_clock: Any, inline_threads: None) -> None:
    """Two fresh switches with other seeds give the first approval other auth codes; one seed replays."""
    codes = []
    for seed in (11, 12, 11):
        async with switch(auth_seed=seed) as rig:
            assert await rig.session("purchase 1\nexpect 00\n") == 0, rig.err
        codes.append(rig.out[-1].rsplit("auth code ", 1)[1])
    assert codes[0] != codes[1] and codes[0] == codes[2]


async def test_discrepancies_name_amounts_in_major_units(autojump_clock: Any, inline_threads: None,
                                                         tmp_path: Path) -> None:
    """A terminal settles with a host that never saw its sale (another switch, same store): 95, the
    upload, and the host records the difference — in major units, as people read amounts."""
    store = str(tmp_path / "terminal.sqlite")
    async with switch() as first:
        assert await first.session("purchase 12.34\nexpect 00\n", store) == 0, first.err
    async with switch() as second:
        assert await second.session("settle\nexpect unbalanced\n", store) == 0, second.err
        details = [d.detail for d in second.server.ledger.discrepancies()]
    assert details == ["uploaded debit of 12.34 the host never saw"]
    assert second.out[-1].startswith("settle: settlement unbalanced: uploaded")


def test_major_units_follow_the_currency() -> None:
    from switch.host.settlement import currency_exponent, major

    assert [currency_exponent(code) for code in ("840", "392", "048", "", " 156")] == [2, 0, 3, 2, 2]
    assert (major(1234), major(5, 0), major(-1234, 3), major(7, 2)) == ("12.34", "5", "-1.234", "0.07")
