"""Codec overhead benchmark: our ``Codec`` against raw pyiso8583 on the same spec, same message.

The codec is meant to be a thin layer (validation + the ``Message`` model) over pyiso8583, so the
number that matters is the ratio of our time to pyiso8583's time on identical work, measured in the
same process and interleaved round by round so that machine noise hits both sides alike. The best
round of each side is compared (the least disturbed measurement); the median is shown alongside.

    python scripts/bench_codec.py [--dialect NAME] [--seconds S] [--dialect-path DIR]

Exit status 1 when an overhead ratio exceeds ``--target`` (default 1.2), so CI can run it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import iso8583

from switch.codec import Codec, Dialect, DialectRegistry, FieldDef, Message

# A typical card-present 0200 purchase; values are fitted to each dialect's field sizes.
PURCHASE_FIELDS: dict[int, str] = {
    2: "4761739001010010",
    3: "000000",
    4: "000000012500",
    7: "1122031530",
    11: "000123",
    12: "031530",
    13: "1122",
    14: "2712",
    22: "051",
    25: "00",
    35: "4761739001010010=27122011143804400000",
    41: "TERM0001",
    42: "MERCHANT0000001",
    49: "840",
    52: "0123456789ABCDEF",
}
ROUNDS = 11


def fit_value(value: str, fdef: FieldDef) -> str:
    """Adapt a sample value to the dialect's size and numeric wire form for that field."""
    if fdef.type == "z" and fdef.wire_numeric:
        value = value.replace("=", "D")
    if fdef.type == "b":
        value = (value * (fdef.max * 2 // len(value) + 1))[: fdef.max * 2]
        return value
    if not fdef.fixed:
        return value[: fdef.max]
    if fdef.type in ("n", "z"):
        return value[: fdef.max].rjust(fdef.max, "0")
    return value[: fdef.max].ljust(fdef.max)


def purchase(dialect: Dialect) -> tuple[Message, list[int]]:
    """The sample purchase in ``dialect`` and the sample fields the dialect does not define."""
    fields = {n: fit_value(v, dialect.fields[n]) for n, v in PURCHASE_FIELDS.items() if n in dialect.fields}
    header_spec = dialect.spec["h"]
    header = "0" * (2 * header_spec["max_len"] if header_spec["data_enc"] == "b" else header_spec["max_len"])
    missing = [n for n in PURCHASE_FIELDS if n not in dialect.fields]
    return Message("0200", fields, header), missing


@dataclass
class Contender:
    label: str
    run: Callable[[], object]
    times: list[float]  # seconds per operation, one entry per round


def time_per_op(fn: Callable[[], object], iterations: int) -> float:
    start = time.perf_counter()
    for _ in range(iterations):
        fn()
    return (time.perf_counter() - start) / iterations


def calibrate(fn: Callable[[], object], budget: float) -> int:
    """Iterations of ``fn`` that take about ``budget`` seconds (at least 100)."""
    per_op = time_per_op(fn, 200)
    return max(100, int(budget / per_op))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialect", default="iso87-binary", help="dialect name (default iso87-binary)")
    parser.add_argument("--dialect-path", action="append", default=[], help="extra dialect directory")
    parser.add_argument("--seconds", type=float, default=10.0, help="total measuring time (default 10, max 25)")
    parser.add_argument("--target", type=float, default=1.2, help="largest acceptable ours/raw time ratio")
    args = parser.parse_args(argv)
    seconds = min(max(args.seconds, 0.5), 25.0)

    dialect = DialectRegistry(args.dialect_path).load(args.dialect)
    codec = Codec(dialect)
    message, missing = purchase(dialect)
    spec = dialect.spec
    raw_doc: dict[str, str] = {str(n): v for n, v in message.fields.items()}
    raw_doc["t"] = message.mti
    if dialect.header_length:
        raw_doc["h"] = message.header
    wire = codec.encode(message)
    raw_wire, _ = iso8583.encode(dict(raw_doc), spec)
    if bytes(raw_wire) != wire:
        print("error: our encoding differs from pyiso8583's for the same message", file=sys.stderr)
        return 2
    if codec.decode(wire) != message:
        print("error: decode(encode(message)) != message", file=sys.stderr)
        return 2

    contenders = [
        Contender("encode raw", lambda: iso8583.encode(raw_doc, spec), []),
        Contender("encode ours", lambda: codec.encode(message), []),
        Contender("decode raw", lambda: iso8583.decode(wire, spec), []),
        Contender("decode ours", lambda: codec.decode(wire), []),
    ]
    budget = seconds / (ROUNDS * len(contenders))
    iterations = {c.label: calibrate(c.run, budget) for c in contenders}
    for _ in range(ROUNDS):
        for contender in contenders:
            contender.times.append(time_per_op(contender.run, iterations[contender.label]))

    print(f"dialect {dialect.name}: 0200 purchase, {len(message.fields)} fields, {len(wire)} bytes, "
          f"{ROUNDS} interleaved rounds")
    if missing:
        print(f"  (dialect does not define fields {', '.join(map(str, missing))}; left out)")
    for contender in contenders:
        best, median = min(contender.times), statistics.median(contender.times)
        print(f"  {contender.label:<12} {1 / best:>10,.0f} msg/s best  {1 / median:>10,.0f} msg/s median")
    failed = False
    for op in ("encode", "decode"):
        raw = next(c for c in contenders if c.label == f"{op} raw")
        ours = next(c for c in contenders if c.label == f"{op} ours")
        ratio = min(ours.times) / min(raw.times)
        median_ratio = statistics.median(ours.times) / statistics.median(raw.times)
        verdict = "ok" if ratio <= args.target else f"ABOVE TARGET {args.target}x"
        print(f"  {op} overhead ours/raw: {ratio:.3f}x best, {median_ratio:.3f}x median  {verdict}")
        failed |= ratio > args.target
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
