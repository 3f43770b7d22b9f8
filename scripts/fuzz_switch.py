"""Throw mutated frames at a running switch and prove it survives: every connection's fate is its own.

The codec's property tests show that decoding never raises anything but ``MessageDecodeError``; this
script checks the promise one level up, over real loopback sockets: whatever bytes a terminal sends,
the switch answers, closes *that* connection, or stays silent, and keeps serving everyone else.

Frames start from valid messages of the dialect (sign-on, echo, purchase, reversal, advice,
settlement, encoded by the project's codec) and are mutated by a seeded RNG: bytes flipped,
inserted or deleted, the body cut short or padded, bitmap bits toggled, digits replaced by letters,
a length header that lies, an oversize header, pure noise. ``--connections`` clients send them at
once; after a silence or a close a client reconnects. Every ``--check-every`` frames a fresh
connection must get its 0800 echo answered 00 within ``--check-timeout`` seconds. At the end the
switch must still be running and, when this script started it, stop with its ledger closed cleanly.

    python scripts/fuzz_switch.py [--frames 2000] [--seed 1] [--dialect iso87-binary] [--connections 8]
    python scripts/fuzz_switch.py --port 8583 --frames 500        # a switch you started yourself

Exit status 0 when the switch survived, 1 with the seed and the last frames (hex) when it did not.
The same seed sends the same frames in the same order on each connection.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import trio

from switch.codec import Codec, Message, load_dialect
from switch.codec.composite import CupHeader
from switch.codec.framing import Framing, FramingError
from switch.codec.stream import FrameStream
from switch.testing import SwitchProcess
from switch.testkit.mutations import DEFAULT_TPDU, Mutator, seed_messages

CHECK_TERMINAL = "FUZZCHK1"


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    mutations: Counter[str] = field(default_factory=Counter)
    recent: list[str] = field(default_factory=list)  # hex of the last frames sent, for a failure report
    checks: int = 0

    def sent(self, kind: str, frame: bytes) -> None:
        self.mutations[kind] += 1
        self.recent.append(f"{kind}: {frame.hex()}")
        del self.recent[:-20]


class SwitchDown(Exception):
    """The health check failed: the switch no longer serves a well-behaved terminal."""


async def fuzz(port: int, args: argparse.Namespace, codec: Codec, framing: Framing, tally: Tally) -> None:
    try:
        seeds = seed_messages(codec)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    frames_left = args.frames
    lock = trio.Lock()
    deadline = trio.current_time() + args.seconds

    async def health_check() -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        frames = FrameStream(stream, framing)
        f7 = datetime.now(UTC).strftime("%m%d%H%M%S")
        fields = {7: f7, 11: "000001", 41: CHECK_TERMINAL, 70: "301"}
        if codec.dialect.family == "cup":
            fields = {11: "000001", 41: CHECK_TERMINAL, 42: "MERCHANT0000001", 60: "00000001301"}
        header = CupHeader.DEFAULT.format() if codec.dialect.family == "cup" else ""
        try:
            with trio.fail_after(args.check_timeout):
                await frames.send_frame(codec.encode(Message("0800", fields, header)),
                                        DEFAULT_TPDU if framing.tpdu else None)
                reply = await frames.receive_frame()
        except (trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
            raise SwitchDown(f"echo on a fresh connection failed: {type(exc).__name__}: {exc}") from None
        finally:
            await trio.aclose_forcefully(stream)
        if reply is None:
            raise SwitchDown("echo on a fresh connection: the switch closed it")
        answer = codec.decode(reply.payload)
        if answer.mti != "0810" or answer.fields.get(39) != "00":
            raise SwitchDown(f"echo answered {answer.mti} {answer.fields.get(39)}")
        tally.checks += 1

    async def client(number: int) -> None:
        nonlocal frames_left
        mutator = Mutator(random.Random(f"{args.seed}/{number}"), seeds, framing, framing.max_frame)
        stream: trio.abc.Stream | None = None
        frames: FrameStream | None = None
        while trio.current_time() < deadline:
            async with lock:
                if frames_left <= 0:
                    break
                frames_left -= 1
                index = args.frames - frames_left
                if index % args.check_every == 0:
                    await health_check()
            kind, payload, raw = mutator.next()
            if stream is None:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                frames = FrameStream(stream, framing)
            assert frames is not None
            wire = raw if raw is not None else framing.encode(payload, DEFAULT_TPDU if framing.tpdu else None)
            tally.sent(kind, wire)
            outcome = "answered"
            try:
                await frames.send_raw(wire)
                with trio.move_on_after(args.reply_timeout) as waited:
                    reply = await frames.receive_frame()
                if waited.cancelled_caught:
                    outcome = "silent"
                elif reply is None:
                    outcome = "closed"
                else:
                    try:
                        outcome = f"answered {codec.decode(reply.payload).mti}"
                    except Exception:
                        outcome = "answered (undecodable)"
            except (trio.BrokenResourceError, trio.ClosedResourceError, FramingError, OSError):
                outcome = "closed"
            tally.outcomes[outcome] += 1
            if outcome in ("silent", "closed"):  # the connection's framing state is unknown: start afresh
                await trio.aclose_forcefully(stream)
                stream = frames = None
        if stream is not None:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        for number in range(args.connections):
            nursery.start_soon(client, number)
    await health_check()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=2000, help="mutated frames to send in all")
    parser.add_argument("--seconds", type=float, default=120.0, help="stop sending after this long anyway")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dialect", default="iso87-binary")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--reply-timeout", type=float, default=0.5, help="silence after this long counts as silent")
    parser.add_argument("--check-every", type=int, default=100, help="health check every this many frames")
    parser.add_argument("--check-timeout", type=float, default=5.0)
    parser.add_argument("--port", type=int, default=None, help="fuzz a switch already running on 127.0.0.1:PORT")
    args = parser.parse_args()
    if args.frames < 1 or args.connections < 1 or args.check_every < 1:
        parser.error("--frames, --connections and --check-every must be at least 1")

    dialect = load_dialect(args.dialect)
    codec, framing = Codec(dialect), Framing.from_dialect(dialect)
    tally = Tally()
    started = time.monotonic()
    verdict = ""
    with tempfile.TemporaryDirectory(prefix="fuzz-switch-") as workdir:
        switch = None
        if args.port is None:
            switch = SwitchProcess.start(["--dialect", args.dialect, "--ledger", f"{workdir}/ledger.sqlite",
                                          "--journal", "none", "--no-admin", "--no-signon", "--seed", str(args.seed)])
        port = args.port if switch is None else switch.port
        try:
            trio.run(fuzz, port, args, codec, framing, tally)
        except SwitchDown as exc:
            verdict = str(exc)
        except OSError as exc:
            verdict = f"cannot reach the switch on 127.0.0.1:{port}: {exc}"
        finally:
            if switch is not None:
                alive = switch.returncode is None
                returncode = switch.stop()
                if not verdict and not alive:
                    verdict = f"the switch exited during the run:\n{switch.text}"
                elif not verdict and (returncode != 0 or not switch.closed_cleanly):
                    verdict = f"the switch did not stop cleanly (status {returncode}):\n{switch.text}"

    elapsed = time.monotonic() - started
    sent = sum(tally.mutations.values())
    print(f"fuzz {dialect.name}: {sent} frames on {args.connections} connections in {elapsed:.1f} s, seed {args.seed}, "
          f"{tally.checks} health checks passed")
    print("  mutations: " + ", ".join(f"{kind} {count}" for kind, count in sorted(tally.mutations.items())))
    print("  outcomes:  " + ", ".join(f"{kind} {count}" for kind, count in sorted(tally.outcomes.items())))
    if verdict:
        print(f"FAILED: {verdict}\nlast frames sent (newest last):")
        for line in tally.recent:
            print(f"  {line}")
        return 1
    print("the switch survived: every health check answered, and it stopped cleanly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
