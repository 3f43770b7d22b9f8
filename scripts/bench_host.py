"""Microseconds per operation on the switch's decision path, without sockets: Host.handle, rules, flush.

``bench_switch.py`` says how the whole switch compares with a bare server; this script says where the
host's share of that time goes, so a change to ``switch.host``, ``switch.rules`` or ``switch.ledger``
can be measured on its own. It decodes a batch of distinct 0200 purchases with ``switch.codec``
(untimed; all sent in the same second, so they share field 7 as a busy terminal population's
requests do), then times, per message:

* ``Host.handle``: the whole decision for an approved 0200, including the ledger append (the
  in-memory indexes and the queued row) and the default test-card rule table, as ``serve`` runs it;
* ``ResponseRules.first_match`` on its own, for a card no test-card rule names (the common case);
* ``Ledger.flush`` per row, in group-commit sized batches: CPU only (``:memory:``) and on a file
  (WAL, synchronous=FULL: includes one fsync per batch, so it depends on the disk).

Each figure is the best of ``--rounds`` runs (the machine is shared: the minimum is the least noisy
estimate of the cost itself), timed with the garbage collector off, as ``timeit`` does, so a
collection triggered by the previous round's garbage is not charged to this one. Run:

    python scripts/bench_host.py [--count 5000] [--rounds 9] [--batch 256] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchkit import best_of

from switch.codec import Codec, Message, load_dialect
from switch.host import Host, HostConfig
from switch.ledger import Ledger
from switch.rules import ResponseRules
from switch.scenario import default_scenario

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
APPROVED_CARD = "4761739001010010"  # in no test-card rule: approved after every rule is tried


def purchases(codec: Codec, count: int) -> list[Message]:
    """``count`` distinct approvable 0200s (one terminal per 1000 STANs), encoded and decoded again
    so the fields are exactly what the server hands the host."""
    f7 = NOW.strftime("%m%d%H%M%S")
    messages = []
    for index in range(count):
        fields = {2: APPROVED_CARD, 3: "000000", 4: f"{1000 + index % 5000:012d}", 7: f7,
                  11: f"{index % 1000 + 1:06d}", 12: f7[4:], 13: f7[:4], 14: "3012", 22: "051", 25: "00",
                  41: f"B{index // 1000:07d}", 42: "MERCHANT0000001", 49: "840"}
        messages.append(codec.decode(codec.encode(Message("0200", fields))))
    return messages


def time_handle(config: HostConfig, messages: list[Message], rules: ResponseRules | None) -> float:
    """Seconds per Host.handle over a fresh in-memory ledger (every message is then approved)."""
    ledger = Ledger.open(":memory:")
    host = Host(config, ledger, rules)
    handle = host.handle
    start = time.perf_counter()
    for message in messages:
        handle(message, NOW)
    elapsed = time.perf_counter() - start
    approved = sum(posting.approved for posting in ledger.postings())
    if approved != len(messages) or host.handle(messages[0], NOW).outcome != "duplicate":
        raise RuntimeError("benchmark messages were not all approved: the timing would be meaningless")
    ledger.close()
    return elapsed / len(messages)


def time_first_match(messages: list[Message], rules: ResponseRules) -> float:
    first_match = rules.first_match
    start = time.perf_counter()
    for message in messages:
        if first_match(message) is not None:
            raise RuntimeError("a benchmark card matched a test-card rule")
    return (time.perf_counter() - start) / len(messages)


def time_flush(config: HostConfig, messages: list[Message], path: str, batch: int) -> float:
    """Seconds per row written by Ledger.flush, flushing every ``batch`` appended rows."""
    ledger = Ledger.open(path)
    host = Host(config, ledger, None)
    elapsed = 0.0
    for offset in range(0, len(messages), batch):
        for message in messages[offset:offset + batch]:
            host.handle(message, NOW)
        start = time.perf_counter()
        ledger.flush()
        elapsed += time.perf_counter() - start
    if ledger.committed_seq != len(messages):
        raise RuntimeError("not every row was flushed")
    ledger.close()
    return elapsed / len(messages)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=5_000, help="distinct 0200s per round")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--batch", type=int, default=256, help="rows per flush (a group commit)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.count < 1 or args.rounds < 1 or args.batch < 1:
        parser.error("--count, --rounds and --batch must be >= 1")

    codec = Codec(load_dialect("iso87-binary"))
    config = HostConfig.for_dialect(codec.dialect, require_signon=False)
    messages = purchases(codec, args.count)
    table = default_scenario().response_rules

    with tempfile.TemporaryDirectory() as tmp:
        files = (str(Path(tmp) / f"ledger-{n}.sqlite") for n in range(args.rounds))
        results = best_of(args.rounds, {
            "handle_us": lambda: time_handle(config, messages, table),
            "handle_no_rules_us": lambda: time_handle(config, messages, None),
            "first_match_us": lambda: time_first_match(messages, table),
            "flush_memory_us_per_row": lambda: time_flush(config, messages, ":memory:", args.batch),
            "flush_file_us_per_row": lambda: time_flush(config, messages, next(files), args.batch),
        })
    results = {name: seconds * 1e6 for name, seconds in results.items()}

    labels = {
        "handle_us": "Host.handle, approved 0200, test-card table",
        "handle_no_rules_us": "Host.handle, approved 0200, no rules",
        "first_match_us": f"first_match, {len(table)} test-card rules, no match",
        "flush_memory_us_per_row": f"Ledger.flush per row, :memory:, {args.batch} rows/flush",
        "flush_file_us_per_row": f"Ledger.flush per row, file + fsync, {args.batch} rows/flush",
    }
    for name, label in labels.items():
        print(f"{label:<58} {results[name]:8.2f} us")
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
