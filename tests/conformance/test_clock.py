"""Rules 3 and 4: no decline on clock skew unless opted in (order-expired), for CUP too; the 0810
carries the host's local date/time (12 hhmmss, 13 MMDD) so terminals can set their clocks."""

from __future__ import annotations

from datetime import timedelta

import pytest

from switch.codec import Message
from tests.conformance.wire import talk

FAMILIES = ("iso87", "cup")


@pytest.mark.parametrize("family", FAMILIES)
def test_terminal_on_local_time_is_served_by_default(family: str) -> None:
    t = talk(family)
    eight_hours_ahead = t.clock + timedelta(hours=8, minutes=3)
    sale = t.sale(1000, local=(eight_hours_ahead.strftime("%H%M%S"), eight_hours_ahead.strftime("%m%d")))
    if family == "iso87":
        sale[7] = eight_hours_ahead.strftime("%m%d%H%M%S")
    assert t.send("0200", sale)[39] == "00"


def test_stale_field_7_declined_only_in_order_expired() -> None:
    t = talk("iso87", "order-expired")
    sale = t.sale(1000)
    sale[7] = (t.clock - timedelta(seconds=60)).strftime("%m%d%H%M%S")
    response = t.send("0200", sale)
    assert response[39] == "22"
    assert t.last is not None and "order" not in t.last.reason.lower()
    assert t.ledger.postings()[0].approved is False


def test_cup_stale_local_time_declined_in_order_expired() -> None:
    t = talk("cup", "order-expired")
    then = t.clock - timedelta(minutes=5)
    assert t.send("0200", t.sale(1000, local=(then.strftime("%H%M%S"), then.strftime("%m%d"))))[39] == "22"
    now = t.clock
    assert t.send("0200", t.sale(1000, local=(now.strftime("%H%M%S"), now.strftime("%m%d"))))[39] == "00"


def test_cup_local_time_is_read_in_the_host_time_zone() -> None:
    t = talk("cup", "order-expired", timezone="+08:00")
    beijing = t.clock + timedelta(hours=8)
    assert t.send("0200", t.sale(1000, local=(beijing.strftime("%H%M%S"), beijing.strftime("%m%d"))))[39] == "00"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("zone", "hours"), [("UTC", 0), ("+08:00", 8), ("-05:00", -5)])
def test_signon_reply_carries_host_local_time(family: str, zone: str, hours: int) -> None:
    t = talk(family, signed_on=False, timezone=zone)
    reply: Message = t.signon()
    local = t.clock + timedelta(hours=hours)
    assert (reply[39], reply[12], reply[13]) == ("00", local.strftime("%H%M%S"), local.strftime("%m%d"))


def test_echo_reply_carries_host_local_time() -> None:
    t = talk("iso87", signed_on=False)
    reply = t.send("0800", {7: t.f7(), 11: t.next_stan(), 41: "TERM0001", 70: "301"})
    assert (reply[39], reply[12], reply[13]) == ("00", t.clock.strftime("%H%M%S"), t.clock.strftime("%m%d"))
