"""Authorizations per second: the switch (durable SQLite ledger) against a bare Trio+pyiso8583 floor.

Both servers run as subprocesses on 127.0.0.1 and are driven by the same client in this process:
``--connections`` connections, each keeping ``--window`` requests in flight. The floor server only
decodes the 0200 and encodes a 0210 — the least any ISO 8583 host in Python must do — so the ratio
shows what the ledger, the host rules and the group commit cost. Run:

    python scripts/bench_switch.py [--seconds 10] [--connections 50] [--window 4]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import iso8583
import trio
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


def start_server(argv: list[str], port: int, ready: str, env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 30
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if ready in line:
            return proc
    proc.kill()
    raise RuntimeError(f"server did not start: {argv}")


def measure(name: str, argv: list[str], port: int, ready: str,
            args: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = start_server(argv, port, ready, env)
    try:
        f7 = datetime.now(UTC).strftime("%m%d%H%M%S")
        result = trio.run(drive, port, args.seconds, args.connections, args.window, f7)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(f"{name:<28} {result['tps']:>9.0f} auth/s  p50 {result['p50_ms']:6.2f} ms  "
          f"p99 {result['p99_ms']:6.2f} ms  "
          f"({result['requests']:.0f} requests, {result['approved']:.0f} approved)")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--window", type=int, default=4, help="requests in flight per connection")
    parser.add_argument("--scenario", default=None, help="also measure the switch with this scenario loaded")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        floor_script = Path(tmp) / "floor.py"
        floor_script.write_text(FLOOR_SERVER)
        port = free_port()
        results["floor"] = measure("floor (trio+pyiso8583)", [sys.executable, str(floor_script), str(port)],
                                   port, "ready", args)
        variants = [("switch", "switch (SQLite ledger)", ["--journal", "none"]),
                    ("switch+journal", "switch + file journal", [])]
        if args.scenario:
            variants.append(("scenario", f"switch + {args.scenario}",
                             ["--journal", "none", "--scenario", args.scenario]))
        for key, label, extra in variants:
            port = free_port()
            ledger = Path(tmp) / f"{key}.sqlite"
            argv = [sys.executable, "-m", "switch", "serve", "--port", str(port), "--ledger", str(ledger),
                    "--no-signon", "--no-admin", *extra]
            results[key] = measure(label, argv, port, "listening", args)

    for key, label, _ in variants:
        ratio = results[key]["tps"] / results["floor"]["tps"]
        target = "  (target >= 0.80)" if key == "switch" else ""
        print(f"ratio {label} / floor = {ratio:.2f}{target}")
    ratio = results["switch"]["tps"] / results["floor"]["tps"]
    if args.json:
        print(json.dumps({"results": results, "ratio": ratio}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
