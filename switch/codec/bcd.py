"""BCD odd-length pad conventions, shared by the pyiso8583 path and the generated fast path."""

from __future__ import annotations

__all__ = ["from_signed_bcd", "strip_odd_pad", "to_signed_bcd"]


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


def from_signed_bcd(wire: str, digits: int, pad_side: str) -> str:
    """x+n as jPOS IFB_AMOUNT sends it (sign byte, BCD digits) → 'C'/'D' + digits.

    A sign byte that is not a letter comes back as a character the x+n rule then refuses, so the
    error names the field; an unreadable pad leaves the nibbles as they are, for the same reason.
    """
    sign = chr(int(wire[:2], 16))
    nibbles = wire[2:]
    if digits % 2:
        stripped = strip_odd_pad(nibbles, "0" if pad_side == "left" else "", "0" if pad_side == "right" else "")
        nibbles = stripped if stripped is not None else nibbles
    return sign + nibbles


def to_signed_bcd(value: str, digits: int, pad_side: str) -> str:
    """'C'/'D' + digits → the hex of the sign byte and the BCD digits (pad '0' for an odd count)."""
    body = value[1:]
    if len(body) % 2:
        body = "0" + body if pad_side == "left" else body + "0"
    return f"{ord(value[0]):02X}{body}"
