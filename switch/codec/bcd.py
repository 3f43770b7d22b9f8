"""BCD odd-length pad conventions, shared by the pyiso8583 path and the generated fast path."""

from __future__ import annotations

__all__ = ["strip_odd_pad"]


def strip_odd_pad(nibbles: str, left: str, right: str) -> str | None:
    """An odd digit count's value without its pad nibble, whichever convention the peer used.

    Peers pad the spare nibble with F (on the right, or the left), with a leading 0, or with a
    trailing 0. F is never a digit or track nibble, so an F pad is unambiguous and taken first;
    then the dialect's own pad side (it decides the one ambiguous case, "01 20" = 120 or 012);
    then a 0 on either side.
    """
    if nibbles[-1:] == "F":
        return nibbles[:-1]
    if nibbles[:1] == "F":
        return nibbles[1:]
    if left and nibbles[:1] == left:
        return nibbles[1:]
    if right and nibbles[-1:] == right:
        return nibbles[:-1]
    if nibbles[:1] == "0":
        return nibbles[1:]
    if nibbles[-1:] == "0":
        return nibbles[:-1]
    return None
