"""``switch.testing.SwitchProcess``: the helper users' suites (and ours) start a real switch with."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from switch.testing import SwitchProcess, SwitchStartError


def test_start_reads_every_port_and_stop_closes_the_ledger_cleanly(tmp_path: Path) -> None:
    with SwitchProcess.start(["--ledger", str(tmp_path / "ledger.sqlite"), "--journal", "none",
                              "--also-listen", "127.0.0.1:0,dialect=cup-pos"]) as switch:
        assert switch.port and len(switch.also_ports) == 1 and switch.admin_url is not None
        for port in (switch.port, *switch.also_ports):
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
    assert switch.returncode == 0 and switch.closed_cleanly, switch.text


def test_a_switch_that_cannot_start_raises_with_what_it_said(tmp_path: Path) -> None:
    with pytest.raises(SwitchStartError) as failed:
        SwitchProcess.start(["--ledger", str(tmp_path / "ledger.sqlite"), "--scenario", "no-such-scenario"])
    assert "exited with status" in str(failed.value) and "no-such-scenario" in str(failed.value)
