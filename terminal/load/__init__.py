"""``iso-terminal load``: many careful terminals on one Trio loop, their accounting, and the check.

N emulated terminals run at once, each one a real ``TerminalPolicy`` over its own ``TerminalStore``
driven by a ``TerminalClient`` — so every terminal rule holds under load: sign-on first, response
timeouts, stored reversals sent before the next transaction, late replies discarded, settlement with
upload on 95. The runner only decides *what* to ask for (a seeded random mix of operations) and
*when* (closed loop, or an open-loop global rate limit); everything else is the policy's business.

Pieces, and why they are apart:

* ``LoadStats`` — pure accounting over explicit timestamps (seconds since the run started), so the
  numbers are unit-tested on a virtual clock. Percentiles are **exact, nearest-rank** on the sorted
  samples: for p in (0, 100], the value at rank ``ceil(p/100 * n)`` (1-based) — always a latency
  that was actually observed, never an interpolation, and p100 is the maximum. Counts add up by
  construction: ``started = finished + in_flight`` and ``finished`` is the sum of the outcome kinds
  (``check_totals`` verifies every such identity).
* ``TokenBucket`` — pure rate limiting: ``--rate R/s`` is one bucket shared by all terminals
  (open loop: transactions are started at R/s whatever the host's latency, as long as a terminal
  is free); without it each terminal starts its next transaction as soon as the last one ended.
* ``LoadRunner`` — the Trio shell. Its stores commit without fsync (``deferred_sync``) and a
  ``GroupSyncer`` syncs each one before its terminal's next request leaves, many terminals per
  thread hop and their fdatasyncs in parallel; the policy's calls run inline (no thread per
  call). Latency is measured around ``run_command``: the time until the operation had its
  outcome, *including* anything the policy had to send first (a sign-on, a stored reversal),
  because that is what the person at the till waits for. When the run ends (count reached or
  duration over) no new transaction starts; the ones in flight finish under the terminal's own
  timeouts. Then every terminal drains what it owes (reversals, advices) and, with
  ``--settle``, settles its batch.
* ``compare_views`` — the consistency check, pure: every journal entry of the run against the host's
  posting for the same (terminal, STAN, field 7). Money moved is compared, not existence: a request
  the host never saw and the terminal reversed is consistent; an approval the host never booked is
  not. Undecided entries (the terminal itself cannot know: a reversal the host refused, or one
  still owed because the drain failed) are listed apart, never silently counted as consistent.
  ``fetch_postings`` reads the host side over the admin API (``/api/v1/ledger/postings``).

Scoping, so an earlier run with the same terminal ids never pollutes this one: terminal entries are
those created during this run; a host posting with no entry of this run is flagged "host only" when
it falls within the run (its field 7, set by our own terminals' clock; for CUP, which has no field 7,
the host's receive time, with ``CUP_CLOCK_SLACK``) and no store has ever journalled its key. The
CLI keeps the stores where the single-terminal commands keep theirs, so STANs and batches continue
across runs as on real terminals; a fresh store per run would reuse STANs, which a CUP host rightly
answers 94 (without field 7 nothing tells the two transactions apart).

Modules: ``options`` (constants, parsing the command line's values, ``LoadConfig``), ``stats``
(``LoadStats``, ``Progress``), ``runner`` (``TokenBucket``, ``LoadRunner``, ``LoadResult``),
``syncer`` (``GroupSyncer``), ``consistency`` (``compare_views``, ``fetch_postings``,
``check_consistency``), ``progress`` (the
plain and live displays), ``workers`` (``--workers N``: the run over N processes, merged),
``execution`` (``execute``: the whole command; ``exit_status``). This package re-exports their
public names.
"""

from __future__ import annotations

from terminal.load.consistency import (
    AdminUnavailable,
    CheckOptions,
    ConsistencyResult,
    HostPosting,
    Mismatch,
    check_consistency,
    compare_views,
    fetch_postings,
    field7_time,
    run_window,
)
from terminal.load.execution import execute, exit_status
from terminal.load.options import (
    CUP_CLOCK_SLACK,
    DEFAULT_ADMIN_URL,
    DEFAULT_MIX,
    ERROR_KINDS,
    EXIT_CHECK_REQUIRED,
    EXIT_HOST_NOT_REACHED,
    EXIT_INCONSISTENT,
    EXIT_INTERRUPTED,
    MEMORY_STORES,
    OPERATIONS,
    PERCENTILES,
    LoadConfig,
    LoadError,
    derive_terminal_ids,
    parse_load_duration,
    parse_mix,
    parse_rate,
    store_file_name,
)
from terminal.load.progress import LiveProgress, PlainProgress, progress_line
from terminal.load.runner import LoadResult, LoadRunner, TokenBucket
from terminal.load.stats import TIMELINE_RESOLUTION, TIMELINE_WIDTHS, LoadStats, Progress, is_error, nearest_rank

__all__ = [
    "CUP_CLOCK_SLACK",
    "DEFAULT_ADMIN_URL",
    "DEFAULT_MIX",
    "ERROR_KINDS",
    "EXIT_CHECK_REQUIRED",
    "EXIT_HOST_NOT_REACHED",
    "EXIT_INCONSISTENT",
    "EXIT_INTERRUPTED",
    "MEMORY_STORES",
    "OPERATIONS",
    "PERCENTILES",
    "TIMELINE_RESOLUTION",
    "TIMELINE_WIDTHS",
    "AdminUnavailable",
    "CheckOptions",
    "ConsistencyResult",
    "HostPosting",
    "LiveProgress",
    "LoadConfig",
    "LoadError",
    "LoadResult",
    "LoadRunner",
    "LoadStats",
    "Mismatch",
    "PlainProgress",
    "Progress",
    "TokenBucket",
    "check_consistency",
    "compare_views",
    "derive_terminal_ids",
    "execute",
    "exit_status",
    "fetch_postings",
    "field7_time",
    "is_error",
    "nearest_rank",
    "parse_load_duration",
    "parse_mix",
    "parse_rate",
    "progress_line",
    "run_window",
    "store_file_name",
]
