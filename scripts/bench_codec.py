"""Codec benchmark: our ``Codec`` (generated fast path) against raw pyiso8583, same spec, same message.

Three contenders per operation, on a 0200 purchase (decode) and its 0210 answer (encode): raw
pyiso8583 (``iso8583.encode``/``decode`` on the dialect's spec), ``Codec(dialect, fast=False)``
(the pyiso8583 path with our validation, the reference), and ``Codec(dialect)`` (the generated
straight-line functions of switch.codec.compiled, falling back to the reference). They run in the
same process, interleaved round by round so machine noise hits all alike; the best round of each is
compared (the least disturbed measurement), the median shown alongside.

    python scripts/bench_codec.py [--dialect NAME|all] [--seconds S] [--dialect-path DIR]

Exit status 1 when ours/raw exceeds ``--target`` (default 1.2) for any dialect, so CI can run it.
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
RESPONSE_FIELDS: dict[int, str] = {38: "A1B2C3", 39: "00"}  # added to the purchase for the 0210
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


def bench_dialect(dialect: Dialect, seconds: float, target: float) -> bool:
    """Measure one dialect and print its lines; True when ours/raw is within ``target``."""
    codec, reference = Codec(dialect), Codec(dialect, fast=False)
    request, missing = purchase(dialect)
    response = request.copy(mti="0210", **{f"f{n}": fit_value(v, dialect.fields[n])
                                           for n, v in RESPONSE_FIELDS.items() if n in dialect.fields})
    spec = dialect.spec
    raw_doc: dict[str, str] = {str(n): v for n, v in response.fields.items()}
    raw_doc["t"] = response.mti
    if dialect.header_length:
        raw_doc["h"] = response.header
    wire = reference.encode(request)
    raw_wire, _ = iso8583.encode(dict(raw_doc), spec)
    if bytes(raw_wire) != codec.encode(response) or reference.encode(response) != codec.encode(response):
        print("error: our encoding differs from pyiso8583's for the same message", file=sys.stderr)
        return False
    if not codec.decode(wire) == reference.decode(wire) == request:
        print("error: decode(encode(message)) != message", file=sys.stderr)
        return False

    contenders = [
        Contender("encode raw", lambda: iso8583.encode(raw_doc, spec), []),
        Contender("encode ref", lambda: reference.encode(response), []),
        Contender("encode fast", lambda: codec.encode(response), []),
        Contender("decode raw", lambda: iso8583.decode(wire, spec), []),
        Contender("decode ref", lambda: reference.decode(wire), []),
        Contender("decode fast", lambda: codec.decode(wire), []),
    ]
    budget = seconds / (ROUNDS * len(contenders))
    iterations = {c.label: calibrate(c.run, budget) for c in contenders}
    for _ in range(ROUNDS):
        for contender in contenders:
            contender.times.append(time_per_op(contender.run, iterations[contender.label]))

    print(f"dialect {dialect.name}: decode 0200 purchase ({len(request.fields)} fields, {len(wire)} bytes), "
          f"encode 0210 answer ({len(response.fields)} fields), {ROUNDS} interleaved rounds")
    if missing:
        print(f"  (dialect does not define fields {', '.join(map(str, missing))}; left out)")
    for contender in contenders:
        best, median = min(contender.times), statistics.median(contender.times)
        print(f"  {contender.label:<12} {best * 1e6:>7.2f} us best  {median * 1e6:>7.2f} us median"
              f"  {1 / best:>10,.0f} msg/s")
    ok = True
    for op in ("encode", "decode"):
        times = {c.label.split()[1]: c.times for c in contenders if c.label.startswith(op)}
        fast_raw = min(times["fast"]) / min(times["raw"])
        fast_ref = min(times["fast"]) / min(times["ref"])
        median_raw = statistics.median(times["fast"]) / statistics.median(times["raw"])
        verdict = "ok" if fast_raw <= target else f"ABOVE TARGET {target}x"
        print(f"  {op} fast/pyiso8583 {fast_raw:.3f}x best ({1 / fast_raw:.1f}x faster), {median_raw:.3f}x median;"
              f" fast/reference codec {fast_ref:.3f}x  {verdict}")
        ok &= fast_raw <= target
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialect", default="all", help="dialect name, or all (default) for every one found")
    parser.add_argument("--dialect-path", action="append", default=[], help="extra dialect directory")
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring time per dialect (default 10, max 25)")
    parser.add_argument("--target", type=float, default=1.2, help="largest acceptable ours/raw time ratio")
    args = parser.parse_args(argv)
    seconds = min(max(args.seconds, 0.5), 25.0)
    registry = DialectRegistry(args.dialect_path)
    names = registry.names() if args.dialect == "all" else [args.dialect]
    print(f"python {sys.version.split()[0]}, iso8583 {getattr(iso8583, '__version__', '?')}")
    failed = False
    for name in names:
        failed |= not bench_dialect(registry.load(name), seconds, args.target)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
