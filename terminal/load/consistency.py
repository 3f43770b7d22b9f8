"""The consistency check: terminal journals against the host's ledger postings (pure part and admin API)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from terminal.load.options import CUP_CLOCK_SLACK, DEFAULT_ADMIN_URL
from terminal.policy import (
    meaning_of,
)
from terminal.profile import format_amount
from terminal.store import JournalEntry

# ---------------------------------------------------------------------------------------------
# The consistency check (pure part)


@dataclass(frozen=True)
class HostPosting:
    """The fields of one host ledger posting the check needs (from ``/api/v1/ledger/postings``)."""

    terminal: str
    stan: str
    transmission_time: str
    kind: str
    direction: str
    amount: int
    approved: bool
    reversed: bool
    response_code: str
    received_at: float
    rrn: str = ""

    @property
    def money_moved(self) -> bool:
        return self.approved and not self.reversed

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> HostPosting:
        try:
            return cls(
                terminal=str(row["terminal"]).rstrip(" "), stan=str(row["stan"]),
                transmission_time=str(row.get("transmission_time") or ""), kind=str(row["kind"]),
                direction=str(row["direction"]), amount=int(row["amount"]), approved=bool(row["approved"]),
                reversed=bool(row.get("reversed", row.get("reversal_seq") is not None)),
                response_code=str(row.get("response_code") or ""), received_at=float(row["received_at"]),
                rrn=str(row.get("rrn") or ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise AdminUnavailable(f"the admin API answered a posting without {exc}: is it an iso-switch?") from None


@dataclass(frozen=True)
class Mismatch:
    """One transaction the terminal and the host disagree about, as both see it."""

    terminal: str
    stan: str
    transmission_time: str
    problem: str
    terminal_view: str
    host_view: str

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    def line(self) -> str:
        when = f" field 7 {self.transmission_time}" if self.transmission_time else ""
        return (f"{self.terminal} STAN {self.stan}{when}: {self.problem} — terminal: {self.terminal_view}; "
                f"host: {self.host_view}")


@dataclass(frozen=True)
class ConsistencyResult:
    """The check's verdict. ``status``: consistent | inconsistent | skipped (``reason`` says why)."""

    status: str
    reason: str = ""
    checked: int = 0
    money_moved: int = 0
    net_amount: int = 0  # debits minus credits that moved, minor units
    host_postings: int = 0
    mismatches: tuple[Mismatch, ...] = ()
    undecided: tuple[Mismatch, ...] = ()
    hint: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "inconsistent"

    def headline(self, exponent: int = 2) -> str:
        if self.status == "skipped":
            return f"consistency check skipped: {self.reason}"
        net = format_amount(self.net_amount, exponent)
        text = (f"{self.status}: {self.checked} transactions, {self.money_moved} money moved (net {net}), "
                f"{len(self.mismatches)} mismatches")
        if self.undecided:
            text += f", {len(self.undecided)} undecided (the terminal cannot know yet; not counted as consistent)"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status, "reason": self.reason, "checked": self.checked,
            "money_moved": self.money_moved, "net_amount": self.net_amount, "host_postings": self.host_postings,
            "mismatches": [m.as_dict() for m in self.mismatches],
            "undecided": [m.as_dict() for m in self.undecided], "hint": self.hint,
        }


def field7_time(text: str, near: float) -> float | None:
    """Field 7 (MMDDhhmmss, UTC) as Unix seconds, in the year that puts it closest to ``near``."""
    if len(text) != 10 or not (text.isascii() and text.isdigit()):
        return None
    year = datetime.fromtimestamp(near, UTC).year
    month, day, hour, minute, second = (int(text[i:i + 2]) for i in range(0, 10, 2))
    best: float | None = None
    for candidate in (year - 1, year, year + 1):
        try:  # the constructor, not strptime: the same checks (29 February, 24:00...) at a tenth of the cost
            moment = datetime(candidate, month, day, hour, minute, second, tzinfo=UTC).timestamp()
        except ValueError:  # 29 February in a year without one, or no such date or time at all
            continue
        if best is None or abs(moment - near) < abs(best - near):
            best = moment
    return best


