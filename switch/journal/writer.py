"""The journal writer process: ``python -m switch.journal.writer``, started by ``Journal.run``.

It moves the journal's formatting (masking, hex, JSON: ~7 us a line) out of the switch process,
whose event loop holds the GIL for every request, onto another core. The switch hands it batches
of records on stdin (``switch.journal.handoff``); it formats them with the same ``LineFormatter``
and writes them with the same ``JournalFile`` as the in-process writer, so the bytes, the rotation
and the masking are those of the in-process writer.

On stdout it reports, one line each: ``R`` (file open, ready), the count of batches written so far
after each batch is on disk (the switch keeps a batch until then, to rewrite it if this process
dies), ``E <reason>`` when the file cannot be written (then it exits with status 3), or
``B <reason>`` when what the switch sent makes no sense (status 4: the switch writes for itself).

It ends at the end of its stdin: when the switch closes the pipe at shutdown, and as well when
the switch is killed (the kernel closes the pipe), after writing every batch it received. It
ignores SIGINT, SIGTERM and SIGHUP: Ctrl-C in a terminal (or a stop signal to the process group, or
the terminal closing) reaches it together with the switch, which then drains and still hands over
its last records; the end of the pipe is what stops it. It runs at a lower priority (``NICENESS``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path

from switch.codec.message import Codec
from switch.journal.filing import JournalFile
from switch.journal.handoff import BatchDecoder, read_frame, read_settings
from switch.journal.lines import LineFormatter
from switch.journal.masking import _Masker

EXIT_CANNOT_WRITE = 3
EXIT_BAD_INPUT = 4


def _report(text: str) -> bool:
    """One line to the switch; False once it is gone (the file is still written to the end)."""
    try:
        os.write(1, text.encode("ascii", "replace") + b"\n")
    except OSError:
        return False
    return True


def serve(stdin_fd: int = 0) -> int:
    """Write every batch from ``stdin_fd`` to the file; the exit status."""
    stdin = os.fdopen(stdin_fd, "rb", buffering=1 << 20, closefd=False)
    try:
        payload = read_frame(stdin)
        if payload is None:
            return 0  # the switch went away before saying anything
        settings = read_settings(payload)
    except (ValueError, EOFError, ImportError, AttributeError) as exc:  # a switch of another version?
        _report(f"B bad settings from the switch: {exc}")
        return EXIT_BAD_INPUT
    journal = JournalFile(Path(settings.path), settings.max_bytes, settings.backups)
    batches = BatchDecoder(LineFormatter(_Masker(Codec(settings.dialect))))
    try:
        journal.open()
    except OSError as exc:
        _report(f"E {exc}")
        return EXIT_CANNOT_WRITE
    listening = _report("R")
    written = 0
    try:
        while True:  # one batch per turn, until the switch closes the pipe (bounded by what it sends)
            try:
                payload = read_frame(stdin)
            except ValueError as exc:
                _report(f"B bad frame from the switch: {exc}")
                return EXIT_BAD_INPUT
            if payload is None:
                return 0
            lines = batches.lines(payload)
            try:
                journal.write(lines)
            except OSError as exc:
                _report(f"E {exc}")
                return EXIT_CANNOT_WRITE
            written += 1
            if listening:
                listening = _report(str(written))
    finally:
        try:
            journal.close()
        except OSError as exc:
            _report(f"E {exc}")


NICENESS = 5
"""Background work: on a busy machine the switch's requests go first (the CFS share of a nice-5
process beside a nice-0 one is ~25 %, several times what a saturated switch's journal needs)."""


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        os.nice(NICENESS)
    return serve()


if __name__ == "__main__":
    sys.exit(main())
