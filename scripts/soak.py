"""A bounded soak of a real ``iso-switch serve``: load, fault rules changed over the admin API,
malformed frames, a client that never reads, and ``kill -9`` / restart, then an independent check.

Loopback only. The switch runs as a subprocess (``switch.testing.SwitchProcess``) on fixed ports
with a ledger file in a temporary directory; every ``--kill-every`` seconds it is killed with
SIGKILL and started again on the same ledger. Meanwhile ``--clients`` terminals send purchases one
at a time (unique terminal + STAN, no sign-on) and remember every approval they were sent (by
RRN); a fault task adds and removes fault rules (delays, dropped replies, closes, duplicates) over
the admin API; an abuser sends mutated and garbage frames; a flooder sends and never reads.

At the end the switch is stopped cleanly and the ledger is read on its own: every approval a
client saw must be an approved posting (lost = 0), and no request may be posted twice
(doubled = 0). Prints frames, kills, approvals, lost, doubled and the switch's max RSS; exit 1 if
lost or doubled is not 0 or the switch did not stop cleanly.

    python scripts/soak.py [--duration 60] [--clients 8] [--kill-every 15] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import trio

from switch.codec import Codec, Message, load_dialect
from switch.codec.framing import Framing, FramingError
from switch.codec.stream import FrameStream
from switch.ledger import Ledger
from switch.testing import SwitchProcess

DIALECT = load_dialect("iso87-binary")
CODEC = Codec(DIALECT)
FRAMING = Framing.from_dialect(DIALECT)
REPLY_TIMEOUT = 3.0

FAULT_RULES: list[dict[str, object]] = [
    {"when": {"mti": ["0200"]}, "delay_response": "30ms", "probability": 0.3},
    {"when": {"mti": ["0200"]}, "drop_response": True, "probability": 0.05},
    {"when": {"mti": ["0200"]}, "close": "after", "probability": 0.03},
    {"when": {"mti": ["0200"]}, "duplicate": True, "probability": 0.1},
    {"when": {"mti": ["0200"]}, "respond": "91", "probability": 0.05},
    {"when": {"mti": ["0200"]}, "slice": {"bytes": 16, "pause": "5ms"}, "probability": 0.1},
]


@dataclass
class Tally:
    frames: int = 0  # terminals' and abuser's frames
    flood_frames: int = 0  # the flooder's, sent while the switch still read them
    kills: int = 0
    approvals: dict[str, tuple[str, str]] = field(default_factory=dict)  # RRN -> (terminal, STAN)
    approvals_twice: int = 0  # one RRN for two different requests
    outcomes: Counter[str] = field(default_factory=Counter)
    max_rss_kb: int = 0
    fault_changes: int = 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kb(pid: int) -> int:
    """Peak resident set of the process (VmHWM), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def purchase(terminal: str, stan: int, amount: int) -> Message:
    f7 = datetime.now(UTC).strftime("%m%d%H%M%S")
    return Message("0200", {2: "4761739001010010", 3: "000000", 4: f"{amount:012d}", 7: f7, 11: f"{stan:06d}",
                            12: f7[4:], 13: f7[:4], 14: "3012", 22: "051", 25: "00", 41: terminal,
                            42: "MERCHANT0000001", 49: "840"})


def mutate(rng: random.Random, data: bytes) -> bytes:
    raw = bytearray(data)
    kind = rng.choice(["flip", "cut", "insert", "garbage"])
    if kind == "flip":
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
    elif kind == "cut":
        del raw[rng.randrange(1, len(raw)):]
    elif kind == "insert":
        at = rng.randrange(len(raw))
        raw[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 6)))
    else:
        raw = bytearray(rng.randrange(256) for _ in range(rng.randint(1, 100)))
    return bytes(raw)


async def connect(port: int, deadline: float) -> FrameStream | None:
    while trio.current_time() < deadline:
        try:
            return FrameStream(await trio.open_tcp_stream("127.0.0.1", port), FRAMING)
        except OSError:
            await trio.sleep(0.05)  # the switch is being restarted
    return None


