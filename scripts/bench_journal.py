"""Microseconds per message the journal costs the switch: the hot path and the writer thread together.

The switch journals every frame twice (the 0200 in, the 0210 out). The hot path (``record_in`` /
``record_out``) and the writer (masking, hex, the JSON line on the event loop; the write in a
thread) all hold the GIL, so all are taken from the event loop's time: this script times them
together per request/response pair and per frame (issue 13's goal: <= 5 us per message). In the same run, as a
baseline of what "formatting JSON" costs on this machine right now, it times one bare
``json.dumps`` of the same entry dict (the line the writer produces, already built).

Figures are the best of ``--rounds`` runs (the machine is shared: the minimum is the least noisy
estimate of the cost itself), with the garbage collector off as ``timeit`` does. The file goes to a
temporary directory. Run:

    python scripts/bench_journal.py [--count 5000] [--rounds 9] [--dialect iso87-binary] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from switch.codec import Codec, Message, load_dialect
from switch.journal import Journal

APPROVED_CARD = "4761739001010010"
F7 = "0601120000"


def exchanges(codec: Codec, count: int) -> list[tuple[bytes, Message, bytes, Message]]:
    """``count`` (request raw, request, response raw, response) pairs as the server journals them."""
    pairs = []
    for index in range(count):
        fields = {2: APPROVED_CARD, 3: "000000", 4: f"{1000 + index % 5000:012d}", 7: F7,
                  11: f"{index % 1000 + 1:06d}", 12: F7[4:], 13: F7[:4], 14: "3012", 22: "051", 25: "00",
                  41: f"B{index // 1000:07d}", 42: "MERCHANT0000001", 49: "840"}
        raw = codec.encode(Message("0200", fields))
        request = codec.decode(raw)
        reply_fields = {key: value for key, value in request.fields.items()
                        if key in (2, 3, 4, 7, 11, 12, 13, 41, 42, 49)}
        reply_fields.update({37: f"{index:012d}", 38: "123456", 39: "00"})
        reply = Message("0210", reply_fields)
        pairs.append((raw, request, codec.encode(reply), reply))
    return pairs


def time_journal(codec: Codec, pairs: list[tuple[bytes, Message, bytes, Message]], directory: Path,
                 batch: int) -> tuple[float, float]:
    """(hot path, writer) seconds per request/response pair: record both frames, then write them in
    batches of ``batch`` pairs as ``Journal.run`` would (claim, format, write; here all in this thread)."""
    path = directory / "journal.jsonl"
    path.unlink(missing_ok=True)
    journal = Journal(codec, path=path, max_bytes=1 << 40)
    record_in, record_out = journal.record_in, journal.record_out
    hot = writer = 0.0
    for offset in range(0, len(pairs), batch):
        start = time.perf_counter()
        for raw, request, raw_out, reply in pairs[offset:offset + batch]:
            seq = record_in(connection=1, peer="127.0.0.1:50000", raw=raw, message=request)
            record_out(connection=1, peer="127.0.0.1:50000", raw=raw_out, message=reply, request_seq=seq)
        middle = time.perf_counter()
        journal._write_batch(journal._take_batch())  # what the writer thread runs, here in this thread
        writer += time.perf_counter() - middle
        hot += middle - start
    journal.close()
    lines = path.read_text().count("\n")
    if lines != 2 * len(pairs):
        raise RuntimeError(f"{lines} lines written for {2 * len(pairs)} frames: the timing would be meaningless")
    return hot / len(pairs), writer / len(pairs)


def time_json_baseline(documents: list[dict[str, object]]) -> float:
    """Seconds per message for a bare ``json.dumps`` of the two entry dicts (no masking, no hex)."""
    dumps = json.dumps
    start = time.perf_counter()
    for document in documents:
        dumps(document, separators=(",", ":"))
    return (time.perf_counter() - start) * 2 / len(documents)


def best_of(rounds: int, runs: dict[str, Callable[[], float]]) -> dict[str, float]:
    """The fastest of ``rounds`` runs of each, taking turns within a round, collector off."""
    timings: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            gc.collect()
            gc.disable()
            try:
                timings[name].append(run())
            finally:
                gc.enable()
    return {name: min(values) for name, values in timings.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=5_000, help="request/response pairs per round")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--batch", type=int, default=200, help="messages per writer batch")
    parser.add_argument("--dialect", default="iso87-binary")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.count < 1 or args.rounds < 1 or args.batch < 1:
        parser.error("--count, --rounds and --batch must be >= 1")
    try:
        codec = Codec(load_dialect(args.dialect))
    except (OSError, ValueError) as exc:
        parser.exit(2, f"error: dialect {args.dialect!r}: {exc}\n")
    pairs = exchanges(codec, args.count)

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        # the documents the journal writes, built once, for the json.dumps baseline
        sample = Journal(codec)
        for raw, request, raw_out, reply in pairs:
            seq = sample.record_in(connection=1, peer="127.0.0.1:50000", raw=raw, message=request)
            sample.record_out(connection=1, peer="127.0.0.1:50000", raw=raw_out, message=reply, request_seq=seq)
        sample_entries = sample.query(limit=2 * len(pairs))
        documents = [entry.as_dict() for entry in sample_entries[::2]]
        measured: dict[str, tuple[float, float]] = {}

        def journal_run() -> float:
            hot, writer = time_journal(codec, pairs, directory, args.batch)
            best = measured.get("journal")
            if best is None or hot + writer < sum(best):
                measured["journal"] = (hot, writer)
            return hot + writer

        results = best_of(args.rounds, {"journal_total_us": journal_run,
                                        "json_dumps_us": lambda: time_json_baseline(documents)})
    hot, writer = measured["journal"]
    figures = {"hot_path_us": hot * 1e6, "writer_us": writer * 1e6,
               "journal_total_us": results["journal_total_us"] * 1e6,
               "per_frame_us": results["journal_total_us"] * 1e6 / 2,
               "json_dumps_baseline_us": results["json_dumps_us"] * 1e6}
    labels = {
        "hot_path_us": "hot path (record_in + record_out)",
        "writer_us": "writer (mask, hex, line, write)",
        "journal_total_us": "journal total per pair",
        "per_frame_us": "journal total per frame (goal <= 5 us)",
        "json_dumps_baseline_us": "baseline: json.dumps of the 2 entry dicts",
    }
    print(f"per request/response pair, {args.dialect}, best of {args.rounds}:")
    for name, label in labels.items():
        print(f"  {label:<44} {figures[name]:7.2f} us")
    ratio = figures["journal_total_us"] / figures["json_dumps_baseline_us"]
    print(f"  {'journal total / json.dumps baseline':<44} {ratio:7.2f}")
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
