"""The terminal from Python: ``open_terminal`` and typed outcomes, for tests that drive a host without the CLI.

::

    from terminal import OutcomeKind, open_terminal

    async with open_terminal("127.0.0.1", 8583, dialect="iso87-binary", store=tmp_path / "t.sqlite") as t:
        sale = await t.purchase(amount=1234)                 # minor units: 12.34
        assert sale.kind is OutcomeKind.APPROVED, sale.text
        void = await t.reverse_last()

It is the CLI's terminal, the same rules and the same store: ``TerminalPolicy`` (every decision)
driven by ``TerminalClient`` (the bytes), built by ``build_client`` — the construction the CLI's
commands run — over one connection kept across calls. Entering signs on (``sign_on=False`` to
leave it to the first transaction, as the policy would anyway); a failed sign-on raises
``SignOnFailed`` with the outcome. Each call returns a ``TerminalOutcome``: what the CLI prints in
one line, as values (kind, response code, RRN, auth code, STAN, amount).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Any

from switch.codec import Codec, Dialect
from switch.codec.dialect import load_dialect
from switch.codec.framing import Framing
from terminal.client import ConnectFactory, TerminalClient, TrioClock, tcp_connector
from terminal.defaults import DEFAULT_MERCHANT_ID, DEFAULT_TERMINAL_ID, TEST_PAN, default_expiry
from terminal.policy import (
    BalanceInquiry,
    Command,
    Drain,
    Echo,
    Note,
    Outcome,
    PreAuthorization,
    Purchase,
    Refund,
    ReverseLast,
    Settle,
    SignOff,
    SignOn,
    TerminalPolicy,
)
from terminal.profile import TerminalProfile
from terminal.store import TerminalStore

__all__ = [
    "TEST_PAN",
    "HostAddress",
    "OutcomeKind",
    "SignOnFailed",
    "Terminal",
    "TerminalOutcome",
    "build_client",
    "open_store",
    "open_terminal",
]


class OutcomeKind(StrEnum):
    """How an operation ended (``terminal.policy.OUTCOME_KINDS``, the CLI's exit status in brackets).

    A sale whose answer never came (timed out, connection lost) ends REVERSED when its reversal was
    acknowledged — nothing moved — or UNKNOWN_QUEUED when the reversal is stored and still owed.
    """

    APPROVED = "approved"  # [0] a sale's RRN and auth code set; also a sign-on, echo or settlement that got 00
    COMPLETED = "completed"  # [0] a drain with nothing left owed
    DECLINED = "declined"  # [1] response_code and meaning set
    REFUSED = "refused"  # [1] checked locally, nothing sent (bad card, amount 0, nothing to void)
    REVERSED = "reversed"  # [2] the exchange failed and its reversal was acknowledged
    UNKNOWN_QUEUED = "unknown-queued"  # [2] not known yet; a reversal/advice/settlement goes out next
    UNKNOWN = "unknown"  # [2] the host refused the reversal: whether money moved cannot be known
    UNBALANCED = "unbalanced"  # [4] settled after an upload: the totals differed
    FAILED = "failed"  # [3] not done: no connection, no sign-on, an older item blocks


@dataclass(frozen=True)
class TerminalOutcome:
    """One operation's result as values; ``text`` is the line the CLI prints, ``outcome`` the policy's own."""

    kind: OutcomeKind
    operation: str
    text: str
    response_code: str
    meaning: str
    stan: str
    rrn: str
    auth_code: str
    amount: int | None
    batch: str
    outcome: Outcome

    @classmethod
    def of(cls, outcome: Outcome) -> TerminalOutcome:
        return cls(OutcomeKind(outcome.kind), outcome.operation, outcome.text, outcome.response_code,
                   outcome.meaning, outcome.stan, outcome.rrn, outcome.auth_code, outcome.amount, outcome.batch,
                   outcome)

    @property
    def approved(self) -> bool:
        return self.kind is OutcomeKind.APPROVED

    @property
    def money_may_have_moved(self) -> bool:
        """What exit status 2 means: the host may have moved money and the terminal does not know yet."""
        return self.kind in (OutcomeKind.UNKNOWN_QUEUED, OutcomeKind.UNKNOWN)


class SignOnFailed(RuntimeError):
    """``open_terminal`` could not sign on; ``outcome`` says why (declined code, no connection, ...)."""

    def __init__(self, outcome: TerminalOutcome):
        self.outcome = outcome
        super().__init__(f"sign-on failed: {outcome.text}")


@dataclass(frozen=True)
class HostAddress:
    """Where the terminal connects and how it frames: what the CLI's shared options decide."""

    host: str
    port: int
    dialect: Dialect
    framing: Framing
    tpdu: bytes | None = None  # None: the default TPDU when the framing carries one
    ssl_context: ssl.SSLContext | None = None


def open_store(path: str | os.PathLike[str], terminal_id: str) -> TerminalStore:
    """The terminal's durable store at ``path`` (":memory:" for none), creating its directory."""
    if str(path) != ":memory:":
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return TerminalStore.open(Path(path).expanduser() if str(path) != ":memory:" else ":memory:", terminal_id)


def build_client(address: HostAddress, profile: TerminalProfile, store: TerminalStore, *,
                 clock: TrioClock | None = None, confirmation: Callable[[], Awaitable[None]] | None = None,
                 on_note: Callable[[Note], None] | None = None, connect: ConnectFactory | None = None
                 ) -> TerminalClient:
    """A ``TerminalClient`` driving a fresh ``TerminalPolicy`` over ``store``, connecting to ``address``.

    A fresh policy is never signed on (sessions do not survive restarts) and recovers whatever a
    previous run left in flight in the store. ``clock`` defaults to the wall clock; ``connect``
    replaces the TCP connection to ``address`` (a memory stream in a test, a proxy).
    """
    clock = clock or TrioClock.wall()
    policy = TerminalPolicy(profile, store, clock.now())
    if connect is None:
        connect = tcp_connector(address.host, address.port, ssl_context=address.ssl_context)
    return TerminalClient(policy, Codec(address.dialect), address.framing, connect, clock, tpdu=address.tpdu,
                          confirmation=confirmation, on_note=on_note)


class Terminal:
    """A terminal with an open client: one method per operation, each returning a ``TerminalOutcome``.

    Amounts are minor units (1234 = 12.34 with two decimals). Cards default to the CLI's test card
    (approved by the switch) expiring December three years ahead.
    """

    def __init__(self, client: TerminalClient, store: TerminalStore, profile: TerminalProfile):
        self.client = client
        self.store = store
        self.profile = profile

    @property
    def signed_on(self) -> bool:
        return self.client.policy.signed_on

    async def run(self, command: Command) -> TerminalOutcome:
        """Run any ``terminal.policy`` command (what is owed to the host goes out first)."""
        return TerminalOutcome.of(await self.client.run_command(command))

    async def sign_on(self) -> TerminalOutcome:
        return await self.run(SignOn())

    async def sign_off(self) -> TerminalOutcome:
        return await self.run(SignOff())

    async def echo(self) -> TerminalOutcome:
        return await self.run(Echo())

    async def purchase(self, amount: int, *, pan: str = TEST_PAN, expiry: str | None = None, pin: str | None = None,
                       confirm_timeout: float | None = None) -> TerminalOutcome:
        """A sale (0200); reversed by the terminal itself if its answer is lost."""
        return await self.run(Purchase(amount, pan, _expiry(expiry), pin=pin, confirm_timeout=confirm_timeout))

    async def refund(self, amount: int, *, pan: str = TEST_PAN, expiry: str | None = None,
                     pin: str | None = None) -> TerminalOutcome:
        return await self.run(Refund(amount, pan, _expiry(expiry), pin=pin))

    async def pre_authorize(self, amount: int, *, pan: str = TEST_PAN, expiry: str | None = None) -> TerminalOutcome:
        return await self.run(PreAuthorization(amount, pan, _expiry(expiry)))

    async def balance(self, *, pan: str = TEST_PAN, expiry: str | None = None) -> TerminalOutcome:
        return await self.run(BalanceInquiry(pan, _expiry(expiry)))

    async def reverse_last(self) -> TerminalOutcome:
        """Void the last approved transaction of the open batch (0400, reason 17): REVERSED when done."""
        return await self.run(ReverseLast())

    async def settle(self) -> TerminalOutcome:
        return await self.run(Settle())

    async def drain(self) -> TerminalOutcome:
        """Send only what is owed to the host (stored reversals, advices, a settlement)."""
        return await self.run(Drain())


def _expiry(expiry: str | None) -> str:
    return expiry if expiry is not None else default_expiry(date.today())


@asynccontextmanager
async def open_terminal(host: str = "127.0.0.1", port: int = 8583, *, dialect: Dialect | str = "iso87-binary",
                        framing: Framing | None = None, tpdu: bytes | None = None,
                        store: str | os.PathLike[str] | TerminalStore = ":memory:",
                        terminal_id: str = DEFAULT_TERMINAL_ID, merchant_id: str = DEFAULT_MERCHANT_ID,
                        profile: TerminalProfile | None = None, ssl_context: ssl.SSLContext | None = None,
                        sign_on: bool = True, clock: TrioClock | None = None,
                        on_note: Callable[[Note], None] | None = None, connect: ConnectFactory | None = None,
                        **settings: Any) -> AsyncIterator[Terminal]:
    """A terminal connected to ``host:port``, signed on, closed (connection and store) on exit.

    ``dialect``: a name, a dialect file path or a loaded ``Dialect``; ``framing`` defaults to the
    dialect's. ``store``: a path (the directory is created), ":memory:", or an open ``TerminalStore``
    (yours to close). ``profile``: a whole ``TerminalProfile`` (e.g. ``from_security_profile`` of a
    profile-file entry, for keys and MACs); otherwise one is made for the dialect's family from
    ``terminal_id``, ``merchant_id`` and ``settings`` (``response_timeout=5.0``, ``connect_attempts=1``,
    ``currency="978"``: any ``TerminalProfile`` field). ``clock``, ``on_note`` and ``connect`` go to
    ``build_client`` (a virtual clock and memory streams make a test's timeouts instant).
    """
    loaded = load_dialect(dialect) if isinstance(dialect, str) else dialect
    if profile is not None and (settings or terminal_id != DEFAULT_TERMINAL_ID or merchant_id != DEFAULT_MERCHANT_ID):
        raise ValueError("give either profile= or terminal_id/merchant_id/settings, not both")
    if profile is None:
        profile = TerminalProfile.for_dialect(loaded, terminal_id, merchant_id, **settings)
    address = HostAddress(host, port, loaded, framing or Framing.from_dialect(loaded), tpdu, ssl_context)
    owned = not isinstance(store, TerminalStore)
    opened = open_store(store, profile.terminal_id) if not isinstance(store, TerminalStore) else store
    failed: TerminalOutcome | None = None
    body_error: BaseException | None = None
    try:
        async with build_client(address, profile, opened, clock=clock, on_note=on_note, connect=connect) as client:
            terminal = Terminal(client, opened, profile)
            if sign_on:
                outcome = await terminal.sign_on()
                failed = None if outcome.kind is OutcomeKind.APPROVED else outcome
            if failed is None:
                try:
                    yield terminal
                except BaseException as exc:
                    body_error = exc
                    raise
    except BaseExceptionGroup as group:
        # the client's nursery wraps what the caller's block raised: hand it back as it was raised,
        # so `pytest.raises(AssertionError)` around the block sees an AssertionError
        if body_error is not None and _sole_leaf(group) is body_error:
            raise body_error from None
        raise
    finally:
        if owned:
            opened.close()
    if failed is not None:
        raise SignOnFailed(failed)


def _sole_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception a group (of groups) holds, or None when it holds several."""
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        if len(leaf.exceptions) != 1:
            return None
        leaf = leaf.exceptions[0]
    return leaf
