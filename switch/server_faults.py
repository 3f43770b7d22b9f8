"""Fault execution on the wire: one task per faulted request, in the order ``FaultDecision`` documents.

Split from ``switch.server`` (which runs the connection's reader and writer) because faults are
the one place where replies are late, sliced, duplicated, corrupted or replaced by garbage; the
clean fast path never comes here.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct

import trio

from switch.codec import Message, MessageDecodeError
from switch.codec.composite import CompositeFieldError, CupHeader
from switch.commit import CommitError
from switch.faults import FaultDecision
from switch.server_core import (
    _Applied,
    _CloseConnection,
    _Connection,
    _Outgoing,
    _socket_of,
    _with_wire_mac,
    _xor,
)
from switch.server_held import _HeldServer

log = logging.getLogger("switch.server")


class _FaultedServer(_HeldServer):
    """Adds the fault actions to the server core (``hold``: ``_HeldServer``); ``SwitchServer`` adds the
    connection tasks."""

    async def _serve_faulted(self, conn: _Connection, request: Message | None, error: MessageDecodeError | None,
                             plan: FaultDecision, applied: _Applied, tpdu: bytes | None,
                             request_seq: int | None, arrived: float, raw: bytes) -> None:
        """Run one request through its fault plan, in the order FaultDecision documents."""
        finished = False
        try:
            if plan.delay_request:
                await trio.sleep(plan.delay_request)
            if plan.reset_before or plan.close_before or plan.drop_request:
                finished = True
                await self._end_unanswered(conn, request, error, request_seq, applied, reset=plan.reset_before,
                                           close=plan.close_before, when="before processing",
                                           dropped="request dropped unprocessed")
                return
            if plan.hold is not None:
                finished = True  # _hold settles this request's in-flight count itself
                await self._hold(conn, request, error, plan, applied, tpdu, request_seq, arrived, raw)
                return
            if plan.respond is not None:
                reply = self.host.unprocessed_reply(request, plan.respond) if request is not None else None
                commit_seq = None
                if reply is None and request is None:  # nothing readable to answer: as the host would
                    reply, commit_seq = await self._decide_any(request, error, conn.peer, raw)
                if reply is None:
                    return
            else:
                reply, commit_seq = await self._decide_any(request, error, conn.peer, raw)
                if reply is None:
                    return
            if commit_seq:
                await self.committer.wait_committed(commit_seq)  # the posting exists before anything else
            if plan.delay_response:
                await trio.sleep(plan.delay_response)
            if plan.reset_after or plan.close_after or plan.drop_response:
                finished = True
                await self._end_unanswered(conn, request, error, request_seq, applied, reset=plan.reset_after,
                                           close=plan.close_after, when="after processing",
                                           dropped="response dropped after commit")
                return
            payload, reply = self._faulted_payload(reply, plan)
            frame = self._faulted_frame(payload, tpdu, plan)
            await self._faulted_write(conn, frame, plan)
            finished = True
            conn.finished(1)
            self.stats.responses_out += 1
            mti = request.mti if request is not None else "????"
            sent = None if plan.garbage is not None else reply  # the journal decodes what was really sent
            note = "garbage sent" if plan.garbage is not None else ""
            if plan.truncate_at is not None:  # journal the bytes that left, not the whole reply
                kept = max(0, len(frame) - self.framing.header_size - (len(tpdu) if tpdu else 0))
                note = f"truncated: {kept} of {len(payload)} bytes sent, then closed"
                payload, sent = payload[:kept], None
            self._sent(conn, [_Outgoing(0, frame, payload, sent, mti, request_seq, arrived)], applied, note=note)
            if plan.duplicate:
                await self._faulted_write(conn, frame, plan)
                if self.journal is not None:
                    self.journal.record_out(connection=conn.number, peer=conn.peer, raw=payload, message=sent,
                                            request_seq=request_seq, faults=applied.actions,
                                            rules=applied.rules, note="the same reply again")
            if plan.truncate_at is not None:
                await self._close(conn, reset=False)
        except _CloseConnection as exc:
            log.warning("%s: closing connection: %s", conn.peer, exc)
            conn.reader_scope.cancel()
        except CommitError as exc:
            log.error("%s: ledger not durable, reply withheld: %s", conn.peer, exc)
            conn.reader_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            conn.reader_scope.cancel()
        finally:
            if not finished:
                conn.post(None)

    async def _end_unanswered(self, conn: _Connection, request: Message | None, error: MessageDecodeError | None,
                              request_seq: int | None, applied: _Applied, *, reset: bool, close: bool,
                              when: str, dropped: str) -> None:
        """End an exchange with no reply: journal why, then reset or close the connection if asked."""
        note = f"reset {when}" if reset else (f"closed {when}" if close else dropped)
        self._unanswered(request, error, request_seq, applied, note)
        conn.finished(1)
        if reset or close:
            await self._close(conn, reset=reset)

    def _faulted_payload(self, reply: Message, plan: FaultDecision) -> tuple[bytes, Message]:
        """Step 6: the reply with wrong echoes, a wrong check value, the sign-on-again header and a
        corrupted MAC applied, encoded and MACed (or the garbage). Raises ``_CloseConnection`` when
        no reply encodes."""
        if plan.garbage is not None:
            return plan.garbage, reply
        if plan.wrong_echo or plan.wrong_check_value is not None or plan.signon_again:
            fields = dict(reply.fields)
            fields.update(plan.wrong_echo)
            if plan.wrong_check_value is not None and 62 in fields:
                fields[62] = _corrupt_check_value(fields[62], plan.wrong_check_value)
            header = _sign_on_again(reply.header) if plan.signon_again else reply.header
            reply = Message(reply.mti, fields, header)
        if plan.corrupt_mac is not None and self.host.response_mac(reply) is None:
            # no MAC for this terminal: the reply gets a wrong one (an 8-byte field 64 if it had none)
            fields = dict(reply.fields)
            number = 128 if any(number > 64 for number in fields) and 128 in fields else 64
            mac = bytes.fromhex(fields.get(number, "00" * 8))
            fields[number] = _xor(mac, plan.corrupt_mac).hex().upper()
            reply = Message(reply.mti, fields, reply.header)
            return self._encode_or_close(reply)
        payload, reply = self._encode_or_close(reply)
        if not self.host.macs:
            return payload, reply
        payload, reply, maced = self._mac(reply, payload)
        placement = self.host.mac_placement
        if plan.corrupt_mac is not None and maced and placement is not None:
            size = placement.field_length
            wire = payload[len(payload) - size:]
            if placement.hex_field:
                wire = _xor(bytes.fromhex(wire.decode("ascii")), plan.corrupt_mac).hex().upper().encode("ascii")
            else:
                wire = _xor(wire, plan.corrupt_mac)
            payload = payload[:len(payload) - size] + wire
            reply = _with_wire_mac(reply, payload, size, placement.hex_field)
        return payload, reply

    def _faulted_frame(self, payload: bytes, tpdu: bytes | None, plan: FaultDecision) -> bytes:
        """Step 7: framing, with a wrong length header or a truncated body when asked."""
        framed = self.framing.encode(payload, tpdu)
        size = self.framing.header_size
        if plan.length_delta:
            declared = len(framed) - size + (size if self.framing.length_includes_itself else 0)
            wrong = max(0, declared + plan.length_delta)
            framed = self.framing.header_saying(wrong) + framed[size:]
        if plan.truncate_at is not None:
            framed = framed[:size + max(0, min(plan.truncate_at, len(framed) - size - 1))]
        return framed

    async def _faulted_write(self, conn: _Connection, frame: bytes, plan: FaultDecision) -> None:
        """Step 8: write whole, in slices with pauses, or under a bandwidth cap.

        The cap paces like a link of that rate: the piece ending at byte k goes out no sooner than
        k / bandwidth seconds after the write began, so the whole reply takes at least
        len(frame) / bandwidth (not one piece less), and deadlines rather than relative sleeps keep
        each timer's overshoot from adding up.
        """
        conn.sending += 1
        try:
            await self._paced_write(conn, frame, plan)
        finally:
            conn.sending -= 1
        conn.last_activity = trio.current_time()

    async def _paced_write(self, conn: _Connection, frame: bytes, plan: FaultDecision) -> None:
        if plan.slice is None and plan.bandwidth is None:
            await conn.frames.send_raw(frame)
            return
        chunk, pause = plan.slice if plan.slice is not None else (max(1, (plan.bandwidth or 1) // 20), 0.0)
        # The frame stays whole on the wire: replies decided meanwhile wait behind it, as they would
        # behind a slow link, instead of landing between its pieces.
        async with conn.frames.sending() as stream:
            start = trio.current_time()
            for offset in range(0, len(frame), chunk):
                piece = frame[offset:offset + chunk]
                if pause and offset:
                    await trio.sleep(pause)
                if plan.bandwidth:
                    await trio.sleep_until(start + (offset + len(piece)) / plan.bandwidth)
                await stream.send_all(piece)
                conn.last_activity = trio.current_time()  # bytes moved: a slow reply is not an idle peer

    async def _close(self, conn: _Connection, *, reset: bool) -> None:
        """Close the connection now: FIN, or RST when ``reset`` (SO_LINGER 0). Pending replies are lost."""
        sock = _socket_of(conn.frames.stream)
        if reset and sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(conn.frames.stream)
        if conn.scope is not None:
            conn.scope.cancel()



def _corrupt_check_value(value: str, mask: bytes) -> str:
    """Field 62 (hex) with its last check value XORed with ``mask``; unchanged if it is not hex."""
    try:
        data = bytes.fromhex(value)
    except ValueError:
        return value
    if len(data) < len(mask):
        return value
    return (data[:len(data) - len(mask)] + _xor(data[len(data) - len(mask):], mask)).hex().upper()


def _sign_on_again(header: str) -> str:
    """A CUP header with processing requirement 3 ("sign on again"); other headers unchanged."""
    try:
        return CupHeader.parse(header).with_requirement(CupHeader.SIGN_ON_AGAIN).format()
    except CompositeFieldError:
        return header
