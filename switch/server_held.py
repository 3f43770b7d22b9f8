"""Carrying out a ``hold`` fault: park the request, wait for its release, then answer (or not).

One sleeping task per held request, in its connection's nursery: it wakes on a release command
(admin API, the hold's timeout, shutdown) or is cancelled when the connection ends, in which case
the request is dropped, as a real host drops a request whose connection closed. Held requests are
not counted in the connection's ``in_flight``: the reader keeps reading, and a peer that hangs up
is not kept open by them.

Durability: an ``approve`` goes through the ordinary host decision and waits for the group commit
of its posting before one byte of the reply is written, exactly as every other approval.
"""

from __future__ import annotations

import logging

import trio

from switch.codec import Message, MessageDecodeError
from switch.commit import CommitError
from switch.faults import FaultDecision, HoldOutcome
from switch.held import HeldRequest, Release, ReleaseResult, ReleaseStatus
from switch.server_core import RateLimitedLog, _Applied, _CloseConnection, _Connection, _ServerCore

log = logging.getLogger("switch.server")


class _HeldServer(_ServerCore):
    """Adds the ``hold`` action to the server core (``_FaultedServer`` calls ``_hold``)."""

    _hold_refusals: RateLimitedLog | None = None

    async def _hold(self, conn: _Connection, request: Message | None, error: MessageDecodeError | None,
                    plan: FaultDecision, applied: _Applied, tpdu: bytes | None, request_seq: int | None,
                    arrived: float, raw: bytes) -> None:
        """Park the request (counted in ``in_flight`` on entry; this method settles the count)."""
        assert plan.hold is not None
        entry = None
        if request is not None:
            entry = self.held.park(owner=self, connection=conn.number, peer=conn.peer, request=request, raw=raw,
                                   rules=plan.rules, hold=plan.hold, held_since=self.clock(), request_seq=request_seq)
        if entry is None:  # over the cap, or a frame that did not decode: answer it as usual, and say so
            why = ("a frame that does not decode is not held" if request is None else
                   f"{self.held.limit} requests are held already (the cap)")
            if request is not None:
                if self._hold_refusals is None:
                    self._hold_refusals = RateLimitedLog()
                self._hold_refusals.event(f"{conn.peer}: hold refused: {why}; answered as usual",
                                          "holds still refused at the cap: {count} in the last {every:g}s")
            result = ReleaseResult("-", HoldOutcome.APPROVE, "cap")
            try:
                await self._answer(conn, request, error, result, tpdu, request_seq, arrived, raw, applied,
                                   f"hold refused: {why}; answered as usual")
            finally:
                conn.post(None)
            return
        conn.held.add(entry)
        conn.post(None)  # not in flight any more: the reader may read on, the writer may finish
        log.info("%s: %s STAN %s held as %s (rules %s)", conn.peer, request.mti if request else "?",
                 entry.request.fields.get(11), entry.id, ", ".join(plan.rules))
        result = ReleaseResult(entry.id, HoldOutcome.DROP, "connection")
        try:
            with entry.scope:
                await entry.wakeup.wait()
            conn.held.discard(entry)
            if entry.command is None and not entry.gone:  # the hold's own timeout
                self.held.command(entry, Release(entry.hold.then, entry.hold.code, by="timeout"))
            command = entry.command
            if command is None:
                return
            result = ReleaseResult(entry.id, command.outcome, command.by)
            if entry.gone or conn.closed:
                return  # CONNECTION_GONE: the connection ended before the release could be carried out
            conn.in_flight += 1  # a reply is on its way: the writer must not end the connection under it
            try:
                await self._release(conn, entry, command, result, tpdu, arrived, applied)
            finally:
                conn.post(None)
        finally:
            conn.held.discard(entry)
            if result.status is ReleaseStatus.CONNECTION_GONE:
                age = trio.current_time() - entry.held_at
                self._journal_unsent(entry, applied, f"held {age:.1f}s as {entry.id}; the connection closed: dropped "
                                                     f"(rules {', '.join(entry.rules)})")
            self.held.finished(entry, result)

    async def _release(self, conn: _Connection, entry: HeldRequest, command: Release, result: ReleaseResult,
                       tpdu: bytes | None, arrived: float, applied: _Applied) -> None:
        age = trio.current_time() - entry.held_at
        note = (f"held {age:.1f}s as {entry.id}, released as {command.outcome.value} by {command.by} "
                f"(rules {', '.join(entry.rules)})")
        log.info("%s: %s", conn.peer, note)
        if command.outcome is HoldOutcome.DROP:
            result.status = ReleaseStatus.DROPPED
            self._unanswered(entry.request, None, entry.request_seq, applied, note)
            return
        reply = None
        if command.outcome is HoldOutcome.DECLINE:
            reply = self.host.unprocessed_reply(entry.request, command.code)
            note += f": {command.code}, nothing posted"
        await self._answer(conn, entry.request, None, result, tpdu, entry.request_seq, arrived, entry.raw, applied,
                           note, reply=reply)

    async def _answer(self, conn: _Connection, request: Message | None, error: MessageDecodeError | None,
                      result: ReleaseResult, tpdu: bytes | None, request_seq: int | None, arrived: float, raw: bytes,
                      applied: _Applied, note: str, *, reply: Message | None = None) -> None:
        """Decide (unless ``reply`` is given), wait for the commit, send; ``result`` says how far it got."""
        commit_seq = None
        try:
            if reply is None:
                reply, commit_seq = await self._decide_any(request, error, conn.peer, raw)
            result.posted = bool(commit_seq)
            if reply is None:
                result.status = ReleaseStatus.NO_REPLY
                self._unanswered(request, error, request_seq, applied, f"{note}; the host gave no answer")
                return
            result.response_code = reply.fields.get(39)
            result.rrn, result.auth_code = reply.fields.get(37), reply.fields.get(38)
            if commit_seq:
                await self.committer.wait_committed(commit_seq)  # the posting is durable before the reply leaves
                result.committed = True
            outgoing = self._outgoing(reply, commit_seq, request, error, tpdu, request_seq, arrived)
            if outgoing is None:
                result.status = ReleaseStatus.NO_REPLY
                return
            conn.sending += 1
            try:
                await conn.frames.send_raw(outgoing.framed)
            finally:
                conn.sending -= 1
            conn.last_activity = trio.current_time()
            result.status = ReleaseStatus.SENT
            result.note = note
            self.stats.responses_out += 1
            self._sent(conn, [outgoing], applied, note=note)
        except _CloseConnection as exc:
            result.status, result.note = ReleaseStatus.NO_REPLY, f"no reply encodes: {exc}"
            log.warning("%s: closing connection: %s", conn.peer, exc)
            conn.reader_scope.cancel()
        except CommitError as exc:
            result.status, result.note = ReleaseStatus.NO_REPLY, f"ledger not durable, reply withheld: {exc}"
            log.error("%s: ledger not durable, reply withheld: %s", conn.peer, exc)
            conn.reader_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            result.status, result.note = ReleaseStatus.CONNECTION_GONE, "the connection closed before the reply left"
            conn.reader_scope.cancel()

    def _journal_unsent(self, entry: HeldRequest, applied: _Applied, note: str) -> None:
        self._unanswered(entry.request, None, entry.request_seq, applied, note)

    def _held_connection_closed(self, conn: _Connection) -> None:
        """The writer ended: nothing more can be sent, so every request held here is dropped."""
        conn.closed = True
        for entry in list(conn.held):
            entry.gone = True
            entry.scope.cancel()
