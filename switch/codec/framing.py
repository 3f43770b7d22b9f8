"""Framing: length headers and the optional TPDU around an encoded message, independent of dialect."""

from __future__ import annotations

LENGTH_HEADERS = ("binary2", "binary4", "ascii2", "ascii4", "bcd2", "none")
