"""Composite fields: field 90, CUP field 60, the CUP header, settlement totals, masking."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switch.codec.composite import (
    CompositeFieldError,
    CupField60,
    CupHeader,
    OriginalData,
    SettlementTotals,
    mask_field,
    mask_pan,
    mask_track,
)
from switch.codec.message import Message

PROPERTY = settings(max_examples=250, deadline=None)
DIGITS = "0123456789"


def digits(size: int) -> st.SearchStrategy[str]:
    return st.text(DIGITS, min_size=size, max_size=size)


# ------------------------------------------------------------------------------------------
# Field 90

ZERO_PADDED_90 = "0200" "000123" "1225103000" "00000012345" "00000000000"
SPACE_PADDED_90 = "0200" "000123" "1225103000" "12345      " "           "
MIXED_90 = "0200" "000123" "1225103000" "00000012345" "           "


def test_field_90_zero_padded() -> None:
    original = OriginalData.parse(ZERO_PADDED_90)
    assert (original.mti, original.stan, original.transmission_time) == ("0200", "000123", "1225103000")
    assert original.acquirer_id == "00000012345"
    assert original.acquirer == "12345"
    assert original.forwarding == ""
    assert original.pad == "0"
    assert original.key == ("0200", "000123", "1225103000")
    assert original.format() == ZERO_PADDED_90


def test_field_90_space_padded_and_mixed_keep_their_padding() -> None:
    spaced = OriginalData.parse(SPACE_PADDED_90)
    assert spaced.acquirer == "12345"
    assert spaced.pad == " "
    assert spaced.format() == SPACE_PADDED_90
    mixed = OriginalData.parse(MIXED_90)
    assert (mixed.acquirer_id, mixed.forwarding_id) == ("00000012345", " " * 11)
    assert mixed.format() == MIXED_90


def test_field_90_padding_styles_refer_to_the_same_original() -> None:
    zeros, spaces = OriginalData.parse(ZERO_PADDED_90), OriginalData.parse(SPACE_PADDED_90)
    assert zeros != spaces  # different wire values ...
    assert zeros.refers_to_same(spaces)  # ... naming one original
    other = OriginalData.parse(ZERO_PADDED_90.replace("000123", "000124"))
    assert not zeros.refers_to_same(other)


def test_field_90_short_ids_are_filled_by_pad_style() -> None:
    zero = OriginalData("0200", "000123", "1225103000", "12345", "", pad="0")
    space = OriginalData("0200", "000123", "1225103000", "12345", "", pad=" ")
    assert zero.format() == ZERO_PADDED_90
    assert space.format() == SPACE_PADDED_90


def test_field_90_of_original_request() -> None:
    request = Message("0200", {3: "000000", 4: "000000001000", 7: "1225103000", 11: "000123", 32: "12345"})
    assert OriginalData.of(request).format() == ZERO_PADDED_90
    assert OriginalData.of(request, pad=" ").format() == SPACE_PADDED_90
    explicit = OriginalData.of(request, acquirer_id="777", forwarding_id="888")
    assert (explicit.acquirer, explicit.forwarding) == ("777", "888")


def test_field_90_of_request_without_field_7_uses_zeros() -> None:
    original = OriginalData.of(Message("0200", {11: "000042"}))
    assert original.format() == "0200" "000042" "0000000000" + "0" * 22


def test_field_90_of_request_without_stan_is_an_error() -> None:
    with pytest.raises(CompositeFieldError, match="no field 11") as info:
        OriginalData.of(Message("0200", {7: "1225103000"}))
    assert info.value.field == 90


@pytest.mark.parametrize(("value", "fragment"), [
    (ZERO_PADDED_90[:-1], "must be 42 characters, got 41"),
    (ZERO_PADDED_90 + "0", "must be 42 characters, got 43"),
    ("02A0" + ZERO_PADDED_90[4:], "original MTI must be 4 digits"),
    ("0200" "0001X3" + ZERO_PADDED_90[10:], "original STAN must be 6 digits"),
    ("0200" "000123" "12251030 0" + ZERO_PADDED_90[20:], "transmission date-time must be 10 digits"),
    (ZERO_PADDED_90[:20] + "0000001234A" + "0" * 11, "acquirer id must be digits padded"),
    (ZERO_PADDED_90[:20] + "123 45     " + "0" * 11, "acquirer id must be digits padded"),
    (ZERO_PADDED_90[:31] + "12345\t     ", "forwarding id must be digits padded"),
])
def test_field_90_rejects_malformed_values(value: str, fragment: str) -> None:
    with pytest.raises(CompositeFieldError, match=fragment) as info:
        OriginalData.parse(value)
    assert info.value.field == 90
    assert str(info.value).startswith("field 90: ")


def test_field_90_rejects_bad_constructor_arguments() -> None:
    with pytest.raises(CompositeFieldError, match="up to 11 digits"):
        OriginalData("0200", "000123", "1225103000", "123456789012", "")
    with pytest.raises(CompositeFieldError, match="up to 11 digits"):
        OriginalData("0200", "000123", "1225103000", "12 45", "")
    with pytest.raises(CompositeFieldError, match="pad must be '0' or ' '"):
        OriginalData("0200", "000123", "1225103000", "", "", pad="x")
    with pytest.raises(CompositeFieldError, match="42 characters"):
        OriginalData.parse(None)  # type: ignore[arg-type]


@st.composite
def original_data(draw: st.DrawFn) -> OriginalData:
    return OriginalData(draw(digits(4)), draw(digits(6)), draw(digits(10)),
                        draw(st.text(DIGITS, max_size=11)), draw(st.text(DIGITS, max_size=11)),
                        pad=draw(st.sampled_from("0 ")))


@st.composite
def padded_id(draw: st.DrawFn) -> str:
    """An 11-character id as real systems send it: zero-filled, space-filled either side, or blank."""
    value = draw(st.text(DIGITS, max_size=11))
    style = draw(st.sampled_from(("zeros", "trailing spaces", "leading spaces")))
    if style == "zeros":
        return value.rjust(11, "0")
    return value.ljust(11) if style == "trailing spaces" else value.rjust(11)


@PROPERTY
@given(original_data())
def test_field_90_parse_of_format_is_identity(original: OriginalData) -> None:
    again = OriginalData.parse(original.format())
    assert again == original
    assert again.refers_to_same(original)


@PROPERTY
@given(digits(20), padded_id(), padded_id())
def test_field_90_format_of_parse_is_identity(head: str, acquirer: str, forwarding: str) -> None:
    value = head + acquirer + forwarding
    assert OriginalData.parse(value).format() == value


# ------------------------------------------------------------------------------------------
# CUP field 60


def test_cup_60_sign_on() -> None:
    f60 = CupField60.parse("00000001003")
    assert f60 == CupField60("00", "000001", "003")
    assert f60.rest == ""
    assert f60.format() == "00000001003"


def test_cup_60_without_network_code_and_with_trailing_subfields() -> None:
    assert CupField60.parse("22000007") == CupField60("22", "000007")
    sale = CupField60.parse("2200000700050")
    assert (sale.txn_type, sale.batch, sale.network_code, sale.rest) == ("22", "000007", "000", "50")
    assert sale.format() == "2200000700050"


@pytest.mark.parametrize(("value", "fragment"), [
    ("0000000", "at least 60.1 (2) + 60.2 (6) = 8 digits, got 7"),
    ("000000010", "60.3 network management code must be 3 digits, got '0'"),
    ("0000000100", "60.3 network management code must be 3 digits, got '00'"),
    ("00000001A03", "must be digits"),
    ("", "at least"),
])
def test_cup_60_rejects_malformed_values(value: str, fragment: str) -> None:
    with pytest.raises(CompositeFieldError, match=re.escape(fragment)) as info:
        CupField60.parse(value)
    assert info.value.field == 60


def test_cup_60_rejects_bad_parts() -> None:
    with pytest.raises(CompositeFieldError, match=r"60\.2 batch number must be 6 digits"):
        CupField60("22", "12345")
    with pytest.raises(CompositeFieldError, match=r"without 60\.3"):
        CupField60("22", "000001", "", "5")
    with pytest.raises(CompositeFieldError, match=r"60\.4 onwards must be digits"):
        CupField60("22", "000001", "000", "x")


@PROPERTY
@given(st.one_of(digits(8), st.text(DIGITS, min_size=11, max_size=17)))
def test_cup_60_format_of_parse_is_identity(value: str) -> None:
    assert CupField60.parse(value).format() == value


@PROPERTY
@given(digits(2), digits(6), st.one_of(st.just(""), digits(3)), st.text(DIGITS, max_size=6))
def test_cup_60_parse_of_format_is_identity(txn: str, batch: str, code: str, rest: str) -> None:
    f60 = CupField60(txn, batch, code, rest if code else "")
    assert CupField60.parse(f60.format()) == f60


# ------------------------------------------------------------------------------------------
# CUP header


def test_cup_header_default_and_sign_on_demand() -> None:
    assert CupHeader.DEFAULT.format() == "603100000000"
    assert not CupHeader.DEFAULT.needs_sign_on
    assert CupHeader.parse("603100000000") == CupHeader.DEFAULT
    demand = CupHeader.parse("603103000000")
    assert demand.processing_requirement == "3"
    assert demand.needs_sign_on
    assert CupHeader.DEFAULT.with_requirement(CupHeader.SIGN_ON_AGAIN) == demand
    assert CupHeader.parse("602201000000").processing_requirement == "1"


@pytest.mark.parametrize(("value", "fragment"), [
    ("60310000000", "12 upper-case hex digits"),
    ("6031000000000", "12 upper-case hex digits"),
    ("60310000000g", "12 upper-case hex digits"),
    ("60310000000a", "12 upper-case hex digits"),
])
def test_cup_header_rejects_malformed_values(value: str, fragment: str) -> None:
    with pytest.raises(CompositeFieldError, match=fragment) as info:
        CupHeader.parse(value)
    assert info.value.field == "header"


def test_cup_header_rejects_bad_parts() -> None:
    with pytest.raises(CompositeFieldError, match="processing requirement must be 1"):
        CupHeader("60", "31", "0", "33", "000000")
    with pytest.raises(CompositeFieldError, match="processing requirement must be 1"):
        CupHeader.DEFAULT.with_requirement("")


@PROPERTY
@given(st.text("0123456789ABCDEF", min_size=12, max_size=12))
def test_cup_header_format_of_parse_is_identity(value: str) -> None:
    header = CupHeader.parse(value)
    assert header.format() == value
    assert CupHeader.parse(header.format()) == header


# ------------------------------------------------------------------------------------------
# Settlement totals


def test_totals_to_iso_fields_by_hand() -> None:
    totals = SettlementTotals(debit_count=3, debit_amount=3000, credit_count=1, credit_amount=500,
                              debit_reversal_count=1, debit_reversal_amount=1000)
    assert totals.to_iso_fields() == {
        74: "0000000001", 75: "0000000000", 76: "0000000003", 77: "0000000001",
        86: "0000000000000500", 87: "0000000000000000", 88: "0000000000003000", 89: "0000000000001000",
        97: "D0000000000001500",  # credits 500 - (debits 3000 - reversed 1000): debits exceed
    }


def test_totals_net_sign() -> None:
    assert SettlementTotals(0, 0, 2, 900).to_iso_fields()[97] == "C0000000000000900"
    assert SettlementTotals(0, 0, 0, 0).to_iso_fields()[97] == "C0000000000000000"
    assert SettlementTotals(1, 100, 1, 100).net_amount == 0
    assert SettlementTotals(1, 101, 1, 100).to_iso_fields()[97] == "D0000000000000001"


def test_totals_from_iso_fields_missing_fields_are_zero() -> None:
    assert SettlementTotals.from_iso_fields({76: "0000000002", 88: "0000000000002500"}) == \
        SettlementTotals(debit_count=2, debit_amount=2500, credit_count=0, credit_amount=0)
    assert SettlementTotals.from_iso_fields({}) == SettlementTotals(0, 0, 0, 0)


@pytest.mark.parametrize(("fields", "field", "fragment"), [
    ({76: "00000000x2"}, 76, "debit count must be 10 digits"),
    ({74: "1"}, 74, "credit count must be 10 digits"),
    ({88: "000000000000250"}, 88, "debit amount must be 16 digits"),
    ({89: "-000000000000250"}, 89, "debit reversal amount must be 16 digits"),
    ({97: "X0000000000000000"}, 97, "'C' or 'D' and 16 digits"),
    ({97: "C000000000000000"}, 97, "'C' or 'D' and 16 digits"),
    ({97: "C00000000000000x0"}, 97, "must be 16 digits"),
    ({88: "0000000000000100", 97: "C0000000000000100"}, 97, "does not match fields 86-89"),
])
def test_totals_from_iso_fields_names_the_bad_field(fields: dict[int, str], field: int,
                                                    fragment: str) -> None:
    with pytest.raises(CompositeFieldError, match=fragment) as info:
        SettlementTotals.from_iso_fields(fields)
    assert info.value.field == field


def test_totals_zero_net_accepts_either_sign() -> None:
    for sign in "CD":
        assert SettlementTotals.from_iso_fields({97: sign + "0" * 16}) == SettlementTotals(0, 0, 0, 0)


def test_totals_reject_bad_values_and_overflow() -> None:
    with pytest.raises(CompositeFieldError, match="debit count must be an integer >= 0") as info:
        SettlementTotals(-1, 0, 0, 0)
    assert info.value.field == 76
    with pytest.raises(CompositeFieldError, match="integer >= 0"):
        SettlementTotals(True, 0, 0, 0)  # type: ignore[arg-type]
    with pytest.raises(CompositeFieldError, match="integer >= 0"):
        SettlementTotals(0, 1.5, 0, 0)  # type: ignore[arg-type]
    with pytest.raises(CompositeFieldError, match="does not fit 10 digits") as info:
        SettlementTotals(0, 0, 10**10, 0).to_iso_fields()
    assert info.value.field == 74
    with pytest.raises(CompositeFieldError, match="does not fit 3 digits") as info:
        SettlementTotals(1000, 0, 0, 0).to_cup48()
    assert info.value.field == 48


@st.composite
def iso_totals(draw: st.DrawFn) -> SettlementTotals:
    """Totals as a ledger produces them: nothing is reversed more than it was done."""
    debit_count, credit_count = draw(st.integers(0, 10**10 - 1)), draw(st.integers(0, 10**10 - 1))
    debit_amount, credit_amount = draw(st.integers(0, 10**16 - 1)), draw(st.integers(0, 10**16 - 1))
    return SettlementTotals(
        debit_count, debit_amount, credit_count, credit_amount,
        debit_reversal_count=draw(st.integers(0, debit_count)),
        debit_reversal_amount=draw(st.integers(0, debit_amount)),
        credit_reversal_count=draw(st.integers(0, credit_count)),
        credit_reversal_amount=draw(st.integers(0, credit_amount)),
    )


def test_totals_net_that_does_not_fit_field_97_is_an_error() -> None:
    totals = SettlementTotals(0, 0, 0, 10**16 - 1, debit_reversal_amount=1)  # reversal of nothing
    with pytest.raises(CompositeFieldError, match="amount 10000000000000000 does not fit 16") as info:
        totals.to_iso_fields()
    assert info.value.field == 97


@PROPERTY
@given(iso_totals())
def test_totals_iso_round_trip(totals: SettlementTotals) -> None:
    fields = totals.to_iso_fields()
    assert set(fields) == {74, 75, 76, 77, 86, 87, 88, 89, 97}
    assert SettlementTotals.from_iso_fields(fields) == totals


def test_totals_to_cup48_by_hand() -> None:
    totals = SettlementTotals(debit_count=2, debit_amount=2000, credit_count=1, credit_amount=500)
    domestic = "000000002000" "002" "000000000500" "001" "0"
    assert totals.to_cup48() == domestic + "0" * 31
    assert SettlementTotals.from_cup48(domestic + "0" * 31) == (totals, "0")
    assert SettlementTotals.from_cup48(domestic[:-1] + "1") == (totals, "1")  # domestic section alone


def test_totals_cup48_reply_flag_and_foreign_section() -> None:
    domestic = SettlementTotals(1, 100, 0, 0)
    foreign = SettlementTotals(0, 0, 1, 250)
    value = domestic.to_cup48("1", foreign=foreign, foreign_flag="2")
    assert value == "000000000100001000000000000000" "1" "000000000000000000000000250001" "2"
    assert SettlementTotals.from_cup48(value) == (domestic, "1")
    assert SettlementTotals.from_cup48(value, foreign=True) == (foreign, "2")


def test_totals_cup48_are_net_of_reversals() -> None:
    gross = SettlementTotals(debit_count=3, debit_amount=3000, credit_count=0, credit_amount=0,
                             debit_reversal_count=1, debit_reversal_amount=1000)
    assert gross.netted() == SettlementTotals(2, 2000, 0, 0)
    assert SettlementTotals.from_cup48(gross.to_cup48())[0] == gross.netted()
    with pytest.raises(CompositeFieldError, match="debit reversal count exceeds debit count"):
        SettlementTotals(0, 0, 0, 0, debit_reversal_count=1).to_cup48()


@pytest.mark.parametrize(("value", "kwargs", "fragment"), [
    ("0" * 61, {}, "62 digits .* or 31 .*, got 61"),
    ("0" * 30 + "x" + "0" * 31, {}, "must be digits"),
    ("0" * 30 + "4" + "0" * 31, {}, "flag must be one of 0, 1, 2, 3, got '4'"),
    ("0" * 31, {"foreign": True}, "no foreign-card section"),
])
def test_totals_from_cup48_rejects_malformed_values(value: str, kwargs: dict[str, bool],
                                                    fragment: str) -> None:
    with pytest.raises(CompositeFieldError, match=fragment) as info:
        SettlementTotals.from_cup48(value, **kwargs)
    assert info.value.field == 48


def test_totals_to_cup48_rejects_bad_flag() -> None:
    with pytest.raises(CompositeFieldError, match="flag must be one of"):
        SettlementTotals(0, 0, 0, 0).to_cup48("9")


cup_counts = st.integers(0, 999)
cup_amounts = st.integers(0, 10**12 - 1)


@PROPERTY
@given(st.builds(SettlementTotals, cup_counts, cup_amounts, cup_counts, cup_amounts), st.sampled_from("0123"))
def test_totals_cup48_round_trip(totals: SettlementTotals, flag: str) -> None:
    value = totals.to_cup48(flag)
    assert len(value) == 62
    assert SettlementTotals.from_cup48(value) == (totals, flag)


# ------------------------------------------------------------------------------------------
# Masking


def test_mask_pan() -> None:
    assert mask_pan("4111111111111111") == "411111******1111"
    assert mask_pan("6222021234567890123") == "622202*********0123"
    assert mask_pan("12345678901") == "123456*8901"
    assert mask_pan("1234567890") == "******7890"
    assert mask_pan("123") == "**3"
    assert mask_pan("") == ""


def test_mask_track() -> None:
    assert mask_track("4111111111111111=261210112345") == "411111******1111=************"
    assert mask_track("4111111111111111D261210112345") == "411111******1111D************"
    assert mask_track(";4111111111111111=2612101?") == ";411111******1111=********"
    assert mask_track("B4111111111111111^DOE/JOHN^2612101") == "B411111******1111^****************"
    assert mask_track("4111111111111111") == "411111******1111"


def test_mask_field() -> None:
    assert mask_field(2, "4111111111111111") == "411111******1111"
    assert mask_field(35, "4111111111111111D2612") == "411111******1111D****"
    assert mask_field(52, "0123456789ABCDEF") == "*" * 16
    assert mask_field(4, "000000001000") == "000000001000"


@PROPERTY
@given(st.text(DIGITS, min_size=11, max_size=19))
def test_mask_pan_shows_at_most_first_six_and_last_four(pan: str) -> None:
    masked = mask_pan(pan)
    assert len(masked) == len(pan)
    assert masked[:6] == pan[:6] and masked[-4:] == pan[-4:]
    assert set(masked[6:-4]) == {"*"}


@PROPERTY
@given(st.text(DIGITS, min_size=12, max_size=19), st.sampled_from("=D"), st.text(DIGITS, max_size=20))
def test_mask_track_hides_everything_after_the_separator(pan: str, separator: str, rest: str) -> None:
    masked = mask_track(pan + separator + rest)
    assert masked == mask_pan(pan) + separator + "*" * len(rest)
