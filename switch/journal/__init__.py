"""The switch's message journal: every frame in and out, decoded, masked, kept in a ring and a file.

Two readers with different needs share one record per frame:

- the admin API asks ``Journal.query`` for the newest entries matching a filter (a bounded ring in
  memory, ``ring_size`` entries);
- people and tools read the JSON-lines file (``journal.jsonl``, rotated by size into
  ``journal.jsonl.1`` ... ``.N``), written by ``Journal.run`` (formatted on the event loop in
  slices, written to the disk by a worker thread).

The switch calls ``record_in`` / ``record_out`` on its hot path, so recording only stores the raw
bytes, the decoded fields and a few keys used by filters. Everything costly (masking, hex, JSON)
happens later and once per entry: in ``Journal.run`` for the file (by message shape, see
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

Modules: ``core`` (records, entries, the ring, the file writer), ``lines`` (the file's lines by
message shape), ``masking``, ``reading`` (the file read back, for the CLI). Everything is
importable from ``switch.journal``.
"""


from switch.journal.core import DIRECTION_IN, DIRECTION_OUT, UPDATE_UNSENT, Journal, JournalEntry
from switch.journal.masking import FULLY_MASKED, MASKED_BYTE, SENSITIVE_FIELDS, luhn_valid, mask_text, pan_runs
from switch.journal.reading import (
    EntryFilter,
    ErrorHandler,
    JournalFileError,
    JournalFollower,
    follow_journal,
    format_entry_line,
    read_journal_file,
)

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
    "follow_journal",
    "format_entry_line",
    "luhn_valid",
    "mask_text",
    "pan_runs",
    "read_journal_file",
]
