"""Every ``[host]`` setting is validated: a bad value in a scenario file is refused naming file:line and
the key, and the same value given to ``HostConfig`` directly (the admin API, the command line) is refused
naming the key. Plus the settings whose meaning a conversation shows (required fields the host cannot
do without)."""

from __future__ import annotations

from pathlib import Path

import pytest

from switch.host import HOST_SETTINGS, HostConfig
from switch.scenario import HOST_KEYS, ScenarioError, load_scenario

BAD_VALUES: dict[str, object] = {
    "require_signon": '"yes"',
    "signon_required_code": '"A00"',
    "session_timeout": '"soon"',
    "stale_check": "1",
    "settlement_host_totals": '"yes"',
    "stale_window": "-5",
    "stale_code": "22",
    "timezone": '"+25:00"',
    "unknown_original_code": '"05"',
    "reversal_mismatch_code": '""',
    "duplicate_window": '"0s"',
    "resend_answer": '"95"',
    "settlement_compare": '"both"',
    "luhn_code": '"on"',
    "balance": "-1",
    "required_fields": "{ financial = [11] }",
    "mac_failure_code": "63",
    "pin_format_code": '"9"',
}


def test_every_documented_key_has_a_bad_value_here() -> None:
    assert set(BAD_VALUES) == set(HOST_KEYS) | set(HOST_SETTINGS)


@pytest.mark.parametrize("key", sorted(BAD_VALUES))
def test_a_bad_value_names_file_line_and_key(key: str, tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    other = "require_signon = true" if key != "require_signon" else "stale_check = false"
    path.write_text(f'[scenario]\nname = "mine"\n\n[host]\n{other}\n{key} = {BAD_VALUES[key]}\n')
    with pytest.raises(ScenarioError) as caught:
        load_scenario(str(path))
    assert f"mine.toml:6: host.{key}: " in str(caught.value)


@pytest.mark.parametrize(("key", "value"), [
    ("require_signon", "yes"), ("stale_check", 1), ("stale_code", 22), ("timezone", "+25:00"),
    ("resend_answer", "95"), ("settlement_compare", "both"), ("luhn_code", "on"), ("balance", -1),
    ("required_fields", {"financial": [11]}), ("required_fields", {"reversal": []}),
    ("required_fields", {"colour": [11]}), ("session_timeout", 0), ("duplicate_window", float("inf")),
])
def test_host_config_names_the_key(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"invalid host configuration: {key}"):
        HostConfig(**{key: value})


def test_required_fields_cannot_drop_the_stan_or_the_amount() -> None:
    """Without 11 (and 4 for a financial request) the host has no transaction identity: such a
    setting is refused when loaded rather than letting requests without them crash or double-book."""
    with pytest.raises(ValueError, match="financial must include fields 4 and 11"):
        HostConfig(required_fields={"financial": [2]})
    for name in ("reversal", "upload", "settlement"):
        with pytest.raises(ValueError, match=f"{name} must include field 11"):
            HostConfig(required_fields={name: []})
    assert HostConfig(required_fields={"network": []}).required_fields == {"network": ()}
