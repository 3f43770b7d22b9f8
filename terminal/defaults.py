"""The terminal's defaults shared by the CLI and the Python API: identity and the test card.

Kept in a module of its own, free of click and Trio, so ``terminal.api`` need not import the CLI
(and the CLI need not import Trio at start-up) to agree on them.
"""

from __future__ import annotations

from datetime import date

__all__ = ["DEFAULT_MERCHANT_ID", "DEFAULT_TERMINAL_ID", "TEST_PAN", "default_expiry"]

DEFAULT_TERMINAL_ID = "TERM0001"
DEFAULT_MERCHANT_ID = "MERCHANT0000001"
TEST_PAN = "4761739001010010"  # Luhn-valid, and not in the switch's test-card table: approved


def default_expiry(today: date) -> str:
    """A card expiry (YYMM) safely in the future: December, three years from ``today``."""
    return f"{(today.year + 3) % 100:02d}12"
