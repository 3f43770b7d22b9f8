"""What the pytest plugin (``switch.pytest_plugin``) is made of, usable without pytest.

- ``SwitchConfig``: the switch a test wants (scenario, dialect, framing, ledger, seed, profiles);
- ``start_process_switch`` / ``run_switch``: run it as a subprocess, or in the test's Trio loop;
- ``SwitchAdmin`` / ``AsyncSwitchAdmin`` (``switch.testkit.admin``, needs httpx): the admin API, typed;
- ``switch.testkit.checks``: ``assert_posted``, ``assert_not_posted``, ``assert_reversed_once`` over
  the ledger and the journal;
- ``switch.testkit.mutations``: the fuzzer's malformed frames; ``switch.testkit.wire``: ``assert_same_wire``.

Importing ``switch`` imports none of this; this package imports neither pytest nor hypothesis.
"""

from __future__ import annotations

from switch.testkit.checks import assert_not_posted, assert_posted, assert_reversed_once, reversal_requests
from switch.testkit.config import SwitchConfig
from switch.testkit.running import InProcessSwitch, LedgerChecks, ProcessSwitch, run_switch, start_process_switch
from switch.testkit.wire import assert_same_wire, wire_differences

__all__ = [
    "InProcessSwitch",
    "LedgerChecks",
    "ProcessSwitch",
    "SwitchConfig",
    "assert_not_posted",
    "assert_posted",
    "assert_reversed_once",
    "assert_same_wire",
    "reversal_requests",
    "run_switch",
    "start_process_switch",
    "wire_differences",
]