def run_window(entries: Iterable[JournalEntry], started: float, ended: float) -> tuple[float, float]:
    """The run's time span by our clock, widened to every field 7 our terminals actually sent."""
    low, high = started, ended
    seen: set[str] = set()  # thousands of entries share a few hundred distinct field 7 values
    for entry in entries:
        text = entry.transmission_time
        if text in seen:
            continue
        seen.add(text)
        moment = field7_time(text, started)
        if moment is not None:
            low, high = min(low, moment), max(high, moment)
    return low, high


def _terminal_view(entry: JournalEntry, exponent: int) -> str:
    amount = format_amount(entry.amount, exponent)
    moved = {True: "money moved", False: "nothing moved", None: "cannot know"}[entry.money_moved]
    code = f" ({entry.response_code} {meaning_of(entry.response_code)})" if entry.response_code else ""
    return f"{entry.kind} {entry.direction} {amount} {entry.state}{code}: {moved}"


def _host_view(posting: HostPosting | None, exponent: int) -> str:
    if posting is None:
        return "no posting (never received, or never booked)"
    amount = format_amount(posting.amount, exponent)
    state = "reversed" if posting.reversed else ("approved" if posting.approved else "declined")
    moved = "money moved" if posting.money_moved else "nothing moved"
    code = f" ({posting.response_code} {meaning_of(posting.response_code)})" if posting.response_code else ""
    return f"{posting.kind} {posting.direction} {amount} {state}{code}: {moved}"


def _in_window(posting: HostPosting, low: float, high: float) -> bool:
    """Whether a host posting may belong to a run spanning [low, high] (our clock).

    Field 7 is set by our own terminals (whole seconds, hence one second of slack); without it
    (CUP) the host's receive time is all there is, with ``CUP_CLOCK_SLACK``.
    """
    if posting.transmission_time:
        moment = field7_time(posting.transmission_time, low)
        return moment is not None and low - 1.0 <= moment <= high + 1.0
    return low - CUP_CLOCK_SLACK <= posting.received_at <= high + CUP_CLOCK_SLACK


