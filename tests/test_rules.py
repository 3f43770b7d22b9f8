"""Response rules: predicate semantics, validation and first-match order (pure code)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switch.codec.message import Message
from switch.rules import Match, ResponseRule, ResponseRules, RuleError, pan_of

PAN = "4000000000000051"


def purchase(**updates: str | None) -> Message:
    """A plausible 0200 purchase; ``f4="..."`` replaces a field, ``f4=None`` removes it."""
    fields = {2: PAN, 3: "000000", 4: "000000001000", 11: "000123", 41: "T0000001", 42: "MERCHANT0000001"}
    for key, value in updates.items():
        number = int(key.removeprefix("f"))
        if value is None:
            fields.pop(number, None)
        else:
            fields[number] = value
    return Message("0200", fields)


# --- each predicate ---------------------------------------------------------------------------------


def test_empty_match_matches_every_message():
    assert Match().matches(purchase())
    assert Match().matches(Message("0800", {}))


def test_mti_is_exact():
    match = Match(mti=("0200", "0100"))
    assert match.matches(purchase())
    assert match.matches(Message("0100", purchase().fields))
    assert not match.matches(Message("0201", purchase().fields))
    assert not match.matches(Message("0210", purchase().fields))


def test_processing_code_is_a_prefix_of_field_3():
    refunds = Match(processing_code=("20",))
    assert refunds.matches(purchase(f3="200000"))
    assert not refunds.matches(purchase(f3="000000"))
    assert not refunds.matches(purchase(f3=None))
    assert Match(processing_code=("000000",)).matches(purchase())


def test_pan_prefix_on_field_2():
    match = Match(pan_prefix=("4000", "62"))
    assert match.matches(purchase())
    assert match.matches(purchase(f2="6200000000000005"))
    assert not match.matches(purchase(f2="5100000000000000"))


@pytest.mark.parametrize(
    "track2", [f"{PAN}=25121010000000000000", f"{PAN}D25121010000000000000", f";{PAN}=2512101?", PAN]
)
def test_pan_comes_from_track_2_when_field_2_is_absent(track2):
    message = purchase(f2=None, f35=track2)
    assert pan_of(message) == PAN
    assert Match(pan_prefix=(PAN,)).matches(message)


def test_field_2_wins_over_track_2():
    message = purchase(f2="5100000000000000", f35=f"{PAN}=2512")
    assert pan_of(message) == "5100000000000000"
    assert not Match(pan_prefix=(PAN,)).matches(message)


def test_no_pan_at_all_does_not_match_a_pan_predicate():
    message = purchase(f2=None)
    assert pan_of(message) is None
    assert not Match(pan_prefix=("4",)).matches(message)
    assert pan_of(purchase(f2=None, f35="=2512")) is None


@pytest.mark.parametrize(
    ("amount", "expected"),
    [
        ("000000000999", False),
        ("000000001000", True),
        ("000000001500", True),
        ("000000002000", True),
        ("000000002001", False),
    ],
)
def test_amount_bounds_are_inclusive_minor_units(amount, expected):
    assert Match(amount_min=1000, amount_max=2000).matches(purchase(f4=amount)) is expected


def test_amount_with_one_bound():
    assert Match(amount_min=1000).matches(purchase(f4="999999999999"))
    assert not Match(amount_min=1001).matches(purchase(f4="000000001000"))
    assert Match(amount_max=0).matches(purchase(f4="000000000000"))
    assert not Match(amount_max=0).matches(purchase(f4="000000000001"))


@pytest.mark.parametrize("amount", [None, "", "12AB", "-00000001000", " 1000", "٣٣", "1_000"])
def test_missing_or_malformed_amount_never_matches_an_amount_predicate(amount):
    message = purchase(f4=amount)
    assert not Match(amount_min=0).matches(message)
    assert not Match(amount_max=10**15).matches(message)
    assert Match().matches(message)  # no amount predicate: the amount is irrelevant


def test_terminal_ignores_trailing_spaces_on_both_sides():
    assert Match(terminal=("T1",)).matches(purchase(f41="T1      "))
    assert Match(terminal=("T1  ",)).matches(purchase(f41="T1"))
    assert not Match(terminal=("T1",)).matches(purchase(f41="  T1    "))
    assert not Match(terminal=("T1",)).matches(purchase(f41="T10     "))
    assert not Match(terminal=("T1",)).matches(purchase(f41=None))
    assert Match(terminal=("T1  ",)).terminal == ("T1",)


def test_field_values_are_exact():
    match = Match(fields={22: "051", 42: "MERCHANT0000001"})
    assert match.matches(purchase(f22="051"))
    assert not match.matches(purchase(f22="0510"))
    assert not match.matches(purchase(f22="05"))
    assert not match.matches(purchase())  # field 22 absent


def test_regex_field_values_must_match_the_whole_value():
    match = Match(fields={42: "re:MERCHANT0+[1-9]"})
    assert match.matches(purchase())
    assert not match.matches(purchase(f42="XMERCHANT0000001"))
    assert not match.matches(purchase(f42="MERCHANT00000019"))
    assert Match(fields={42: "re:.*"}).matches(purchase(f42=""))
    assert not Match(fields={42: "re:.*"}).matches(purchase(f42=None))


def test_regex_can_match_a_literal_that_starts_with_re_colon():
    assert Match(fields={48: "re:re:abc"}).matches(purchase(f48="re:abc"))
    assert not Match(fields={48: "re:abc"}).matches(purchase(f48="re:abc"))


def test_binary_fields_compare_as_upper_case_hex():
    message = purchase(f52="0123456789ABCDEF")
    assert Match(fields={52: "0123456789ABCDEF"}).matches(message)
    assert not Match(fields={52: "0123456789abcdef"}).matches(message)
    assert Match(fields={52: "re:(?i)0123456789abcdef"}).matches(message)


def test_all_criteria_must_hold():
    match = Match(
        mti=("0200",),
        processing_code=("00",),
        pan_prefix=("4000",),
        amount_min=500,
        amount_max=5000,
        terminal=("T0000001",),
        fields={42: "re:MERCHANT.*"},
    )
    assert match.matches(purchase())
    failing = [
        Message("0100", purchase().fields),
        purchase(f3="200000"),
        purchase(f2="5100000000000000"),
        purchase(f4="000000000100"),
        purchase(f4="000000010000"),
        purchase(f41="T0000002"),
        purchase(f42="SHOP"),
    ]
    for message in failing:
        assert not match.matches(message), message


def test_a_single_string_is_a_one_entry_list():
    assert Match(mti="0200").mti == ("0200",)  # type: ignore[arg-type]
    assert Match(pan_prefix=["4", "5"]).pan_prefix == ("4", "5")  # type: ignore[arg-type]


def test_non_string_field_values_in_a_message_do_not_match_or_raise():
    message = Message("0200", {2: 4000, 3: None, 4: 1000, 35: b"4000=", 41: ["T1"], 42: 1.5})  # type: ignore[dict-item]
    match_all = [
        Match(pan_prefix=("4",)),
        Match(processing_code=("0",)),
        Match(amount_min=0),
        Match(terminal=("T1",)),
        Match(fields={42: "1.5"}),
        Match(fields={42: "re:.*"}),
    ]
    for match in match_all:
        assert match.matches(message) is False
    assert Match().matches(message)


def test_a_non_message_does_not_match():
    assert Match(mti=("0200",)).matches(None) is False  # type: ignore[arg-type]


# --- validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "attribute"),
    [
        ({"mti": ("200",)}, "mti"),
        ({"mti": ("02A0",)}, "mti"),
        ({"mti": 200}, "mti"),
        ({"mti": {"0200": 1}}, "mti"),
        ({"processing_code": ("0000000",)}, "processing_code"),
        ({"processing_code": ("",)}, "processing_code"),
        ({"pan_prefix": ("4000-",)}, "pan_prefix"),
        ({"pan_prefix": ("4" * 20,)}, "pan_prefix"),
        ({"terminal": ("   ",)}, "terminal"),
        ({"terminal": (12345678,)}, "terminal"),
        ({"amount_min": -1}, "amount_min"),
        ({"amount_min": True}, "amount_min"),
        ({"amount_max": 1.5}, "amount_max"),
        ({"amount_max": "100"}, "amount_max"),
        ({"amount_min": 10, "amount_max": 9}, "amount_max"),
        ({"fields": {1: "x"}}, "fields.1"),
        ({"fields": {129: "x"}}, "fields.129"),
        ({"fields": {"22": "x"}}, "fields"),
        ({"fields": {65: "x"}}, "fields.65"),
        ({"fields": {22: 51}}, "fields.22"),
        ({"fields": {22: "re:[0-9"}}, "fields.22"),
        ({"fields": ["22"]}, "fields"),
    ],
)
def test_bad_predicates_are_refused_naming_the_attribute(kwargs, attribute):
    with pytest.raises(RuleError) as caught:
        Match(**kwargs)
    assert caught.value.attribute == attribute
    assert str(caught.value).startswith(f"{attribute}: ")


def test_regex_error_names_the_problem():
    with pytest.raises(RuleError, match=r"fields\.22: invalid regular expression"):
        Match(fields={22: "re:(unclosed"})


def test_amount_bounds_may_be_equal():
    assert Match(amount_min=5, amount_max=5).matches(purchase(f4="000000000005"))


@pytest.mark.parametrize(
    ("kwargs", "attribute"),
    [
        ({"name": ""}, "name"),
        ({"name": 7}, "name"),
        ({"match": "anything"}, "match"),
        ({"response_code": "5"}, "response_code"),
        ({"response_code": "051"}, "response_code"),
        ({"response_code": "5 "}, "response_code"),
        ({"response_code": "é1"}, "response_code"),
        ({"response_code": 51}, "response_code"),
        ({"fields": {39: "05"}}, "fields.39"),
        ({"fields": {44: 5}}, "fields.44"),
        ({"fields": {0: "x"}}, "fields.0"),
    ],
)
def test_bad_response_rules_are_refused(kwargs, attribute):
    arguments = {"name": "rule", "match": Match(), "response_code": "51"} | kwargs
    with pytest.raises(RuleError) as caught:
        ResponseRule(**arguments)
    assert caught.value.attribute == attribute


def test_response_codes_may_contain_letters():
    assert ResponseRule("cup mac", Match(), "A0").response_code == "A0"


def test_rules_are_immutable_and_hashable():
    match = Match(mti=("0200",), fields={44: "x"})
    rule = ResponseRule("referral", match, "01", {44: "CALL ISSUER"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.response_code = "00"  # type: ignore[misc]
    with pytest.raises(TypeError):
        rule.fields[44] = "changed"  # type: ignore[index]
    with pytest.raises(TypeError):
        match.fields[44] = "changed"  # type: ignore[index]
    assert rule == ResponseRule("referral", Match(mti=("0200",), fields={44: "x"}), "01", {44: "CALL ISSUER"})
    assert {rule, rule} == {rule}


def test_rule_fields_are_copied_not_shared():
    source = {44: "CALL ISSUER"}
    rule = ResponseRule("referral", Match(), "01", source)
    source[44] = "changed"
    assert rule.fields[44] == "CALL ISSUER"


# --- rule tables ------------------------------------------------------------------------------------


def test_first_matching_rule_in_order_wins():
    specific = ResponseRule("this card", Match(pan_prefix=(PAN,)), "51")
    broad = ResponseRule("all visa", Match(pan_prefix=("4",)), "05")
    big = ResponseRule("big amounts", Match(amount_min=100), "61")
    assert ResponseRules([specific, broad, big]).first_match(purchase()) is specific
    assert ResponseRules([broad, specific, big]).first_match(purchase()) is broad
    assert ResponseRules([big, broad]).first_match(purchase()) is big
    assert ResponseRules([specific, broad]).first_match(purchase(f2="4111111111111111")) is broad


def test_no_matching_rule_gives_none():
    rules = ResponseRules([ResponseRule("refunds", Match(processing_code=("20",)), "57")])
    assert rules.first_match(purchase()) is None
    assert ResponseRules([]).first_match(purchase()) is None


def test_rule_table_container_behaviour():
    first = ResponseRule("a", Match(mti=("0100",)), "05")
    second = ResponseRule("b", Match(mti=("0200",)), "51")
    rules = ResponseRules([first]) + ResponseRules([second])
    assert len(rules) == 2
    assert list(rules) == [first, second]
    assert rules.rules == (first, second)
    assert rules == ResponseRules((first, second))
    assert not ResponseRules([])
    assert "'a'" in repr(rules)
    with pytest.raises(TypeError, match="rule 0"):
        ResponseRules(["not a rule"])  # type: ignore[list-item]


# --- properties -------------------------------------------------------------------------------------

garbage_text = st.text(max_size=24) | st.sampled_from(["", " ", "0200", "000000", "=", "D", "re:", "٣"])
garbage_values = garbage_text | st.none() | st.integers() | st.binary(max_size=8) | st.floats()
garbage_messages = st.builds(
    Message,
    mti=garbage_text,
    fields=st.dictionaries(
        st.sampled_from([2, 3, 4, 11, 22, 35, 41, 42, 48, 52]) | st.integers(-5, 200),
        garbage_values,
        max_size=8,
    ),
)
matches = st.builds(
    Match,
    mti=st.lists(st.from_regex(r"[0-9]{4}", fullmatch=True), max_size=2).map(tuple),
    processing_code=st.lists(st.from_regex(r"[0-9]{1,6}", fullmatch=True), max_size=2).map(tuple),
    pan_prefix=st.lists(st.from_regex(r"[0-9]{1,19}", fullmatch=True), max_size=2).map(tuple),
    amount_min=st.none() | st.integers(0, 10**6),
    amount_max=st.none() | st.integers(10**6, 10**12),
    terminal=st.lists(st.from_regex(r"[A-Z0-9]{1,8}", fullmatch=True), max_size=2).map(tuple),
    fields=st.dictionaries(
        st.sampled_from([22, 35, 41, 42, 48]),
        st.sampled_from(["051", "re:.*", "re:[0-9]+", "re:(a|b)*c", "x"]),
        max_size=2,
    ),
)


@settings(max_examples=300, deadline=None)
@given(match=matches, message=garbage_messages)
def test_matching_never_raises_on_garbage(match, message):
    assert match._matches(message) in (True, False)  # the real logic, not the safety net
    assert match.matches(message) in (True, False)


@settings(max_examples=200, deadline=None)
@given(amount=st.integers(0, 10**12 - 1), low=st.integers(0, 10**12), high=st.integers(0, 10**12))
def test_amount_predicate_agrees_with_integer_comparison(amount, low, high):
    low, high = min(low, high), max(low, high)
    message = purchase(f4=f"{amount:012d}")
    assert Match(amount_min=low, amount_max=high).matches(message) is (low <= amount <= high)


@settings(max_examples=200, deadline=None)
@given(pan=st.from_regex(r"[0-9]{12,19}", fullmatch=True), cut=st.integers(1, 19))
def test_every_prefix_of_the_pan_matches(pan, cut):
    message = purchase(f2=pan)
    assert Match(pan_prefix=(pan[:cut],)).matches(message)
    assert Match(pan_prefix=(pan[:cut],)).matches(purchase(f2=None, f35=f"{pan}=2512101"))
