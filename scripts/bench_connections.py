"""Memory of the switch holding many idle connections: RSS at 0, 1,000 and 5,000 (target < 300 MB at 5,000).

The switch runs as ``python -m switch serve`` in a subprocess (ledger in a temporary directory, no
journal file, idle timeout off); this process opens plain TCP connections to it on 127.0.0.1 and
reads the switch's resident set size (``VmRSS`` in /proc/PID/status). All figures come from the
same run: the baseline is the same process with no connection open, and the switch's own count of
open connections (admin API ``/health``) is awaited before each reading, so every connection is
really being served (reader, writer and idle-watchdog tasks started) when RSS is read.

``--warm`` sends one echo (0800/301) on each connection first, so the figures include whatever a
connection keeps after its first exchange. Linux only (/proc). Run:

    python scripts/bench_connections.py [--steps 1000,5000] [--warm]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import tempfile
import time
import urllib.request
from pathlib import Path

import iso8583
from iso8583.specs import default as SPEC

from switch.testing import SwitchProcess

TARGET_MB = 300.0
TARGET_AT = 5000
STARTUP_TIMEOUT = 30.0
SETTLE_SECONDS = 1.0


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (never above the hard limit); the child inherits it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def open_connections(health_url: str) -> int:
    with urllib.request.urlopen(health_url, timeout=10) as response:
        return int(json.load(response)["connections_open"])


def wait_for_connections(health_url: str, wanted: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if open_connections(health_url) == wanted:
            return
        time.sleep(0.05)
    raise SystemExit(f"the switch reports {open_connections(health_url)} open connections, expected {wanted}")


def echo_frame(stan: int) -> bytes:
    doc = {"t": "0800", "7": time.strftime("%m%d%H%M%S", time.gmtime()), "11": f"{stan % 999999 + 1:06d}",
           "41": "BENCH001", "70": "301"}
    raw, _ = iso8583.encode(doc, SPEC)
    return len(raw).to_bytes(2, "big") + bytes(raw)


def warm(sockets: list[socket.socket], start: int) -> None:
    """One echo per new connection, every reply read (the connection has then done one exchange)."""
    for index, sock in enumerate(sockets[start:], start):
        sock.sendall(echo_frame(index))
    for sock in sockets[start:]:
        header = sock.recv(2, socket.MSG_WAITALL)
        if len(header) != 2:
            raise SystemExit("the switch closed a connection during the echo")
        sock.recv(int.from_bytes(header, "big"), socket.MSG_WAITALL)


def settled_rss(pid: int) -> int:
    time.sleep(SETTLE_SECONDS)
    return rss_kib(pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="1000,5000", help="connection counts to measure at (ascending)")
    parser.add_argument("--warm", action="store_true", help="send one echo on every connection before measuring")
    args = parser.parse_args()
    steps = sorted({int(step) for step in args.steps.split(",")})
    limit = raise_fd_limit(max(steps) + 1024)
    if limit < max(steps) + 64:
        raise SystemExit(f"RLIMIT_NOFILE is {limit}: too low for {max(steps)} connections (raise the hard limit)")
    with tempfile.TemporaryDirectory(prefix="bench-connections-") as directory:
        switch = SwitchProcess.start(["--idle-timeout", "0", "--max-connections", "0",
                                      "--ledger", os.path.join(directory, "ledger.sqlite"), "--journal", "none"])
        proc, port = switch.process, switch.port
        health = f"{switch.admin_url}/health"
        sockets: list[socket.socket] = []
        try:
            wait_for_connections(health, 0)
            baseline = settled_rss(proc.pid)
            kind = "warm (one echo each)" if args.warm else "idle"
            print(f"switch pid {proc.pid}, port {port}; fd limit {limit}; {kind} connections")
            print(f"{'connections':>11}  {'RSS MB':>8}  {'over baseline MB':>16}  {'KB per connection':>17}")
            print(f"{0:>11}  {baseline / 1024:>8.1f}  {0.0:>16.1f}  {'-':>17}")
            rows = []
            for step in steps:
                first_new = len(sockets)
                while len(sockets) < step:
                    sockets.append(socket.create_connection(("127.0.0.1", port), timeout=10))
                if args.warm:
                    warm(sockets, first_new)
                wait_for_connections(health, step)
                rss = settled_rss(proc.pid)
                per_connection = (rss - baseline) / step
                rows.append((step, rss))
                print(f"{step:>11}  {rss / 1024:>8.1f}  {(rss - baseline) / 1024:>16.1f}  {per_connection:>17.1f}")
            at_target = next((rss for step, rss in rows if step == TARGET_AT), None)
            if at_target is not None:
                verdict = "PASS" if at_target / 1024 < TARGET_MB else "FAIL"
                print(f"target: < {TARGET_MB:g} MB at {TARGET_AT} connections: {at_target / 1024:.1f} MB — {verdict}")
        finally:
            for sock in sockets:
                sock.close()
            switch.stop()


if __name__ == "__main__":
    main()
