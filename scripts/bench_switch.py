"""Authorizations per second: the switch against a bare Trio+pyiso8583 floor, in one interleaved run.

Every server runs as a subprocess on 127.0.0.1 and is driven by the same client in this process:
``--connections`` connections, each keeping ``--window`` requests in flight. The floor server only
decodes the 0200 and encodes a 0210 — the least any ISO 8583 host in Python must do — so the ratio
shows what the ledger, the host rules, the group commit and the journal cost. Measured, in turn:

* ``floor``: the bare server;
* ``default``: the switch as ``iso-switch serve`` runs it (durable SQLite ledger, file journal);
* ``journal none``: the same without the journal file (the in-memory journal stays);
* ``ledger :memory:``: no file at all (ledger in memory, no journal file): the upper bound.

The machine may be shared, so the variants take turns for ``--rounds`` rounds (the order rotating
each round) and the report gives, per variant, the median and the best of its rounds, and the
ratio to the floor of each (medians over medians, best over best). It also gives the ratio of the
server's CPU time per request (the least of the rounds; floor over variant), which other load on
the machine disturbs far less than the rates. Run:

    python scripts/bench_switch.py [--seconds 6] [--rounds 3] [--connections 50] [--window 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import iso8583
import trio
from benchkit import start_server
from iso8583.specs import default as SPEC

FLOOR_SERVER = r'''
import sys, trio, iso8583
from iso8583.specs import default as SPEC

async def handle(stream):
    buf = bytearray()
    try:
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            buf += data
            out = bytearray()
            while len(buf) >= 2:
                size = int.from_bytes(buf[:2], "big")
                if len(buf) < 2 + size:
                    break
                doc, _ = iso8583.decode(bytes(buf[2:2 + size]), SPEC)
                del buf[:2 + size]
                echo = ("2", "3", "4", "7", "11", "12", "13", "41", "42", "49")
                reply = {k: v for k, v in doc.items() if k in echo}
                reply.update(t="0210", **{"37": "000000000001", "38": "123456", "39": "00"})
                raw, _ = iso8583.encode(reply, SPEC)
                out += len(raw).to_bytes(2, "big") + raw
            if out:
                await stream.send_all(bytes(out))
    except trio.BrokenResourceError:
        pass

async def main(port):
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    print("ready", flush=True)
    await trio.serve_listeners(handle, listeners)

trio.run(main, int(sys.argv[1]))
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def purchase(terminal: str, stan: int, f7: str) -> bytes:
    doc = {"t": "0200", "2": "4761739001010010", "3": "000000", "4": "000000001234", "7": f7,
           "11": f"{stan:06d}", "12": f7[4:], "13": f7[:4], "14": "3012", "22": "051", "25": "00",
           "41": terminal, "42": "MERCHANT0000001", "49": "840"}
    raw, _ = iso8583.encode(doc, SPEC)
    return len(raw).to_bytes(2, "big") + bytes(raw)


async def drive(port: int, seconds: float, connections: int, window: int, f7: str) -> dict[str, float]:
    """Closed-loop load: each connection keeps ``window`` requests in flight until time is up.

    The client must cost less than the server, or it measures itself: requests are encoded before
    the clock starts and replies are only split into frames while timed, then decoded afterwards
    to count approvals.
    """
    per_connection = max(2000, int(seconds * 12_000 / connections))
    requests = [[purchase(f"B{index:07d}", stan, f7) for stan in range(1, per_connection + 1)]
                for index in range(connections)]
    replies: list[bytes] = []
    latencies: list[float] = []
    deadline = trio.current_time() + seconds

    async def one_connection(index: int) -> None:
        queue = requests[index]
        sent = 0
        sent_at: list[float] = []
        buf = bytearray()

        def take(count: int) -> tuple[bytes, int]:
            nonlocal sent
            count = min(count, len(queue) - sent)
            now = time.perf_counter()
            sent_at.extend([now] * count)
            sent += count
            return b"".join(queue[sent - count:sent]), count

        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            first, outstanding = take(window)
            await stream.send_all(first)
            answered = 0
            while outstanding:
                data = await stream.receive_some(65536)
                if not data:
                    raise RuntimeError("server closed the connection")
                buf += data
                count = 0
                while len(buf) >= 2 and len(buf) >= 2 + (size := int.from_bytes(buf[:2], "big")):
                    replies.append(bytes(buf[2:2 + size]))
                    del buf[:2 + size]
                    count += 1
                now = time.perf_counter()
                latencies.extend(now - t for t in sent_at[answered:answered + count])
                answered += count
                outstanding -= count
                if trio.current_time() < deadline and count and sent < len(queue):
                    more, added = take(count)
                    outstanding += added
                    await stream.send_all(more)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for index in range(connections):
            nursery.start_soon(one_connection, index)
    elapsed = time.perf_counter() - start
    approved = sum(iso8583.decode(reply, SPEC)[0].get("39") == "00" for reply in replies)
    latencies.sort()
    return {"tps": len(replies) / elapsed, "requests": len(replies), "approved": approved,
            "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else 0.0,
            "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else 0.0}


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` (every thread), from /proc; None where there is none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(argv: list[str], port: int, ready: str, args: argparse.Namespace, cwd: str,
            pythonpath: str | None = None) -> dict[str, float]:
    """One timed run; adds the server's CPU time per request (``cpu_us``), which a busy machine
    disturbs far less than the rate: when the server is the bottleneck, the ratio of two servers'
    CPU per request is the ratio of the rates they could reach.

    The server runs in ``cwd`` (a scratch directory): started in a checkout, ``python -m switch``
    would import that checkout's package whatever ``pythonpath`` (``--tree``) says."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    proc = start_server(argv, ready, env, cwd=cwd)
    try:
        f7 = datetime.now(UTC).strftime("%m%d%H%M%S")
        before = cpu_seconds(proc.pid)
        result = trio.run(drive, port, args.seconds, args.connections, args.window, f7)
        after = cpu_seconds(proc.pid)
        if before is not None and after is not None and result["requests"]:
            result["cpu_us"] = (after - before) * 1e6 / result["requests"]
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--window", type=int, default=4, help="requests in flight per connection")
    parser.add_argument("--scenario", default=None, help="also measure the switch with this scenario loaded")
    parser.add_argument("--process-writer", action="store_true",
                        help="also measure the default with --journal-writer process (lines formatted in a "
                             "writer process: less CPU in the switch, more in all)")
    parser.add_argument("--tree", default=None, metavar="DIR",
                        help="run the switch from this source tree instead of the installed package")
    parser.add_argument("--baseline-tree", default=None, metavar="DIR",
                        help="also measure default and --journal none from this source tree (e.g. an earlier "
                             "commit unpacked with git archive), in the same interleaved run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    for option, tree in (("--tree", args.tree), ("--baseline-tree", args.baseline_tree)):
        if tree is not None and not (Path(tree) / "switch" / "__init__.py").is_file():
            parser.error(f"{option} {tree}: no switch package there")
    # the servers run in a scratch directory: a relative tree must not change meaning there
    args.tree = str(Path(args.tree).resolve()) if args.tree else None
    args.baseline_tree = str(Path(args.baseline_tree).resolve()) if args.baseline_tree else None
    if args.seconds <= 0 or args.rounds < 1 or args.connections < 1 or args.window < 1:
        parser.error("--seconds must be > 0; --rounds, --connections and --window >= 1")

    variants: list[tuple[str, str, list[str] | None]] = [
        ("floor", "floor (trio+pyiso8583)", None),
        ("default", "switch default (SQLite + file journal)", []),
        ("journal_none", "switch --journal none", ["--journal", "none"]),
        ("memory", "switch --ledger :memory:", ["--ledger", ":memory:"]),
    ]
    if args.scenario:
        variants.append(("scenario", f"switch + {args.scenario}", ["--scenario", args.scenario]))
    if args.process_writer:
        variants.append(("process_writer", "switch --journal-writer process", ["--journal-writer", "process"]))
    if args.baseline_tree:
        variants += [("baseline_default", "baseline tree: default", []),
                     ("baseline_journal_none", "baseline tree: --journal none", ["--journal", "none"])]
    runs: dict[str, list[dict[str, float]]] = {key: [] for key, _, _ in variants}
    labels = {key: label for key, label, _ in variants}
    with tempfile.TemporaryDirectory() as tmp:
        floor_script = Path(tmp) / "floor.py"
        floor_script.write_text(FLOOR_SERVER)
        for round_number in range(args.rounds):
            shift = round_number % len(variants)
            for key, label, extra in variants[shift:] + variants[:shift]:
                port = free_port()
                if extra is None:
                    argv = [sys.executable, str(floor_script), str(port)]
                    ready = "ready"
                else:
                    ledger = [] if "--ledger" in extra else [
                        "--ledger", str(Path(tmp) / f"{key}-{round_number}" / "ledger.sqlite")]
                    argv = [sys.executable, "-m", "switch", "serve", "--port", str(port), *ledger,
                            "--no-signon", "--no-admin", *extra]
                    ready = "listening"
                tree = args.baseline_tree if key.startswith("baseline_") else args.tree
                result = measure(argv, port, ready, args, tmp, tree)
                runs[key].append(result)
                cpu = f"  {result['cpu_us']:6.1f} us CPU/req" if "cpu_us" in result else ""
                print(f"round {round_number + 1}: {label:<40} {result['tps']:>8.0f} auth/s{cpu}  "
                      f"p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms  "
                      f"({result['requests']:.0f} requests, {result['approved']:.0f} approved)", flush=True)

    summary: dict[str, dict[str, float]] = {}
    for key, results in runs.items():
        rates = sorted(result["tps"] for result in results)
        summary[key] = {"median_tps": statistics.median(rates), "best_tps": rates[-1],
                        "p50_ms": statistics.median(result["p50_ms"] for result in results),
                        "p99_ms": statistics.median(result["p99_ms"] for result in results)}
        per_request = [result["cpu_us"] for result in results if "cpu_us" in result]
        if per_request:
            summary[key]["cpu_us"] = min(per_request)
    floor = summary["floor"]
    goals = {"default": 0.8, "journal_none": 1.0}
    print(f"\n{'auth/s':<40} {'median':>8} {'best':>8}   ratio to floor: median / best / CPU per request")
    for key, figures in summary.items():
        figures["ratio_median"] = figures["median_tps"] / floor["median_tps"]
        figures["ratio_best"] = figures["best_tps"] / floor["best_tps"]
        cpu_ratio = ""
        if "cpu_us" in figures and "cpu_us" in floor:
            figures["ratio_cpu"] = floor["cpu_us"] / figures["cpu_us"]
            cpu_ratio = f" / {figures['ratio_cpu']:.2f} ({figures['cpu_us']:.0f} us)"
        goal = f"  (goal >= {goals[key]:.1f})" if key in goals else ""
        print(f"{labels[key]:<40} {figures['median_tps']:>8.0f} {figures['best_tps']:>8.0f}   "
              f"{figures['ratio_median']:.2f} / {figures['ratio_best']:.2f}{cpu_ratio}{goal}")
    if args.json:
        print(json.dumps({"rounds": runs, "summary": summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