def compare_views(
    entries: Mapping[str, Sequence[JournalEntry]],
    postings: Sequence[HostPosting],
    window: tuple[float, float],
    *,
    journalled: Iterable[tuple[str, str, str]] = (),
    exponent: int = 2,
) -> ConsistencyResult:
    """Compare every terminal's journal with the host's postings, transaction by transaction.

    ``entries``: terminal id → the journal entries of this run. ``postings``: the host's postings of
    those terminals, of any age. ``window`` (Unix seconds, our clock) and ``journalled`` — the
    (terminal, STAN, field 7) keys of every entry the stores hold, earlier runs' included — decide
    which host postings with no entry of this run are this run's: those in the window that no
    store has ever journalled. Keys: terminal + STAN + field 7; CUP (no field 7): terminal + STAN,
    the posting the host received nearest the moment the terminal journalled it, within the window.

    Verdicts per transaction: the same money movement (and, where money moved, the same amount
    and direction) is consistent; a terminal that cannot know yet is "undecided"; anything else,
    and any host posting of the run the terminal never journalled, is a mismatch.
    """
    low, high = window
    by_key: dict[tuple[str, str, str], HostPosting] = {}
    repeated: list[HostPosting] = []  # a second posting of one key: the host booked one request twice
    cup_candidates: dict[tuple[str, str], list[HostPosting]] = {}
    for booked in postings:
        if booked.transmission_time:
            key = (booked.terminal, booked.stan, booked.transmission_time)
            if key in by_key:
                repeated.append(booked)
            else:
                by_key[key] = booked
        elif _in_window(booked, low, high):
            cup_candidates.setdefault((booked.terminal, booked.stan), []).append(booked)
    mismatches: list[Mismatch] = []
    undecided: list[Mismatch] = []
    matched: set[int] = set()  # id() of the postings some entry was compared with
    checked = moved = net = 0
    for terminal, journal in entries.items():
        terminal = terminal.rstrip(" ")
        for entry in journal:
            posting: HostPosting | None
            if entry.transmission_time:
                posting = by_key.get((terminal, entry.stan, entry.transmission_time))
            else:
                candidates = cup_candidates.get((terminal, entry.stan), [])
                posting = min(candidates, key=lambda p: abs(p.received_at - entry.created_at), default=None)
            if posting is not None:
                matched.add(id(posting))
            checked += 1
            terminal_view, host_view = _terminal_view(entry, exponent), _host_view(posting, exponent)
            host_moved = posting is not None and posting.money_moved
            problem = ""
            if entry.money_moved is None:
                reason = f"the terminal cannot know ({entry.state}: {entry.reason})"
                undecided.append(Mismatch(terminal, entry.stan, entry.transmission_time, reason,
                                          terminal_view, host_view))
                continue
            if entry.money_moved and not host_moved:
                problem = ("the terminal believes money moved; the host has no posting" if posting is None
                           else "the terminal believes money moved; the host did not move it")
            elif not entry.money_moved and host_moved:
                problem = "the host moved money; the terminal believes nothing moved"
            elif entry.money_moved and posting is not None:
                if posting.amount != entry.amount:
                    problem = "different amounts"
                elif posting.direction != entry.direction:
                    problem = "different directions (debit / credit)"
            if problem:
                mismatches.append(Mismatch(terminal, entry.stan, entry.transmission_time, problem,
                                           terminal_view, host_view))
                continue
            if entry.money_moved:
                moved += 1
                net += entry.amount if entry.direction == "debit" else -entry.amount
    known = {(terminal.rstrip(" "), stan, f7) for terminal, stan, f7 in journalled}
    host_in_run = 0
    in_window = [p for p in (*by_key.values(), *repeated) if _in_window(p, low, high)]
    repeated_ids = {id(p) for p in repeated}
    in_window += [p for candidates in cup_candidates.values() for p in candidates]
    for posting in sorted(in_window, key=lambda p: (p.terminal, p.received_at, p.stan)):
        if id(posting) in matched:
            host_in_run += 1
        elif id(posting) in repeated_ids:
            host_in_run += 1
            mismatches.append(Mismatch(
                posting.terminal, posting.stan, posting.transmission_time,
                "the host has this terminal, STAN and field 7 more than once (one request booked twice)",
                "one transaction", _host_view(posting, exponent)))
        elif (posting.terminal, posting.stan, posting.transmission_time) not in known:
            host_in_run += 1
            mismatches.append(Mismatch(
                posting.terminal, posting.stan, posting.transmission_time,
                "the host has a transaction the terminal never journalled",
                "no journal entry", _host_view(posting, exponent)))
    status = "inconsistent" if mismatches else "consistent"
    return ConsistencyResult(status, checked=checked, money_moved=moved, net_amount=net, host_postings=host_in_run,
                             mismatches=tuple(mismatches), undecided=tuple(undecided))


# ---------------------------------------------------------------------------------------------
# The consistency check (the host side, over the admin API)


class AdminUnavailable(RuntimeError):
    """The admin API could not be asked (not reachable, refused, not an iso-switch): the reason."""


@dataclass(frozen=True)
class CheckOptions:
    """``admin_url`` None: no check (``--no-check``). ``required``: a skipped check is an error."""

    admin_url: str | None = DEFAULT_ADMIN_URL
    token: str | None = None
    required: bool = False
    timeout: float = 10.0
    target: tuple[str, int] | None = None
    """The terminals' ``--host``/``--port``: the check is refused unless the admin API's ``/health``
    lists it among its switch's listeners (another switch's ledger would give false mismatches, or
    a false "consistent"). None: not checked."""


