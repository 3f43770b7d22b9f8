"""Transactions per second: ``iso-terminal load`` against a minimal independent asyncio client, same host.

Two hosts, each a subprocess on 127.0.0.1: our switch (``iso-switch serve``, durable ledger, file
journal, ``--no-signon``) and a minimal echo-style ISO 8583 host written below (asyncio + pyiso8583:
every request answered with its response MTI, code 00). Against each, in rounds with the order
rotated, so both sides see the same machine:

* ``client``: an independent asyncio client — ``--connections`` connections, each keeping
  ``--window`` 0200s in flight (requests encoded before the clock starts, the same fields as the
  terminal's sale) — the most the host can take from a cheap client;
* ``load durable``: ``iso-terminal load --terminals T --store-dir DIR`` with durable stores on disk
  (``BENCH_DISK_DIR`` chooses the disk; default: the system's temporary directory);
* ``load :memory:``: the same with ``--store-dir :memory:``;
* both again with ``--workers 2`` (``--workers`` sets the count; 1 drops those variants);
* with ``--baseline DIR``, the load runner of another checkout (durable stores): before/after.

It prints every measurement, then the median TPS of each and its ratio to the client on the same
host, and for the load runners the median CPU time (user + system, its worker processes included)
per finished transaction: less disturbed by other work on the machine than the rate, but it
includes the ~0.8 s the process spends starting up and checking its stores. Run on an idle machine:

    python scripts/bench_load.py [--seconds 8] [--rounds 3] [--terminals 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import iso8583
from benchkit import start_server
from iso8583.specs import default as SPEC

ECHO_HOST = r'''
import asyncio, sys, iso8583
from iso8583.specs import default as SPEC

SECRETS = ("35", "36", "45", "52", "53", "55", "64", "128")

async def serve(reader, writer):
    rrn = 0
    try:
        while True:
            header = await reader.readexactly(2)
            body = await reader.readexactly(int.from_bytes(header, "big"))
            doc, _ = iso8583.decode(body, SPEC)
            mti = doc["t"]
            reply = {k: v for k, v in doc.items() if k not in SECRETS and k not in ("p", "h", "b")}
            reply["t"] = mti[:2] + str(int(mti[2]) + 1) + mti[3]
            reply["39"] = "00"
            if mti[:2] in ("01", "02"):
                rrn += 1
                reply["37"] = f"{rrn:012d}"
                reply["38"] = "123456"
            raw, _ = iso8583.encode(reply, SPEC)
            writer.write(len(raw).to_bytes(2, "big") + bytes(raw))
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()

async def main(port):
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main(int(sys.argv[1])))
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sale(terminal: str, stan: int, f7: str) -> bytes:
    """A 0200 with the fields ``iso-terminal`` puts in a sale (iso87-binary, 2-byte length header)."""
    doc = {"t": "0200", "2": "4761739001010010", "3": "000000", "4": "000000001234", "7": f7,
           "11": f"{stan:06d}", "12": f7[4:], "13": f7[:4], "14": "3012", "22": "012", "25": "00",
           "41": terminal, "42": "MERCHANT0000001", "49": "840"}
    raw, _ = iso8583.encode(doc, SPEC)
    return len(raw).to_bytes(2, "big") + bytes(raw)


async def independent_client(port: int, seconds: float, connections: int, window: int) -> float:
    """Closed-loop 0200s over ``connections`` connections, ``window`` in flight on each; replies/s."""
    f7 = datetime.now(UTC).strftime("%m%d%H%M%S")
    per_connection = max(2000, int(seconds * 15_000 / connections))
    base = int(time.time()) % 9000  # terminal ids of this run only: the switch refuses duplicate STANs
    answered = 0
    encoded = [[sale(f"C{base:04d}{index:03d}", stan, f7) for stan in range(1, per_connection + 1)]
               for index in range(connections)]  # before the clock starts: the client must be cheap
    deadline = time.perf_counter() + seconds

    async def one(index: int) -> None:
        nonlocal answered
        requests = encoded[index]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sent = min(window, len(requests))
        writer.write(b"".join(requests[:sent]))
        outstanding = sent
        try:
            while outstanding:
                header = await reader.readexactly(2)
                await reader.readexactly(int.from_bytes(header, "big"))
                answered += 1
                outstanding -= 1
                if time.perf_counter() < deadline and sent < len(requests):
                    writer.write(requests[sent])
                    sent += 1
                    outstanding += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(one(index) for index in range(connections)))
    return answered / (time.perf_counter() - start)


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def load_runner(port: int, seconds: float, terminals: int, store_dir: str, workers: int,
                tree: str | None = None) -> tuple[float, float]:
    """(TPS, CPU seconds per finished transaction) of one ``iso-terminal load`` run."""
    argv = [sys.executable, "-m", "terminal", "load", "--port", str(port), "--terminals", str(terminals),
            "--duration", f"{seconds}s", "--no-check", "--quiet", "--json", "--store-dir", store_dir,
            "--timeout", "10"] + (["--workers", str(workers)] if workers > 1 else [])
    env = {**os.environ, "PYTHONPATH": tree} if tree else None  # an older checkout's terminal package
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120, env=env, cwd=tree)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise RuntimeError(f"iso-terminal load exited {done.returncode}: {done.stderr.strip()[-500:]}")
    summary = json.loads(done.stdout)
    if summary["outcomes"].get("approved", 0) < summary["transactions"]["finished"] * 0.99:
        raise RuntimeError(f"iso-terminal load: not everything approved: {summary['outcomes']}")
    return float(summary["tps"]), cpu / max(1, summary["transactions"]["finished"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--terminals", type=int, default=50, help="terminals of iso-terminal load")
    parser.add_argument("--workers", type=int, default=2, help="workers of the last variants (1: no such variants)")
    parser.add_argument("--connections", type=int, default=50, help="connections of the independent client")
    parser.add_argument("--window", type=int, default=4, help="requests in flight per client connection")
    parser.add_argument("--baseline", metavar="DIR", default=None,
                        help="also run the load runner of another checkout (e.g. `git archive HEAD terminal switch "
                             "| tar -x -C DIR`), durable stores: a before/after in the same run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.seconds <= 0 or min(args.rounds, args.terminals, args.workers, args.connections, args.window) < 1:
        parser.error("--seconds must be > 0, the counts >= 1")

    variants = ["client", "load durable", "load :memory:"]
    if args.workers > 1:
        variants += [f"load durable --workers {args.workers}", f"load :memory: --workers {args.workers}"]
    if args.baseline:
        variants.append("baseline load durable")
    hosts = ["switch", "echo host"]
    runs: dict[tuple[str, str], list[float]] = {(h, v): [] for h in hosts for v in variants}
    cpu: dict[tuple[str, str], list[float]] = {(h, v): [] for h in hosts for v in variants if v != "client"}
    with tempfile.TemporaryDirectory(prefix="bench-load-", dir=os.environ.get("BENCH_DISK_DIR")) as tmp:
        echo_script = Path(tmp) / "echo_host.py"
        echo_script.write_text(ECHO_HOST)
        for round_number in range(args.rounds):
            for host in hosts:
                port = free_port()
                if host == "switch":
                    argv = [sys.executable, "-m", "switch", "serve", "--port", str(port), "--no-signon",
                            "--no-admin", "--ledger", str(Path(tmp) / f"ledger-{round_number}.sqlite")]
                    proc = start_server(argv, "listening")
                else:
                    proc = start_server([sys.executable, str(echo_script), str(port)], "ready")
                try:
                    shift = round_number % len(variants)
                    for variant in variants[shift:] + variants[:shift]:
                        per_transaction = ""
                        if variant == "client":
                            tps = asyncio.run(independent_client(port, args.seconds, args.connections, args.window))
                        else:
                            memory = ":memory:" in variant
                            disk = Path(tmp) / f"stores-{round_number}-{host}-{variants.index(variant)}"
                            store_dir = ":memory:" if memory else str(disk)
                            workers = args.workers if "--workers" in variant else 1
                            tree = args.baseline if variant.startswith("baseline") else None
                            tps, seconds = load_runner(port, args.seconds, args.terminals, store_dir, workers, tree)
                            cpu[(host, variant)].append(seconds)
                            per_transaction = f"   {seconds * 1e3:.2f} ms CPU/transaction"
                        runs[(host, variant)].append(tps)
                        print(f"round {round_number + 1}: {host:<9} {variant:<30} {tps:>8.0f} TPS{per_transaction}",
                              flush=True)
                finally:
                    stop_server(proc)

    print(f"\n{'host':<9} {'':<30} {'median':>8}   ratio to the client on the same host (goal >= 0.4), "
          "median ms CPU per transaction")
    summary: dict[str, dict[str, float]] = {}
    for host in hosts:
        client = statistics.median(runs[(host, "client")])
        for variant in variants:
            median = statistics.median(runs[(host, variant)])
            ratio = median / client if client else 0.0
            summary[f"{host} / {variant}"] = {"median_tps": median, "ratio": ratio}
            line = f"{host:<9} {variant:<30} {median:>8.0f}   {ratio:.2f}"
            if (host, variant) in cpu:
                cpu_median = statistics.median(cpu[(host, variant)])
                summary[f"{host} / {variant}"]["median_cpu_per_transaction_s"] = cpu_median
                line += f"   {cpu_median * 1e3:.2f}"
            print(line)
    if args.json:
        print(json.dumps({"runs": {f"{h} / {v}": r for (h, v), r in runs.items()}, "summary": summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
