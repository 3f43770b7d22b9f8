"""``TerminalPolicy``: the careful POS terminal's decisions as a pure state machine (see
``terminal.policy`` for the rules). It never sleeps, never touches a socket and never reads a clock."""

from __future__ import annotations

import math

from switch.codec.message import Message
from switch.security import (
    check_value,
)
from terminal.policy.core import _ECHOED, _MAX_STEPS, _Exchange, _Operation, _queue_key
from terminal.policy.failures import FailureSteps
from terminal.policy.types import (
    APPROVAL_CODES,
    PARTIAL_APPROVAL,
    UNKNOWN_ADVICE,
    Action,
    AwaitConfirmation,
    AwaitReply,
    BalanceInquiry,
    Command,
    Connect,
    Drain,
    Echo,
    Finished,
    Idle,
    OfflineSale,
    Outcome,
    PolicyError,
    Purchase,
    ReverseLast,
    Settle,
    SignOff,
    SignOn,
    Sleep,
    _amount_problem,
    _balances,
    _check_now,
    _hex_ok,
    _track2_ok,
    card_problem,
    meaning_of,
)
from terminal.store import PendingSettlement

__all__ = ["TerminalPolicy"]


class TerminalPolicy(FailureSteps):
    """The terminal's decisions over one ``TerminalStore``; see ``terminal.policy``."""

    # -- commands --------------------------------------------------------------------------------

    def start(self, command: Command, now: float) -> None:
        """Begin an operation; then drive it with ``next_action``. A local refusal or a drain with
        nothing owed finishes at once (the first action is ``Finished``)."""
        _check_now(now)
        if self._op is not None:
            raise PolicyError(f"operation {self._op.command.name} is still running; finish it first")
        if isinstance(command, SignOn):
            self._signed_on = False
            op = _Operation(command, needs_signon=True, drains=False)
        elif isinstance(command, SignOff | Echo):
            op = _Operation(command, needs_signon=False, drains=False)
        elif isinstance(command, Drain | Settle | ReverseLast | Purchase | OfflineSale | BalanceInquiry):
            op = _Operation(command, needs_signon=True, drains=True)
        else:
            raise PolicyError(f"not a terminal command: {command!r}")
        self._op = op
        self._wait_until = None
        if isinstance(command, Purchase):
            problem = self._sale_problem(command, now)
            if problem is not None:
                self._refuse(op, problem)
        elif isinstance(command, OfflineSale):
            problem = self._sale_problem(command, now)
            if problem is not None:
                self._refuse(op, problem)
            else:
                self._record_offline_sale(op, command, now)
        elif isinstance(command, BalanceInquiry):
            problem = card_problem(command.pan, command.expiry, self._clock.local_date(now))
            if problem is None and command.track2 is not None and not _track2_ok(command.track2):
                problem = "malformed track 2: up to 37 digits with one '=' (or 'D') separator"
            if problem is None and command.pin_block is not None and not _hex_ok(command.pin_block, 16):
                problem = "malformed PIN block: 16 hex digits"
            if problem is not None:
                self._refuse(op, problem)
        elif isinstance(command, Drain) and not self.owes_host():
            op.outcome = Outcome("completed", command.name, "nothing owed to the host")
        elif isinstance(command, ReverseLast) and self._void_target() is None:
            self._refuse(op, f"no approved transaction in the open batch {self.store.batch} to reverse")

    def _sale_problem(self, command: Purchase | OfflineSale, now: float) -> str | None:
        problem = (_amount_problem(command.amount)
                   or card_problem(command.pan, command.expiry, self._clock.local_date(now)))
        if problem is not None:
            return problem
        if isinstance(command, Purchase):
            timeout = command.confirm_timeout
            if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                        or not math.isfinite(timeout) or timeout <= 0):
                return f"confirmation timeout must be a number of seconds > 0, got {timeout!r}"
            if command.track2 is not None and not _track2_ok(command.track2):
                return "malformed track 2: up to 37 digits with one '=' (or 'D') separator"
            if command.pin_block is not None and not _hex_ok(command.pin_block, 16):
                return "malformed PIN block: 16 hex digits"
            if command.pin is not None:
                if command.pin_block is not None:
                    return "give a PIN or a PIN block, not both"
                pin = command.pin
                if not (isinstance(pin, str) and pin.isascii() and pin.isdigit() and 4 <= len(pin) <= 12):
                    return "malformed PIN: 4 to 12 digits"
                if not self.profile.has_keys:
                    return "a PIN needs a PIN key: use a terminal profile with a tmk or static pin_key"
        elif command.auth_code and not (
            len(command.auth_code) <= 6 and command.auth_code.isascii() and command.auth_code.isalnum()
        ):
            return "malformed offline approval code: up to 6 letters or digits"
        return None

    # -- the driver's loop -----------------------------------------------------------------------

    def next_action(self, now: float) -> Action:
        """What the driver must do now. Detects an expired deadline itself (``now`` >= deadline)."""
        _check_now(now)
        exchange = self._exchange
        if exchange is not None:
            if now < exchange.deadline:
                return AwaitReply(exchange.deadline)
            self._fail(now, "timeout", f"no reply within {self.profile.timeout_for(exchange.request.mti):g}s")
        for _ in range(_MAX_STEPS):
            op = self._op
            if op is None:
                return Idle()
            if op.outcome is not None:
                self._op = None
                self._wait_until = None
                return Finished(op.outcome)
            if self._wait_until is not None:
                if now < self._wait_until:
                    return Sleep(self._wait_until, op.last_problem or "backoff")
                self._wait_until = None
            action = self._step(now, op)
            if action is not None:
                return action
        raise PolicyError(
            f"operation {self._op.command.name if self._op else '?'} made no progress "
            f"in {_MAX_STEPS} steps (a policy bug)"
        )

    def connection_made(self, now: float) -> None:
        _check_now(now)
        self._connected = True
        if self._op is not None:
            self._op.connect_failures = 0

    def connect_failed(self, now: float, reason: str) -> None:
        _check_now(now)
        self._connected = False
        op = self._op
        self._note("connect-failed", f"cannot connect: {reason}")
        if op is None:
            return
        op.connect_failures += 1
        op.last_problem = f"cannot connect: {reason}"
        if op.connect_failures < self.profile.connect_attempts:
            self._wait_until = now + self.profile.backoff(op.connect_failures)

    def connection_lost(self, now: float, reason: str = "connection closed") -> None:
        """The connection broke (peer closed, reset, failed write). An exchange in progress fails."""
        _check_now(now)
        was_connected = self._connected
        self._connected = False
        if was_connected or self._exchange is not None:
            self._note("connection-lost", reason)  # counted whether or not an exchange was waiting
        if self._exchange is not None:
            self._fail(now, "connection-lost", reason)

    def receive(self, message: Message, now: float, *, mac_ok: bool = True) -> None:
        """A decoded message arrived. ``mac_ok`` is the driver's MAC verdict (True when no MAC is used).

        Only the awaited exchange's response (MTI + 10, field 41, field 11) is applied; anything else
        becomes a discard note. A reply at or after the deadline is late: the exchange has failed.
        """
        _check_now(now)
        exchange = self._exchange
        if exchange is not None and now >= exchange.deadline:
            self._fail(now, "timeout", f"no reply within {self.profile.timeout_for(exchange.request.mti):g}s")
            exchange = None
        if exchange is None or not self._matches(exchange, message):
            self._discard(message)
            return
        if not mac_ok:
            self._fail(now, "mac", "the reply's MAC does not verify")
            return
        problem = self._echo_problem(exchange, message)
        if problem is not None:
            self._fail(now, "echo", problem)
            return
        self._exchange = None
        header_demand = exchange.purpose != "signon" and self._family.demands_signon(message)
        self._apply(exchange, message, now)
        if header_demand and self._signed_on:
            self._signed_on = False
            self._note("signon-demanded", "the reply's CUP header asks for a new sign-on", message.get(11) or "")

    def send_failed(self, now: float, reason: str) -> None:
        """The driver could not encode or write the last ``Send`` (a write error that also broke the
        connection is ``connection_lost``). The exchange fails like any other: a financial request's
        stored reversal goes out, so a message that may or may not have left is never left hanging."""
        _check_now(now)
        if self._exchange is None:
            raise PolicyError("send_failed without a message in flight")
        self._fail(now, "not-sent", f"could not send: {reason}")

    def cardholder_confirmed(self, now: float) -> None:
        """The cardholder confirmed the approved sale in time (too late counts as not at all)."""
        _check_now(now)
        op = self._op
        if op is None or op.confirm_deadline is None:
            raise PolicyError("cardholder_confirmed without a sale awaiting confirmation")
        if now < op.confirm_deadline:
            op.confirm_deadline = None
            self._note("cardholder-confirmed", "the cardholder confirmed the sale")

    def interrupt(self, now: float) -> Outcome:
        """The operator stopped the operation (Ctrl-C). The awaited exchange fails as if unanswered
        (a financial request's reversal stays stored and goes out before the next transaction); the
        outcome says whether anything was in flight ("unknown-queued") or not ("failed"). The policy
        is idle afterwards."""
        _check_now(now)
        op = self._op
        if op is None:
            raise PolicyError("interrupt without an operation running")
        exchange = self._exchange
        if exchange is not None:
            self._fail(now, "interrupted", "interrupted by the operator")
        elif op.confirm_deadline is not None:  # approved, not confirmed: the sale is cancelled
            self._cancel_unconfirmed(now, op)
        name = op.command.name
        self._op, self._wait_until, self._connected = None, None, False
        entry = self.store.entry(op.journal_id) if op.journal_id is not None else None
        if entry is not None and entry.state in ("unknown", "in-flight"):
            return Outcome("unknown-queued", name, f"interrupted: {UNKNOWN_ADVICE}", stan=entry.stan,
                           amount=entry.amount, batch=entry.batch, journal_id=entry.id)
        if exchange is not None and exchange.purpose in ("reversal", "settlement", "advice"):
            return Outcome(
                "unknown-queued",
                name,
                f"interrupted while a {exchange.purpose} was unanswered: it stays stored and goes out "
                "before the next transaction",
            )
        if exchange is not None:
            return Outcome("failed", name, f"interrupted while waiting for the {exchange.purpose} answer; "
                                           "no payment was in flight, nothing to undo")
        return Outcome("failed", name, "interrupted: nothing was awaiting an answer; nothing to undo")

    def receive_undecodable(self, now: float, error: str) -> None:
        """A frame arrived that the codec could not decode: the awaited exchange (if any) fails."""
        _check_now(now)
        if self._exchange is not None and now < self._exchange.deadline:
            self._fail(now, "unparsable", f"unparsable reply: {error}")
        else:
            self._note("unexpected-message-discarded", f"undecodable frame discarded: {error}")

    # -- stepping --------------------------------------------------------------------------------

    def _step(self, now: float, op: _Operation) -> Action | None:
        if op.confirm_deadline is not None:
            if now < op.confirm_deadline:
                return AwaitConfirmation(op.confirm_deadline)
            self._cancel_unconfirmed(now, op)
        outcome = self._own_outcome(op)
        if outcome is not None:  # done: a sign-on demand on the last reply is the next operation's business
            op.outcome = outcome
            return None
        if not self._connected:
            if op.connect_failures >= self.profile.connect_attempts:
                self._give_up(op, op.last_problem or "cannot connect")
                return None
            return Connect()
        if op.needs_signon and not self._signed_on:
            if op.resignons > self.profile.resignon_limit:
                self._give_up(op, f"the host demanded a new sign-on {op.resignons} times")
                return None
            if op.signon_failures >= self.profile.signon_attempts:
                self._give_up(op, f"sign-on failed {op.signon_failures} times; last: {op.last_problem}")
                return None
            return self._send_network(now, "signon")
        if op.drains:
            action = self._drain(now, op)
            if action is not None or op.outcome is not None:
                return action
        return self._op_step(now, op)

    def _drain(self, now: float, op: _Operation) -> Action | None:
        """The next stored item owed to the host; None when nothing is owed.

        Order: reversals (oldest first), then an unanswered settlement (so the batch it closes is
        the batch the terminal closes), then advices (re-batched when first sent, see
        ``_send_advice``).
        """
        limit = self.profile.reversal_attempts
        for reversal in self.store.reversals():
            key = _queue_key("reversal", reversal.id)
            if op.budget.get(key, 0) >= limit:
                self._give_up(
                    op,
                    f"the reversal of STAN {self.store.entry(reversal.journal_id).stan} got no answer in "
                    f"{limit} attempts; it stays stored and goes out before the next transaction",
                )
                return None
            return self._send_reversal(now, op, reversal)
        pending = self.store.pending_settlement
        if pending is not None:
            key = _queue_key("settlement", 0)
            if op.budget.get(key, 0) >= self.profile.settlement_attempts:
                self._give_up(
                    op,
                    f"settlement STAN {pending.message.get(11)} got no answer in "
                    f"{self.profile.settlement_attempts} attempts; it is repeated before the "
                    "next transaction",
                )
                return None
            op.budget[key] = op.budget.get(key, 0) + 1
            self.store.set_pending_settlement(PendingSettlement(pending.batch, pending.message, pending.attempts + 1))
            return self._transmit(now, "settlement", pending.message.copy(mti="0501"))
        for advice in self.store.advices():
            key = _queue_key("advice", advice.id)
            if op.budget.get(key, 0) >= self.profile.advice_attempts:
                self._give_up(
                    op,
                    f"the advice STAN {advice.message.get(11)} got no answer in "
                    f"{self.profile.advice_attempts} attempts; it stays stored",
                )
                return None
            op.budget[key] = op.budget.get(key, 0) + 1
            return self._send_advice(now, advice)
        return None

    def _own_outcome(self, op: _Operation) -> Outcome | None:
        """The operation's outcome once its own work is over, else None."""
        command = op.command
        name = command.name
        if isinstance(command, Purchase | OfflineSale | ReverseLast):
            if op.journal_id is None or op.resend_pending:
                return None
            entry = self._written  # as the answer just wrote it, unless anything changed it since
            if entry is None or entry.id != op.journal_id:
                entry = self.store.entry(op.journal_id)
            if entry.state in ("in-flight", "unknown", "advice-pending"):
                return None  # its reversal or advice is still owed
            return self._entry_outcome(op, entry)
        if isinstance(command, SignOn):
            if self._signed_on:
                return Outcome("approved", name, "signed on", response_code="00", meaning=meaning_of("00"))
            return None
        if isinstance(command, Settle) and op.settle_result is not None:
            return self._settle_outcome(op)
        return None

    def _op_step(self, now: float, op: _Operation) -> Action | None:
        """The operation's own work, once connected, signed on (if needed) and owing nothing."""
        command = op.command
        if isinstance(command, Purchase):
            op.resend_pending = False
            if command.pin is not None and self._keys is None:
                self._refuse(op, "no PIN working key: the host's sign-on delivered none")
                return None
            return self._send_financial(now, op, command)
        if isinstance(command, ReverseLast):
            self._start_void(now, op)
            return None
        if isinstance(command, Settle):
            return self._settle_step(now, op)
        if isinstance(command, Drain):
            op.outcome = Outcome("completed", command.name, "everything owed to the host was answered")
            return None
        if isinstance(command, BalanceInquiry) and op.phase == "start":
            op.phase = "sent"
            return self._send_inquiry(now, command)
        if isinstance(command, Echo | SignOff) and op.phase == "start":
            op.phase = "sent"
            return self._send_network(now, "echo" if isinstance(command, Echo) else "signoff")
        raise PolicyError(f"{command.name} has nothing left to do but no outcome (a policy bug)")

    # -- responses -------------------------------------------------------------------------------

    def _matches(self, exchange: _Exchange, message: Message) -> bool:
        request = exchange.request
        got = message.fields
        return (
            message.mti == request.response_mti
            and (got.get(41) or "").rstrip(" ") == self.profile.terminal_id.rstrip(" ")
            and got.get(11) == request.fields.get(11)
        )

    def _echo_problem(self, exchange: _Exchange, response: Message) -> str | None:
        request = exchange.request
        code = response.get(39)
        settlement = exchange.purpose == "settlement"
        if settlement:
            problem = self._family.settlement_answer_problem(response)
            if problem is not None:
                return problem
        elif code is None:
            return "the reply has no response code (field 39)"
        if code is not None and not (len(code) == 2 and code.isascii() and code.isalnum()):
            return f"the reply's response code {code!r} is not 2 letters or digits"
        sent_fields, got_fields = request.fields, response.fields
        for number in _ECHOED:
            sent = sent_fields.get(number)
            if sent is None:
                continue
            got = got_fields.get(number)
            if got == sent:  # the usual case: echoed as sent
                continue
            if number == 41:
                sent, got = sent.rstrip(" "), (got or "").rstrip(" ")
            if got == sent:
                continue
            if (
                number == 4
                and code == PARTIAL_APPROVAL
                and got is not None
                and got.isdigit()
                and 0 < int(got) <= int(sent)
            ):
                continue
            return f"field {number} not echoed: sent {sent!r}, got {got!r}"
        if code in APPROVAL_CODES and 42 in request and (response.get(42) or "").rstrip(" ") != request[42].rstrip(" "):
            return f"field 42 not echoed on an approval: sent {request[42]!r}, got {response.get(42)!r}"
        return None

    def _discard(self, message: Message) -> None:
        key = (message.mti, (message.get(41) or "").rstrip(" "), message.get(11) or "")
        if key in self._late:
            self._note(
                "late-reply-discarded",
                f"late {message.mti} for STAN {key[2]} (code "
                f"{message.get(39, '-')}) discarded: that exchange already failed",
                key[2],
                message,
            )
        else:
            self._note(
                "unexpected-message-discarded",
                f"{message.mti} STAN {key[2] or '-'} matches no request in progress; discarded",
                key[2],
                message,
            )

    def _apply(self, exchange: _Exchange, response: Message, now: float) -> None:
        op = self._op
        assert op is not None
        code = response.get(39) or ""
        stan = exchange.request.get(11) or ""
        purpose = exchange.purpose
        if purpose == "financial":  # the usual answer first
            self._apply_financial(op, exchange, response, code, now)
        elif purpose == "signon":
            problem = self._load_keys(response) if code == "00" else None
            if code == "00" and problem is not None:
                self._signon_failed(op, now, f"sign-on answered 00, but {problem}", "")
            elif code == "00":
                self._signed_on = True
                op.signon_failures = 0
                self.store.record_signon(now)
                self._sync_clock(response, now, stan)
                keys = self._keys
                loaded = "" if keys is None or self.profile.tmk is None else (
                    f"; working keys loaded (PIN key check {check_value(keys.pin_key).hex().upper()}, "
                    f"MAC key check {check_value(keys.mac_key).hex().upper()})")
                self._note("signed-on", f"signed on{loaded}", stan)
            else:
                self._signon_failed(op, now, f"sign-on answered {code} ({meaning_of(code)})", code)
        elif purpose == "signoff":
            self._signed_on = False
            self.store.record_signon(None)
            self._note("signed-off", f"sign-off answered {code}", stan)
            op.outcome = self._code_outcome(op, code, "signed off")
        elif purpose == "echo":
            op.outcome = self._code_outcome(op, code, "echo answered")
        elif purpose == "inquiry":
            if code in APPROVAL_CODES:
                balances = _balances(response.get(54) or "", self.profile.currency_exponent)
                op.outcome = Outcome("approved", op.command.name, balances, response_code=code,
                                     meaning=meaning_of(code), rrn=(response.get(37) or "").strip())
            else:
                op.outcome = self._code_outcome(op, code, "")
        elif purpose == "reversal":
            self._apply_reversal(op, exchange, response, code, now)
        elif purpose == "advice":
            self._apply_advice(op, exchange, response, code, now)
        elif purpose == "settlement":
            self._apply_settlement(op, response, code, now)
        elif purpose in ("upload", "upload-end"):
            self._apply_upload(op, purpose, response, code, now)
