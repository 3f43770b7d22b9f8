"""The switch's message journal: every frame in and out, decoded, masked, kept in a ring and a file.

Two readers with different needs share one record per frame:

- the admin API asks ``Journal.query`` for the newest entries matching a filter (a bounded ring in
  memory, ``ring_size`` entries);
- people and tools read the JSON-lines file (``journal.jsonl``, rotated by size into
  ``journal.jsonl.1`` ... ``.N``), written by ``Journal.run``: formatted in a writer process
  (the switch's default) or on the event loop in slices with the disk writes in a worker thread.

The switch calls ``record_in`` / ``record_out`` on its hot path, so recording only stores the raw
bytes, the decoded fields and a few keys used by filters. Everything costly (masking, hex, JSON)
happens later and once per entry: for the file in the writer (by message shape, see
``switch.journal.lines``), on ``query`` for the API, with the result cached on the record.

Masking follows ``switch.codec.composite.mask_field`` for decoded values (PAN first 6 + last 4,
track data after the PAN hidden, PIN block and ICC data as ``****``). In ``raw_hex`` every byte
of those fields' data is shown as ``**`` (length prefixes stay). A frame that cannot be decoded
is kept, marked by ``error``, with the fields read before the failure masked the same way. Its
raw bytes may still hold a PAN where the decoder did not get to, or where it misread a frame of
another dialect, so there the journal also masks the whole unread rest when the bitmap announces
a sensitive field not read, every digit run long enough to be a PAN or track (12+ digits, BCD,
ASCII or EBCDIC), and PAN-sized digit runs in the fields read: a PAN in a log is worse than a
less readable log. In every frame, a run of 13-19 digits that passes the Luhn check in any other field
(a card number typed into field 48) is masked too, in the fields and in ``raw_hex``.

Every entry names the fault actions applied (``faults``) and, beside each, the id of the rule that
asked for it (``rules``; "maintenance" for maintenance mode; ``[]`` in files written before).

Modules: ``core`` (entries, the ring, queries), ``records`` (what the hot path keeps per frame),
``writing`` (the file writer: formatting on the event loop, or handing batches to the writer
process, ``process`` / ``handoff`` / ``writer``), ``filing`` (the file and its rotation), ``lines``
(the file's lines by message shape), ``masking``, ``reading`` (the file read back, for the CLI).
Everything public is importable from ``switch.journal``.
"""


from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from switch.journal.core import DIRECTION_IN, DIRECTION_OUT, UPDATE_UNSENT, Journal, JournalEntry
    from switch.journal.masking import (
        FULLY_MASKED,
        MASKED_BYTE,
        SENSITIVE_FIELDS,
        luhn_valid,
        mask_text,
        pan_runs,
    )
    from switch.journal.reading import (
        EntryFilter,
        ErrorHandler,
        JournalFileError,
        JournalFollower,
        follow_journal,
        format_entry_line,
        read_journal_file,
    )
    from switch.journal.writing import JournalWriterKind

# Imported on first use, not with the package: the writer process (``python -m
# switch.journal.writer``) needs lines and masking only, and starts ~0.1 s sooner without Trio.
_HOMES = {
    **dict.fromkeys(("DIRECTION_IN", "DIRECTION_OUT", "UPDATE_UNSENT", "Journal", "JournalEntry"), "core"),
    **dict.fromkeys(("FULLY_MASKED", "MASKED_BYTE", "SENSITIVE_FIELDS", "luhn_valid", "mask_text", "pan_runs"),
                    "masking"),
    **dict.fromkeys(("EntryFilter", "ErrorHandler", "JournalFileError", "JournalFollower", "follow_journal",
                     "format_entry_line", "read_journal_file"), "reading"),
    "JournalWriterKind": "writing",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


__all__ = [
    "DIRECTION_IN",
    "DIRECTION_OUT",
    "FULLY_MASKED",
    "MASKED_BYTE",
    "SENSITIVE_FIELDS",
    "UPDATE_UNSENT",
    "EntryFilter",
    "ErrorHandler",
    "Journal",
    "JournalEntry",
    "JournalFileError",
    "JournalFollower",
    "JournalWriterKind",
    "follow_journal",
    "format_entry_line",
    "luhn_valid",
    "mask_text",
    "pan_runs",
    "read_journal_file",
]