async def terminal(index: int, port: int, deadline: float, tally: Tally, seed: int) -> None:
    """One terminal: purchases one at a time; approvals remembered by RRN. Gives up on a request after
    a timeout or a close (its outcome is then unknown to it, as for a real terminal) and reconnects."""
    rng = random.Random(f"{seed}/terminal/{index}")
    name = f"SOAK{index:04d}"
    stan = 0
    frames: FrameStream | None = None
    while trio.current_time() < deadline:
        if frames is None and (frames := await connect(port, deadline)) is None:
            return
        stan = stan % 999999 + 1
        amount = rng.choice([1234, 2500, 9999])
        try:
            await frames.send_frame(CODEC.encode(purchase(name, stan, amount)))
            tally.frames += 1
            with trio.fail_after(REPLY_TIMEOUT):
                while True:
                    frame = await frames.receive_frame()
                    if frame is None:
                        raise trio.BrokenResourceError("closed")
                    reply = CODEC.decode(frame.payload)
                    if reply.fields.get(11) == f"{stan:06d}" and reply.mti == "0210":
                        break  # a duplicate reply of an earlier request is skipped
            tally.outcomes[f"answered {reply.fields.get(39)}"] += 1
            if reply.fields.get(39) == "00":
                rrn = reply[37]
                if tally.approvals.setdefault(rrn, (name, f"{stan:06d}")) != (name, f"{stan:06d}"):
                    tally.approvals_twice += 1
        except Exception as exc:  # timeout, close, kill -9 (or a reply that does not decode: shown)
            tally.outcomes[f"unknown ({type(exc).__name__})"] += 1
            with trio.CancelScope(shield=True):
                await frames.aclose()
            frames = None
    if frames is not None:
        await frames.aclose()


async def abuser(port: int, deadline: float, tally: Tally, seed: int) -> None:
    """Mutated and garbage frames; each answered, or its connection closed (then reconnect)."""
    rng = random.Random(f"{seed}/abuser")
    frames: FrameStream | None = None
    stan = 0
    while trio.current_time() < deadline:
        if frames is None and (frames := await connect(port, deadline)) is None:
            return
        stan += 1
        payload = mutate(rng, CODEC.encode(purchase("ABUSE001", stan % 999999 + 1, 1234)))
        try:
            await frames.send_frame(payload)
            tally.frames += 1
            with trio.fail_after(REPLY_TIMEOUT):
                frame = await frames.receive_frame()
            tally.outcomes["malformed answered" if frame is not None else "malformed closed"] += 1
            if frame is None:
                await frames.aclose()
                frames = None
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, FramingError, OSError):
            tally.outcomes["malformed unanswered"] += 1  # or the switch was killed meanwhile
            if frames is not None:
                with trio.CancelScope(shield=True):
                    await frames.aclose()
            frames = None
        await trio.sleep(0.01)
    if frames is not None:
        await frames.aclose()


async def flooder(port: int, deadline: float, tally: Tally) -> None:
    """Sends echoes and never reads: backpressure must stop the switch reading, the idle timeout close it."""
    echo = FRAMING.encode(CODEC.encode(Message("0800", {11: "000001", 41: "FLOOD001", 70: "301"})))
    while trio.current_time() < deadline:
        stream = None
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            with trio.move_on_at(deadline):
                while True:
                    await stream.send_all(echo * 64)
                    tally.flood_frames += 64
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            tally.outcomes["flooder closed by the switch"] += 1
            await trio.sleep(0.1)
        finally:
            if stream is not None:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(stream)


