"""The terminal's idea of the time: its own clock, corrected by what the host said at sign-on.

A POS terminal's clock drifts, and a host may refuse requests whose time is off its own. The 0810
sign-on reply carries the host's local time (12 hhmmss, 13 MMDD; CUP too); the terminal keeps the
difference as an offset (durable: the clock is as wrong after a restart) and stamps 12/13 — and
field 7, in UTC — with its own clock plus that offset. Pure: ``now`` is always passed in.

The offset is measured against the terminal's local time (UTC + ``utc_offset_minutes``), so it
assumes the profile's zone is the host's; a whole-hours offset usually means the zone is wrong.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

__all__ = ["SyncedClock", "host_offset"]


@dataclass(frozen=True)
class SyncedClock:
    """``utc_offset_minutes``: the terminal's zone; ``offset``: seconds to add to its clock (host − terminal)."""

    utc_offset_minutes: int = 0
    offset: float = 0.0

    def utc(self, now: float) -> datetime:
        return datetime.fromtimestamp(now + self.offset, UTC)

    def local(self, now: float) -> datetime:
        """Local time as the host sees it (naive values, tz-stamped UTC for arithmetic)."""
        return self.utc(now) + timedelta(minutes=self.utc_offset_minutes)

    def local_date(self, now: float) -> date:
        """``local(now).date()``: the day cards are checked against, made once per second."""
        second = _whole_second(now + self.offset)
        if second is None:
            return self.local(now).date()
        return _local_date(second + 60 * self.utc_offset_minutes)

    def field7(self, now: float) -> str:
        second = _whole_second(now + self.offset)
        if second is None:
            return self.utc(now).strftime("%m%d%H%M%S")
        return _field7(second)

    def fields_12_13(self, now: float) -> tuple[str, str]:
        second = _whole_second(now + self.offset)
        if second is None:
            local = self.local(now)
            return local.strftime("%H%M%S"), local.strftime("%m%d")
        return _fields_12_13(second + 60 * self.utc_offset_minutes)


# A load run stamps thousands of requests per second with the same few strings: they are formatted
# once per second (strftime was a visible share of a load terminal's CPU), from the whole second
# ``datetime.fromtimestamp`` would give (it rounds to microseconds, half to even, then truncates).


def _whole_second(unix_seconds: float) -> int | None:
    """The second ``datetime.fromtimestamp(unix_seconds)`` falls in; None: not cached (not finite, < 0)."""
    if not (unix_seconds >= 0 and math.isfinite(unix_seconds)):
        return None
    second = math.floor(unix_seconds)
    if round((unix_seconds - second) * 1e6) >= 1_000_000:  # the exact fraction, rounded as datetime does
        second += 1
    return second


@functools.lru_cache(maxsize=16)
def _field7(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%m%d%H%M%S")


@functools.lru_cache(maxsize=16)
def _fields_12_13(local_second: int) -> tuple[str, str]:
    local = datetime.fromtimestamp(0, UTC) + timedelta(seconds=local_second)
    return local.strftime("%H%M%S"), local.strftime("%m%d")


@functools.lru_cache(maxsize=16)
def _local_date(local_second: int) -> date:
    return (datetime.fromtimestamp(0, UTC) + timedelta(seconds=local_second)).date()


def host_offset(f12: object, f13: object, now: float, utc_offset_minutes: int) -> float | None:
    """Seconds from the terminal's (unsynced) local time to the host's local time given as 12/13, or
    None when the fields are absent or not a valid time. The year is the one (last, this, next)
    nearest the terminal's date, so a sign-on across New Year is read right."""
    if not (isinstance(f12, str) and isinstance(f13, str) and len(f12) == 6 and len(f13) == 4
            and f12.isascii() and f12.isdigit() and f13.isascii() and f13.isdigit()):
        return None
    ours = SyncedClock(utc_offset_minutes).local(now).replace(microsecond=0)  # 12 has whole seconds
    candidates = []
    for year in (ours.year - 1, ours.year, ours.year + 1):
        try:
            candidates.append(datetime(year, int(f13[:2]), int(f13[2:]), int(f12[:2]), int(f12[2:4]),
                                       int(f12[4:]), tzinfo=UTC))
        except ValueError:  # 30 February, 25 o'clock, 29 February of a common year
            continue
    if not candidates:
        return None
    theirs = min(candidates, key=lambda c: abs((c - ours).total_seconds()))
    return (theirs - ours).total_seconds()