def _get_json(url: str, token: str | None, timeout: float) -> Any:
    import urllib.error  # here, not at the top: a run with --no-check never loads the HTTP client
    import urllib.request

    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        hint = " (give the switch's token with --admin-token)" if exc.code == 401 else ""
        raise AdminUnavailable(f"{url} answered HTTP {exc.code} {exc.reason}{hint}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason.strerror if isinstance(exc.reason, OSError) and exc.reason.strerror else exc.reason
        raise AdminUnavailable(f"admin API not reachable at {url}: {reason}") from None
    except (OSError, TimeoutError) as exc:
        raise AdminUnavailable(f"admin API not reachable at {url}: {exc.strerror or exc}") from None
    except ValueError:
        raise AdminUnavailable(f"{url} did not answer JSON: is it an iso-switch admin API?") from None


def _addresses(host: str) -> set[str]:
    """The addresses ``host`` stands for (a name resolved; "localhost" is loopback even offline)."""
    found = {host.strip("[]")}
    if host == "localhost":
        found |= {"127.0.0.1", "::1"}
    with contextlib.suppress(OSError, UnicodeError):  # a name that does not resolve is compared as written
        found |= {str(info[4][0]) for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
    return found


def listener_problem(health: Any, admin_url: str, target: tuple[str, int],
                     addresses: Iterable[str] | None = None) -> str | None:
    """Why the switch behind ``admin_url`` is not the one at ``target`` (host, port), or None.

    ``health`` is its ``/health`` document; ``listeners`` there lists every bound address. A
    listener on a wildcard address (0.0.0.0, ::) accepts any host; ``addresses`` are what the
    target's host stands for (default: resolved). A switch whose ``/health`` lists no listeners
    (an older one) cannot be checked, and is believed.
    """
    listeners = health.get("listeners") if isinstance(health, Mapping) else None
    if not isinstance(listeners, list) or not listeners:
        return None
    host, port = target
    wanted = set(addresses) if addresses is not None else _addresses(host)
    known = []
    for entry in listeners:
        if not isinstance(entry, Mapping):
            continue
        bound, bound_port = str(entry.get("host", "")), entry.get("port")
        if bound_port == port and (bound in wanted or bound in ("0.0.0.0", "::", "")):
            return None
        known.append(f"[{bound}]:{bound_port}" if ":" in bound else f"{bound}:{bound_port}")
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return (f"the admin API at {admin_url} belongs to a switch listening on {', '.join(known)}, not on {where} "
            "where the terminals ran: give that switch's admin API with --admin URL")


def fetch_postings(admin_url: str, terminals: Iterable[str], *, token: str | None = None,
                   timeout: float = 10.0, target: tuple[str, int] | None = None) -> list[HostPosting]:
    """Every posting the host holds for ``terminals`` (one request per terminal). Blocking.

    With ``target`` (the terminals' host and port), refuses (``AdminUnavailable``) an admin API
    whose switch does not listen there: see ``listener_problem``."""
    base = admin_url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise AdminUnavailable(f"--admin {admin_url!r}: expected an http:// or https:// URL")
    health = _get_json(f"{base}/health", None, min(timeout, 5.0))  # reachable? (open without the token)
    if target is not None and (problem := listener_problem(health, base, target)) is not None:
        raise AdminUnavailable(problem)
    postings: list[HostPosting] = []
    for terminal in terminals:
        query = urllib.parse.urlencode({"terminal": terminal.rstrip(" ")})
        document = _get_json(f"{base}/api/v1/ledger/postings?{query}", token, timeout)
        rows = document.get("postings") if isinstance(document, dict) else None
        if not isinstance(rows, list):
            raise AdminUnavailable(f"{base}/api/v1/ledger/postings answered no postings list: is it an iso-switch?")
        postings.extend(HostPosting.from_json(row) for row in rows)
    return postings


def check_consistency(options: CheckOptions, entries: Mapping[str, Sequence[JournalEntry]],
                      window: tuple[float, float], *, journalled: Iterable[tuple[str, str, str]] = (),
                      exponent: int = 2) -> ConsistencyResult:
    """Fetch the host's postings and compare; a host that cannot be asked gives a "skipped" result."""
    if options.admin_url is None:
        return ConsistencyResult("skipped", reason="--no-check")
    try:
        postings = fetch_postings(options.admin_url, entries, token=options.token, timeout=options.timeout,
                                  target=options.target)
    except AdminUnavailable as exc:
        return ConsistencyResult("skipped", reason=str(exc))
    result = compare_views(entries, postings, window, journalled=journalled, exponent=exponent)
    journalled_moves = any(entry.money_moved for journal in entries.values() for entry in journal)
    if not postings and journalled_moves:
        hint = (f"the host at {options.admin_url} has no posting at all for these terminals: is it the admin "
                "API of the switch the terminals talked to?")
        result = dataclasses.replace(result, hint=hint)
    return result
