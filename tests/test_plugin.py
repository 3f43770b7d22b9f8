"""The pytest plugin's fixtures, used as a user would (the entry point loads it into this suite too).

Real switches on loopback: a subprocess (``iso_switch``) or served by the test's loop (``iso_switch_trio``).
"""

from __future__ import annotations

import pytest

from switch.profiles import example_profiles_path
from switch.testkit.admin import AdminError, AsyncSwitchAdmin, SwitchAdmin
from switch.testkit.running import InProcessSwitch, ProcessSwitch
from terminal.api import OutcomeKind, Terminal

LOSE_FIRST_SALE = {"id": "lose-0210", "when": {"mti": ["0200"], "first": 1}, "drop_response": True}


def test_the_plugin_is_registered_by_its_entry_point(pytestconfig: pytest.Config) -> None:
    plugin = pytestconfig.pluginmanager.get_plugin("iso8583_switch")
    assert plugin is not None and plugin.__name__ == "switch.pytest_plugin"


async def test_subprocess_switch_terminal_and_admin(iso_switch: ProcessSwitch, switch_admin: SwitchAdmin,
                                                    iso_terminal: Terminal) -> None:
    assert iso_switch.host == "127.0.0.1" and iso_switch.port > 0
    assert iso_switch.admin_url.startswith("http://127.0.0.1:") and switch_admin is iso_switch.admin
    assert switch_admin.health()["dialect"] == "iso87-binary"
    sale = await iso_terminal.purchase(1500)
    assert sale.kind is OutcomeKind.APPROVED, sale.text
    posting = iso_switch.assert_posted(sale.stan, amount=1500, reversed=False)
    assert posting.rrn == sale.rrn
    assert [entry.mti for entry in iso_switch.journal(stan=sale.stan)] == ["0200", "0210"]
    with pytest.raises(AdminError) as failure:
        switch_admin.delete_fault("no-such-rule")
    assert failure.value.status == 404


@pytest.mark.iso_switch(scenario="system-timeout", seed=7)
def test_marker_chooses_scenario_and_seed(switch_admin: SwitchAdmin) -> None:
    health = switch_admin.health()
    assert (health["scenario"], health["seed"]) == ("system-timeout", 7)


@pytest.mark.parametrize("iso_switch", [{"dialect": "iso87-ascii", "framing": "ascii4", "seed": 3}], indirect=True)
@pytest.mark.iso_switch(seed=99)
async def test_indirect_parameter_wins_and_the_terminal_follows_the_framing(iso_switch: ProcessSwitch,
                                                                             iso_terminal: Terminal) -> None:
    assert iso_switch.framing.length_header == "ascii4" and iso_switch.admin.health()["seed"] == 3
    assert (await iso_terminal.purchase(200)).approved  # a terminal framing otherwise would get no answer


@pytest.mark.iso_terminal(response_timeout=1.0)
async def test_lost_answer_reversed_once_through_the_subprocess(iso_switch: ProcessSwitch, switch_admin: SwitchAdmin,
                                                               iso_terminal: Terminal) -> None:
    switch_admin.add_fault(LOSE_FIRST_SALE)
    sale = await iso_terminal.purchase(1234)
    assert sale.kind is OutcomeKind.REVERSED, sale.text
    iso_switch.assert_reversed_once(sale.stan)
    kept = await iso_terminal.purchase(99)
    with pytest.raises(AssertionError, match="not reversed, expected reversed"):
        iso_switch.assert_reversed_once(kept.stan)


@pytest.mark.iso_dialects
async def test_every_dialect_in_process(iso_dialect: str, iso_switch_trio: InProcessSwitch,
                                        iso_terminal_trio: Terminal) -> None:
    assert iso_switch_trio.dialect == iso_dialect
    sale = await iso_terminal_trio.purchase(500)
    assert sale.kind is OutcomeKind.APPROVED, sale.text
    iso_switch_trio.assert_posted(sale.stan, amount=500)


@pytest.mark.iso_dialects("cup-pos")
@pytest.mark.iso_terminal(response_timeout=1.0)
async def test_in_process_admin_and_reversal(iso_switch_trio: InProcessSwitch, iso_terminal_trio: Terminal) -> None:
    assert iso_switch_trio.admin_url is not None
    async with AsyncSwitchAdmin(iso_switch_trio.admin_url) as admin:
        assert (await admin.add_fault(LOSE_FIRST_SALE))["id"] == "lose-0210"
        sale = await iso_terminal_trio.purchase(1234)
        assert sale.kind is OutcomeKind.REVERSED, sale.text
        iso_switch_trio.assert_reversed_once(sale.stan)
        assert [p.stan for p in await admin.postings()] == [sale.stan]


@pytest.mark.iso_switch(profiles=str(example_profiles_path()))
@pytest.mark.iso_terminal(terminal_id="ISO00001", response_timeout=5.0)
async def test_a_profile_file_gives_the_terminal_its_keys(iso_switch_trio: InProcessSwitch,
                                                         iso_terminal_trio: Terminal) -> None:
    profile = iso_terminal_trio.profile
    assert profile.terminal_id == "ISO00001" and profile.mac != "none" and profile.response_timeout == 5.0
    sale = await iso_terminal_trio.purchase(300)  # MACed with the keys of the sign-on
    assert sale.approved, sale.text
    iso_switch_trio.assert_posted(sale.stan, terminal="ISO00001", amount=300)
