"""``OriginalData.format_of``: the fast way to field 90 gives exactly what ``of(...).format()`` gives —
the same string, or the same error — for any message and ids (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from switch.codec.composite import CompositeFieldError, OriginalData
from switch.codec.message import Message

_DIGITISH = st.text(alphabet="0123456789 a١", max_size=13)  # digits, spaces, a letter, an Arabic-Indic digit


def _part(width: int) -> st.SearchStrategy[str | None]:
    exact = st.text(alphabet="0123456789", min_size=width, max_size=width)
    return st.one_of(st.none(), exact, _DIGITISH)


@settings(max_examples=600, deadline=None)
@given(mti=st.one_of(st.sampled_from(["0200", "0100", "0220"]), _DIGITISH), stan=_part(6), sent=_part(10),
       f32=_part(11), f33=_part(11), acquirer=st.one_of(st.just(""), _DIGITISH),
       forwarding=st.one_of(st.just(""), _DIGITISH), pad=st.sampled_from(["0", " ", "x"]))
def test_format_of_is_of_then_format(mti: str, stan: str | None, sent: str | None, f32: str | None,
                                     f33: str | None, acquirer: str, forwarding: str, pad: str) -> None:
    fields = {number: value for number, value in ((11, stan), (7, sent), (32, f32), (33, f33)) if value is not None}
    original = Message(mti, fields)
    try:
        expected: str | BaseException = OriginalData.of(original, acquirer, forwarding, pad=pad).format()
    except CompositeFieldError as exc:
        expected = exc
    try:
        got: str | BaseException = OriginalData.format_of(original, acquirer, forwarding, pad=pad)
    except CompositeFieldError as exc:
        got = exc
    if isinstance(expected, BaseException):
        assert isinstance(got, CompositeFieldError) and str(got) == str(expected)
    else:
        assert got == expected


def test_format_of_a_sale_zero_pads_the_acquirer() -> None:
    sale = Message("0200", {7: "0301120000", 11: "000042", 41: "TERM0001"})
    assert OriginalData.format_of(sale, "123456") == "0200" "000042" "0301120000" "00000123456" "00000000000"
    assert OriginalData.format_of(sale, "123456", pad=" ") == "0200000042" "0301120000" "123456     " + " " * 11
