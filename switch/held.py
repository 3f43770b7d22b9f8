"""Held requests: what a ``hold`` fault parks unanswered, until the admin API (or a timeout) releases it.

"Pending, then resolved": a real host sometimes sits on a request and answers much later, or never.
A ``hold`` rule reproduces that at a moment the tester chooses: the request is not given to the
host; it waits here with an id, and ``POST /api/v1/held/{id}/release`` releases it as

* ``approve``: the host decides as usual (it may still decline), the ledger commits, then the reply goes;
* ``decline``: ``Host.unprocessed_reply(request, code)``: the code is sent, nothing is posted;
* ``drop``: nothing is sent or posted.

The registry is shared by every listener of a switch and holds at most ``limit`` requests (beyond
it a ``hold`` does not hold: the request is answered as usual and the journal says why). Each held
request is served by its own sleeping task on its connection (``switch.server_held``); this module
only keeps the entries and hands release commands to those tasks, so it needs no clock but Trio's.

A request whose connection closes is dropped, as a real host drops it: its entry stays listed as
``connection-closed`` (the last ``ORPHANS_KEPT`` of them) so that a release says 409 and why,
instead of 404.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import trio

from switch.codec import Message
from switch.codec.composite import mask_pan
from switch.faults import DEFAULT_HOLD_CODE, Hold, HoldOutcome
from switch.metrics import SwitchMetrics

__all__ = ["MAX_HELD", "ORPHANS_KEPT", "HeldRequest", "HeldRequests", "HeldState", "Release", "ReleaseResult",
           "ReleaseStatus"]

MAX_HELD = 1000
"""Requests held at once per switch; a ``hold`` beyond it answers the request as usual."""
ORPHANS_KEPT = 100
"""Entries whose connection closed, kept (newest) so that releasing one says 409 rather than 404."""


class HeldState(StrEnum):
    HELD = "held"
    RELEASING = "releasing"  # a release command was given; the reply is being decided or sent
    CONNECTION_CLOSED = "connection-closed"  # dropped because its connection closed


class ReleaseStatus(StrEnum):
    SENT = "sent"  # a reply left
    DROPPED = "dropped"  # released as drop: nothing sent
    NO_REPLY = "no-reply"  # the host chose silence (or nothing could be encoded)
    CONNECTION_GONE = "connection-gone"  # the connection closed before a reply could leave


@dataclass(frozen=True)
class Release:
    """A release command: the outcome, the decline code, and who gave it (admin, timeout, shutdown)."""

    outcome: HoldOutcome
    code: str = DEFAULT_HOLD_CODE
    by: str = "admin"


@dataclass
class ReleaseResult:
    """What a release did: the code the host (or the decline) answered, whether a posting was made and
    committed, and whether the reply left."""

    id: str
    outcome: HoldOutcome
    by: str
    status: ReleaseStatus = ReleaseStatus.CONNECTION_GONE
    response_code: str | None = None
    rrn: str | None = None
    auth_code: str | None = None
    posted: bool = False  # the decision wrote a ledger row: a posting, or (multi-instance) a session change
    committed: bool = False
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "released": self.outcome.value, "by": self.by, "status": self.status.value,
                "sent": self.status is ReleaseStatus.SENT, "response_code": self.response_code, "rrn": self.rrn,
                "auth_code": self.auth_code, "posted": self.posted, "committed": self.committed, "note": self.note}


@dataclass(eq=False)
class HeldRequest:
    """One parked request: enough to answer it later on its connection, and to list it."""

    id: str
    owner: object  # the SwitchServer holding it (shutdown drops only its own)
    connection: int
    peer: str
    request: Message
    raw: bytes
    rules: tuple[str, ...]
    hold: Hold
    held_since: datetime  # the switch clock (wall time), for people
    held_at: float  # trio.current_time(), for ages and the timeout
    request_seq: int | None = None
    state: HeldState = HeldState.HELD
    command: Release | None = None
    result: ReleaseResult | None = None
    gone: bool = False  # the connection closed
    wakeup: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    @property
    def release_at(self) -> float:
        """Trio time of the automatic release (inf: none)."""
        return math.inf if self.hold.timeout is None else self.held_at + self.hold.timeout

    def as_dict(self, now: float) -> dict[str, Any]:
        fields = self.request.fields
        pan = fields.get(2)
        listed: dict[str, Any] = {
            "id": self.id,
            "state": self.state.value,
            "connection": self.connection,
            "peer": self.peer,
            "terminal": (fields.get(41) or "").rstrip() or None,
            "mti": self.request.mti,
            "stan": fields.get(11),
            "amount": fields.get(4),
            "pan": mask_pan(pan) if pan else None,
            "held_since": self.held_since.isoformat(),
            "age_seconds": round(now - self.held_at, 3),
            "rules": list(self.rules),
            "timeout": None,
        }
        if self.hold.timeout is not None:
            listed["timeout"] = {"seconds": self.hold.timeout, "then": self.hold.then.value}
            if self.state is HeldState.HELD:
                listed["timeout"]["release_in_seconds"] = round(max(0.0, self.release_at - now), 3)
            if self.hold.then is HoldOutcome.DECLINE:
                listed["timeout"]["code"] = self.hold.code
        return listed


class AlreadyReleasing(Exception):
    """A second release of a request whose first release is under way."""


class HeldRequests:
    """The held requests of one switch, by id (``h1``, ``h2``... in the order they were held)."""

    def __init__(self, limit: int = MAX_HELD, metrics: SwitchMetrics | None = None):
        self.limit = limit
        self.metrics = metrics
        self.refused = 0  # holds refused over the limit
        self._entries: dict[str, HeldRequest] = {}
        self._orphans: OrderedDict[str, HeldRequest] = OrderedDict()
        self._next = 1

    def __len__(self) -> int:
        """Requests held now (not counting those whose connection closed)."""
        return len(self._entries)

    @property
    def full(self) -> bool:
        return len(self._entries) >= self.limit

    def park(self, *, owner: object, connection: int, peer: str, request: Message, raw: bytes,
             rules: tuple[str, ...], hold: Hold, held_since: datetime, request_seq: int | None) -> HeldRequest | None:
        """A new entry, or None when ``limit`` requests are held already (the caller answers as usual)."""
        if self.full:
            self.refused += 1
            return None
        entry = HeldRequest(f"h{self._next}", owner, connection, peer, request, raw, rules, hold, held_since,
                            trio.current_time(), request_seq)
        entry.scope.deadline = entry.release_at
        self._next += 1
        self._entries[entry.id] = entry
        self._changed()
        return entry

    def entries(self) -> list[HeldRequest]:
        """Held requests oldest first, then those dropped with their connection."""
        return [*self._entries.values(), *self._orphans.values()]

    def get(self, held_id: str) -> HeldRequest:
        """The entry; ``KeyError`` if there is none (released, or never held)."""
        entry = self._entries.get(held_id) or self._orphans.get(held_id)
        if entry is None:
            raise KeyError(held_id)
        return entry

    async def release(self, held_id: str, command: Release) -> ReleaseResult:
        """Release a held request and wait until its task has carried the command out.

        ``KeyError``: no such id. ``AlreadyReleasing``: a release is under way. A request whose
        connection closed is forgotten and reported as ``CONNECTION_GONE`` (nothing posted or sent).
        """
        entry = self.get(held_id)
        if entry.state is HeldState.CONNECTION_CLOSED:
            self._orphans.pop(held_id, None)
            return ReleaseResult(held_id, command.outcome, command.by,
                                 note="the connection closed while the request was held; it was dropped then, as a "
                                      "real host drops a request whose connection closed: nothing posted or sent")
        if entry.command is not None:
            raise AlreadyReleasing(held_id)
        self.command(entry, command)
        await entry.done.wait()
        assert entry.result is not None
        return entry.result

    def command(self, entry: HeldRequest, command: Release) -> None:
        """Hand ``command`` to the entry's task (no-op if it has one already)."""
        if entry.command is None and entry.state is HeldState.HELD:
            entry.command = command
            entry.state = HeldState.RELEASING
            entry.wakeup.set()

    def drop_all(self, owner: object) -> int:
        """Shutdown: every request ``owner`` holds is released as drop; returns how many."""
        entries = [entry for entry in self._entries.values() if entry.owner is owner and entry.command is None]
        for entry in entries:
            self.command(entry, Release(HoldOutcome.DROP, by="shutdown"))
        return len(entries)

    def finished(self, entry: HeldRequest, result: ReleaseResult) -> None:
        """The entry's task is done with it: released, or dropped with its connection."""
        entry.result = result
        if self._entries.pop(entry.id, None) is not None:
            self._changed()
        if result.status is ReleaseStatus.CONNECTION_GONE and entry.command is None:
            entry.state = HeldState.CONNECTION_CLOSED
            self._orphans[entry.id] = entry
            while len(self._orphans) > ORPHANS_KEPT:
                self._orphans.popitem(last=False)
        entry.done.set()

    def _changed(self) -> None:
        if self.metrics is not None:
            self.metrics.held(len(self._entries))
