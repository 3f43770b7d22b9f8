"""The acquirer host: decoded request + clock + ledger → the answer a real acquirer would give.

Modules, one job each:

* ``config``     — ``HostConfig`` (every ``[host]`` setting) and the default codes;
* ``checks``     — field checks and small derivations (Luhn, RRN, auth code, transaction identity);
* ``family``     — everything ISO 8583 and CUP do differently, one object per family;
* ``core``       — ``Decision``, ``Outcome``, replies, format checks, the sign-on gate, postings;
* ``sessions``   — 0800 sign-on/off/echo (with the host clock in 12/13), profiles, MACs, keys, PINs;
* ``financial``  — 0100/0200 (purchase, refund, balance inquiry, CUP void) and 0220 advices;
* ``reversals``  — 0400-class reversals and the shared "undo once" step;
* ``settlement`` — 0320 uploads and 0500 settlement, ISO and CUP flows;
* ``host``       — ``Host``: dispatch, ``format_error``, ``unprocessed_reply``, ``response_mac``.

README "How the host answers" is the rule table a payments engineer can check against their spec.
"""

from switch.host.checks import (
    auth_code_for,
    auth_salt,
    card_expiry,
    identity_of,
    luhn_valid,
    rrn_for,
    transmission_datetime,
)
from switch.host.config import (
    APPROVAL_CODES,
    HOST_SETTINGS,
    MAC_FAILURE_DEFAULT,
    PIN_FORMAT_DEFAULT,
    SIGNON_REQUIRED_DEFAULTS,
    HostConfig,
    ResendAnswer,
    SettlementCompare,
)
from switch.host.core import NOT_ECHOED, Decision, Outcome
from switch.host.family import UPLOAD_END_CODES
from switch.host.host import Host
from switch.host.sessions import INVALID_MERCHANT

__all__ = [
    "APPROVAL_CODES",
    "HOST_SETTINGS",
    "INVALID_MERCHANT",
    "MAC_FAILURE_DEFAULT",
    "NOT_ECHOED",
    "PIN_FORMAT_DEFAULT",
    "SIGNON_REQUIRED_DEFAULTS",
    "UPLOAD_END_CODES",
    "Decision",
    "Host",
    "HostConfig",
    "Outcome",
    "ResendAnswer",
    "SettlementCompare",
    "auth_code_for",
    "auth_salt",
    "card_expiry",
    "identity_of",
    "luhn_valid",
    "rrn_for",
    "transmission_datetime",
]
