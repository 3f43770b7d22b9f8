"""The careful POS terminal's rules as a pure state machine (h11 style).

The policy never sleeps, never touches a socket and never reads a clock: the driver passes ``now``
(Unix seconds) into every call. It decides; the driver (``terminal.client``) only moves bytes,
sleeps and connects. One operation runs at a time::

    policy.start(Purchase(amount=1234, pan=..., expiry="2712"), now)
    while True:
        action = policy.next_action(now)      # Connect | Send | AwaitReply | Sleep | Finished
        ...perform it, then report what happened:
        policy.connection_made / connect_failed / connection_lost / receive / receive_undecodable
        if isinstance(action, Finished): break

(``terminal.client`` is that driver; the test suite's ``Harness`` is a synchronous one.) What
happened along the way comes out of ``take_notes()`` for the terminal's journal: sign-ons, failed
exchanges, late replies discarded.

The rules (domain.md, "Terminal rules"):

* **Sign-on first.** Every operation that sends a financial message signs on first when the
  terminal is not signed on; a fresh policy never is (sessions do not survive restarts). Failed
  sign-ons are retried up to ``signon_attempts`` with exponential backoff (a ``Sleep`` action).
  A host demand (a code in ``signon_demand_codes``: A0, 99, plus whatever the profile adds; or the
  CUP header's processing requirement 3) drops the session; the next message signs on again, and a
  sale refused that way is sent once more as a new transaction (new STAN). Any other code — 58
  "not permitted to terminal" included — is a genuine decline: never re-sent.
* **Clock.** An approved sign-on's 12/13 (the host's local time) set the terminal's clock offset
  (``terminal.clock``, kept in the store); 7 (UTC) and 12/13 are stamped on the host's time after.
* **Local refusals**: amount <= 0, a PAN that is not 12-19 digits with a valid Luhn check digit,
  an expiry month before the current one: refused before anything is stored or sent.
* **Every exchange has a deadline** (``profile.timeout_for``). A message is the response only if
  its MTI is the request's + 10 and fields 41 and 11 match; then echo checks (3, 4, 11, 41, and
  42 when approved) and the MAC verdict decide whether the exchange succeeded. Anything else that
  arrives is logged and discarded, late replies to exchanges already failed included: they never
  change an outcome.
* **Persist, then send.** Before a 0200/0100 is returned in a ``Send``, one store transaction has
  allocated its STAN, journalled it as in-flight and stored its pending reversal. A valid answer
  deletes the reversal in the same transaction that records the answer. Timeout, connection loss,
  an unparsable reply or a failed echo queue it with reason 98, a failed MAC with A0; the reversal
  goes out at once: 0400, then 0401 repeats (same STAN and field 7: retransmissions), up to
  ``reversal_attempts`` per operation. Unanswered, it stays stored and goes out before the next
  transaction — and a new transaction is not sent while any reversal, advice or settlement is
  still owed to the host. An ISO reversal carries its own new STAN in field 11 and names the original
  (MTI, STAN, field 7, acquirer) in field 90; a CUP reversal (冲正) keeps the original's STAN and has
  no field 90. Track data, PIN and ICC data are dropped.
* **Cardholder confirmation** (``Purchase.confirm_timeout``): after an approval the policy asks the
  driver to ``AwaitConfirmation``; without ``cardholder_confirmed`` by the deadline the approved
  sale is reversed with field 39 = 17 (ISO 8583 "customer cancellation") and the operator told.
* **Advices** (0220, offline sales) are stored when made and forwarded (0221 repeats) until the
  host answers; 94 counts as success.
* **Settlement** (``terminal.settlement``): ISO 0500 920000 with gross totals and their reversal
  columns; on 95 a 0320 per record, then 0500 960000, whose 00 closes the batch as unbalanced. CUP:
  0500; on flag '2' a 0320 per record, then the end-of-upload 0320 (60.3 207), whose 00 closes it.
  The batch closes (and its number moves on) only on the host's closing answer; "unbalanced,
  uploaded, closed" is reported as such (outcome ``unbalanced``), never as balanced. A 0500 left
  unanswered is repeated (0501) before anything else.
* **STANs** come from the store, persisted before use, 000001-999999 wrapping.
* **Keys, MACs, PINs** (profiles with a TMK or static keys, see ``terminal.profile``). A CUP
  sign-on asks for the profile's key layout in 60.3; an approved sign-on of a terminal with a TMK
  must carry field 62, whose working keys are decrypted and their check values verified: a missing
  field, a wrong size or a mismatch is a failed sign-on (retried like any other), and the keys of
  the last good sign-on stay in memory only (a restart signs on again anyway). Static keys are used
  as they are. Every request but network management (08xx) is MACed with the MAC key
  (``request_mac``: the driver encodes and MACs it), and replies are checked (``reply_mac_ok``):
  a reply with a MAC must verify, and an approval (or a CUP settlement answer) must have one; a
  decline without a MAC is accepted, because a host cannot MAC its "MAC check failed" answer. A
  bad MAC fails the exchange: reversal with reason A0, sign on again for new keys. A purchase
  with a ``pin`` sends field 52: the ISO format 0 block encrypted under the PIN key; the PIN
  itself is never stored.

* **Ctrl-C** (``interrupt``): the awaited exchange fails as if unanswered; the store stays consistent.
"""


from terminal.policy.machine import TerminalPolicy
from terminal.policy.types import (
    APPROVAL_CODES,
    CLOCK_ADVICE,
    MAC_FAILURE_REASON,
    NO_REPLY_REASON,
    OUTCOME_KINDS,
    RESPONSE_MEANINGS,
    UNKNOWN_ADVICE,
    VOID_REASON,
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
    Note,
    OfflineSale,
    Outcome,
    PolicyError,
    PreAuthorization,
    Purchase,
    Refund,
    ReverseLast,
    Send,
    Settle,
    SignOff,
    SignOn,
    Sleep,
    card_problem,
    luhn_valid,
    meaning_of,
)

__all__ = [
    "APPROVAL_CODES",
    "CLOCK_ADVICE",
    "MAC_FAILURE_REASON",
    "NO_REPLY_REASON",
    "OUTCOME_KINDS",
    "RESPONSE_MEANINGS",
    "UNKNOWN_ADVICE",
    "VOID_REASON",
    "Action",
    "AwaitConfirmation",
    "AwaitReply",
    "BalanceInquiry",
    "Command",
    "Connect",
    "Drain",
    "Echo",
    "Finished",
    "Idle",
    "Note",
    "OfflineSale",
    "Outcome",
    "PolicyError",
    "PreAuthorization",
    "Purchase",
    "Refund",
    "ReverseLast",
    "Send",
    "Settle",
    "SignOff",
    "SignOn",
    "Sleep",
    "TerminalPolicy",
    "card_problem",
    "luhn_valid",
    "meaning_of",
]