def admin(url: str, method: str, path: str, body: dict[str, object] | None = None) -> int:
    request = urllib.request.Request(url + path, method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0  # the switch is being restarted


async def fault_changer(admin_port: int, deadline: float, every: float, tally: Tally, seed: int) -> None:
    rng = random.Random(f"{seed}/faults")
    url = f"http://127.0.0.1:{admin_port}"
    number = 0
    while trio.current_time() < deadline:
        await trio.sleep(every)
        number += 1
        reset: dict[str, object] = {"what": "faults"}
        await trio.to_thread.run_sync(admin, url, "POST", "/api/v1/reset", reset)
        rule = {"id": f"soak{number}", **rng.choice(FAULT_RULES)}
        status = await trio.to_thread.run_sync(admin, url, "POST", "/api/v1/faults", rule)
        if status == 201:
            tally.fault_changes += 1


async def soak(args: argparse.Namespace, ledger_path: str, tally: Tally) -> SwitchProcess:
    port, admin_port = free_port(), free_port()
    argv = ["--port", str(port), "--admin-port", str(admin_port), "--ledger", ledger_path, "--journal", "none",
            "--no-signon", "--idle-timeout", str(args.idle_timeout), "--seed", str(args.seed)]
    switch = SwitchProcess.start(argv)
    deadline = trio.current_time() + args.duration
    async with trio.open_nursery() as nursery:
        for index in range(args.clients):
            nursery.start_soon(terminal, index, port, deadline, tally, args.seed)
        nursery.start_soon(abuser, port, deadline, tally, args.seed)
        nursery.start_soon(flooder, port, deadline, tally)
        nursery.start_soon(fault_changer, admin_port, deadline, args.fault_every, tally, args.seed)
        next_kill = trio.current_time() + args.kill_every
        while trio.current_time() < deadline:
            await trio.sleep(0.5)
            tally.max_rss_kb = max(tally.max_rss_kb, rss_kb(switch.process.pid))
            if args.kill_every and trio.current_time() >= next_kill and trio.current_time() < deadline - 2:
                tally.max_rss_kb = max(tally.max_rss_kb, rss_kb(switch.process.pid))
                await trio.to_thread.run_sync(switch.kill)
                tally.kills += 1
                switch = await trio.to_thread.run_sync(SwitchProcess.start, argv)
                next_kill = trio.current_time() + args.kill_every
    tally.max_rss_kb = max(tally.max_rss_kb, rss_kb(switch.process.pid))
    return switch


def check(ledger_path: str, tally: Tally) -> tuple[int, int]:
    """(lost, doubled): approvals seen but not approved in the ledger; requests posted twice."""
    ledger = Ledger.open(ledger_path)
    try:
        postings = ledger.postings()
    finally:
        ledger.close()
    approved = {posting.rrn: posting for posting in postings if posting.approved}
    lost = sum(1 for rrn, (terminal, stan) in tally.approvals.items()
               if rrn not in approved or (approved[rrn].terminal, approved[rrn].stan) != (terminal, stan))
    keys = Counter((posting.terminal, posting.stan, posting.identity or posting.transmission_time)
                   for posting in postings if posting.approved)
    rrns = Counter(posting.rrn for posting in postings if posting.approved)
    doubled = sum(count - 1 for count in keys.values() if count > 1) + sum(count - 1 for count in rrns.values()
                                                                            if count > 1) + tally.approvals_twice
    return lost, doubled


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--clients", type=int, default=8, help="terminals sending purchases (default 8)")
    parser.add_argument("--kill-every", type=float, default=15.0, help="seconds between kill -9s (0: never)")
    parser.add_argument("--fault-every", type=float, default=3.0, help="seconds between fault rule changes")
    parser.add_argument("--idle-timeout", type=float, default=3.0, help="the switch's --idle-timeout")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if not 0 < args.duration <= 3600:
        parser.error("--duration must be in (0, 3600] seconds")
    tally = Tally()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="iso-soak-") as directory:
        ledger_path = os.path.join(directory, "ledger.sqlite")
        switch = trio.run(soak, args, ledger_path, tally)
        returncode = switch.stop()
        clean = returncode == 0 and switch.closed_cleanly
        lost, doubled = check(ledger_path, tally)
    outcomes = ", ".join(f"{name} {count}" for name, count in sorted(tally.outcomes.items()))
    print(f"soak: {time.monotonic() - started:.0f}s, seed {args.seed}, {args.clients} terminals + abuser + flooder")
    print(f"frames {tally.frames} (+ {tally.flood_frames} flooded unread), kills {tally.kills}, "
          f"fault changes {tally.fault_changes}, "
          f"approvals {len(tally.approvals)}, lost {lost}, doubled {doubled}, "
          f"max RSS {tally.max_rss_kb / 1024:.0f} MB, stopped cleanly: {'yes' if clean else 'NO'}")
    print(f"outcomes: {outcomes}")
    if not clean:
        print(switch.text[-3000:], file=sys.stderr)
    return 0 if lost == 0 and doubled == 0 and clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
