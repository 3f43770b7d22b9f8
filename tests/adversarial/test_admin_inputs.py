"""Issue 12 items 3, 4 (health), 7 and 9 (Host header, NUL): every admin input is applied or refused with 4xx.

Real objects throughout (fault engine, host, ledger, group committer); the admin app is called as
an ASGI app, so no socket or sleep is needed.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from switch.admin import MAX_BODY_BYTES, SwitchRuntime, create_admin_app
from switch.codec import Codec, Message, load_dialect
from switch.commit import GroupCommitter
from switch.faults import FaultEngine, parse_fault_rules
from switch.host import Host, HostConfig
from switch.journal import Journal
from switch.ledger import Ledger
from switch.metrics import SwitchMetrics
from switch.scenario import ScenarioError, parse_scenario

DIALECT = load_dialect("iso87-binary")
NOW = datetime(2026, 11, 22, 10, 30, 0, tzinfo=UTC)
F7 = NOW.strftime("%m%d%H%M%S")


def make_runtime(**overrides: Any) -> SwitchRuntime:
    ledger = overrides.pop("ledger", None) or Ledger.open(":memory:")
    host = overrides.pop("host", None) or Host(HostConfig.for_dialect(DIALECT, require_signon=False), ledger)
    settings: dict[str, Any] = dict(faults=FaultEngine(seed=7), host=host, ledger=ledger,
                                    journal=Journal(Codec(DIALECT)), metrics=SwitchMetrics(),
                                    dialect_name=DIALECT.name, dialect=DIALECT)
    settings.update(overrides)
    return SwitchRuntime(**settings)


@pytest.fixture
def runtime() -> SwitchRuntime:
    return make_runtime()


@pytest.fixture
async def client(runtime: SwitchRuntime) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_admin_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        yield http


def purchase(stan: int) -> Message:
    return Message("0200", {2: "4761739001010010", 3: "000000", 4: "000000001000", 7: F7, 11: f"{stan:06d}",
                            12: F7[4:], 13: F7[:4], 22: "051", 25: "00", 41: "TERM0001",
                            42: "MERCHANT0000001", 49: "840"})


# ---------------------------------------------------------------------------------------------
# Item 3: durations and distribution parameters are finite and bounded, and a refused rule is never installed

OUT_OF_BOUNDS = [
    ({"delay_request": 1e308}, "delay_request"),
    ({"delay_request": 1e12}, "delay_request"),
    ({"delay_response": "100000h"}, "delay_response"),
    ({"delay_response": {"lognormal": {"median": "100ms", "sigma": 1000}}}, "delay_response.lognormal.sigma"),
    ({"delay_response": {"lognormal": {"median": 1e300, "sigma": 0.5}}}, "delay_response.lognormal.median"),
    ({"delay_response": {"uniform": ["1s", 1e308]}}, "delay_response.uniform[2]"),
    ({"delay_response": {"normal": {"mean": "1s", "stddev": 1e200}}}, "delay_response.normal.stddev"),
    ({"delay_response": {"fixed": "1s", "cap": 1e308}}, "delay_response.cap"),
    ({"slice": {"bytes": 8, "pause": 1e308}}, "slice.pause"),
    ({"slice": {"bytes": 10**30, "pause": "1ms"}}, "slice.bytes"),
    ({"bandwidth": 10**30}, "bandwidth"),
    ({"duplicate": True, "when": {"after": 1e308}}, "when.after"),
    ({"duplicate": True, "when": {"every": 10**30}}, "when.every"),
    ({"duplicate": True, "when": {"connection": [10**30]}}, "when.connection[1]"),
]


@pytest.mark.parametrize(("table", "key"), OUT_OF_BOUNDS)
async def test_out_of_bounds_values_are_422_naming_the_key_and_never_installed(
        table: dict[str, Any], key: str, runtime: SwitchRuntime, client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/faults", json={"id": "bad", **table})
    assert response.status_code == 422, response.text
    loc = response.json()["detail"][0]["loc"]
    assert loc[0] == "body" and ".".join(loc[1:]) == key
    assert runtime.faults.rules == ()
    # the engine and every read endpoint keep working
    assert (await client.get("/api/v1/faults")).status_code == 200
    assert (await client.get("/api/v1/faults/bad")).status_code == 404


async def test_a_patch_out_of_bounds_is_refused_and_keeps_the_rule(runtime: SwitchRuntime,
                                                                   client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/v1/faults", json={"id": "slow", "delay_request": "1s"})).status_code == 201
    response = await client.patch("/api/v1/faults/slow", json={"delay_request": 1e308})
    assert response.status_code == 422
    assert (await client.get("/api/v1/faults/slow")).json()["delay_request"] == "1s"


@pytest.mark.parametrize(("table", "key"), OUT_OF_BOUNDS)
def test_scenario_files_use_the_same_bounds_with_line_and_key(table: dict[str, Any], key: str) -> None:
    def toml_value(value: Any) -> str:
        if isinstance(value, dict):
            return "{ " + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + " }"
        if isinstance(value, list):
            return "[" + ", ".join(toml_value(item) for item in value) + "]"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            return f'"{value}"'
        return repr(value)

    text = "[scenario]\nname = 'bounds'\n\n[[fault]]\nid = 'bad'\n" + "".join(
        f"{key} = {toml_value(value)}\n" for key, value in table.items())
    with pytest.raises(ScenarioError) as caught:
        parse_fault_rules(parse_scenario(text, "bounds.toml"))
    error = caught.value
    assert error.path == "bounds.toml"
    assert error.line is not None and error.line >= 6
    assert error.key == f"fault[1].{key}"


def test_a_huge_lognormal_draw_is_still_a_bounded_delay() -> None:
    engine = FaultEngine(seed=1)
    engine.add({"delay_response": {"lognormal": {"median": "1h", "sigma": 10}}})
    delays = [engine.decide(purchase(n), connection=1, elapsed=0.0).delay_response for n in range(1, 200)]
    assert all(0 <= delay <= 3600 for delay in delays)


# ---------------------------------------------------------------------------------------------
# Item 7: bodies and strings are capped


async def test_a_body_over_the_cap_is_413(runtime: SwitchRuntime, client: httpx.AsyncClient) -> None:
    name = "x" * (MAX_BODY_BYTES + 10)
    response = await client.post("/api/v1/faults", json={"id": "big", "name": name, "duplicate": True})
    assert response.status_code == 413
    assert runtime.faults.rules == ()


async def test_a_streamed_body_without_length_is_cut_at_the_cap(runtime: SwitchRuntime,
                                                                 client: httpx.AsyncClient) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"id": "big", "duplicate": true, "name": "'
        for _ in range(64):  # 4 MiB in all, if it were all read
            sent += 1
            yield b"y" * 65536
        yield b'"}'

    response = await client.post("/api/v1/faults", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert runtime.faults.rules == ()


@pytest.mark.parametrize(("table", "loc"), [
    ({"id": "long-name", "name": "n" * 5000, "duplicate": True}, ["body", "name"]),
    ({"id": "i" * 5000, "duplicate": True}, ["body", "id"]),
    ({"duplicate": True, "when": {"fields": {"48": "re:" + "a" * 5000}}}, ["body", "when", "fields", "48"]),
    ({"duplicate": True, "when": {"fields": {"48": "a" * 20_000}}}, ["body", "when", "fields", "48"]),
    ({"duplicate": True, "when": {"mti": ["0200"] * 5000}}, ["body", "when", "mti"]),
    ({"duplicate": True, "when": {"connection": list(range(1, 5001))}}, ["body", "when", "connection"]),
])
async def test_long_strings_are_422(table: dict[str, Any], loc: list[Any], runtime: SwitchRuntime,
                                    client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/faults", json=table)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc
    assert runtime.faults.rules == ()


async def test_a_long_scenario_name_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/scenario", json={"name": "s" * 100_000})
    assert response.status_code == 422


# ---------------------------------------------------------------------------------------------
# Item 9: Host header (DNS rebinding) and NUL in a scenario name


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8584", "localhost.evil.example"])
async def test_a_foreign_host_header_is_refused(host: str, runtime: SwitchRuntime) -> None:
    transport = httpx.ASGITransport(app=create_admin_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        response = await http.post("/api/v1/faults", json={"id": "x", "duplicate": True}, headers={"host": host})
        assert response.status_code == 421
        assert (await http.get("/health", headers={"host": host})).status_code == 421
    assert runtime.faults.rules == ()


@pytest.mark.parametrize("host", ["localhost", "localhost:8584", "127.0.0.1:8584", "[::1]:8584", "10.1.2.3"])
async def test_local_names_and_addresses_are_accepted(host: str, client: httpx.AsyncClient) -> None:
    assert (await client.get("/health", headers={"host": host})).status_code == 200


async def test_allowed_host_names_can_be_added() -> None:
    runtime = make_runtime(allowed_hosts=("switch.lab",))
    transport = httpx.ASGITransport(app=create_admin_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://switch.lab:8584") as http:
        assert (await http.get("/health")).status_code == 200
        assert (await http.get("/health", headers={"host": "other.lab"})).status_code == 421


@pytest.mark.parametrize("name", ["healthy\x00", "\x00", "../\x00/etc/passwd.toml", "healthy\n"])
async def test_control_characters_in_a_scenario_name_are_422(name: str, runtime: SwitchRuntime,
                                                              client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/scenario", json={"name": name})
    assert response.status_code == 422, response.text
    assert runtime.scenario == "default"


# ---------------------------------------------------------------------------------------------
# Item 4: device and FIFO names are refused at once; health reports a stalled commit path


@pytest.mark.parametrize("name", ["/dev/zero", "/dev/urandom", "/etc/passwd", "../../../../dev/zero"])
async def test_devices_and_files_outside_the_scenario_paths_are_refused_quickly(
        name: str, tmp_path: Path) -> None:
    runtime = make_runtime(scenario_paths=(str(tmp_path),))
    transport = httpx.ASGITransport(app=create_admin_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        with trio.fail_after(5):
            response = await http.post("/api/v1/scenario", json={"name": name})
    assert response.status_code == 422, response.text
    assert runtime.scenario == "default"


async def test_a_fifo_in_a_scenario_directory_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.toml"
    import os

    os.mkfifo(fifo)
    (tmp_path / "dev.toml").symlink_to("/dev/zero")
    runtime = make_runtime(scenario_paths=(str(tmp_path),))
    transport = httpx.ASGITransport(app=create_admin_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:  # many at once: none may hang or take the pool
                results: list[int] = []

                async def load(name: str) -> None:
                    results.append((await http.post("/api/v1/scenario", json={"name": name})).status_code)

                for index in range(45):
                    nursery.start_soon(load, "pipe.toml" if index % 2 else "dev.toml")
    assert results == [422] * 45


async def test_health_reports_a_stalled_commit_path(mock_clock: trio.testing.MockClock,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = Ledger.open(":memory:")
    host = Host(HostConfig.for_dialect(DIALECT, require_signon=False), ledger)
    release = threading.Event()
    real_flush = ledger.flush

    def stuck_flush() -> int:  # a disk that stopped answering
        release.wait(30)
        return real_flush()

    monkeypatch.setattr(ledger, "flush", stuck_flush)
    committer = GroupCommitter(ledger)
    runtime = make_runtime(ledger=ledger, host=host, committer=committer, commit_stall_seconds=10.0)
    transport = httpx.ASGITransport(app=create_admin_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http, \
            trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        decision = host.handle(purchase(1), NOW)
        assert decision.commit_seq
        nursery.start_soon(committer.wait_committed, decision.commit_seq)
        await trio.testing.wait_all_tasks_blocked()
        assert (await http.get("/health")).status_code == 200
        mock_clock.jump(11)
        response = await http.get("/health")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "unhealthy"
        assert "commit path stalled" in body["problems"][0]
        release.set()
        await committer.wait_committed(decision.commit_seq)
        response = await http.get("/health")
        assert response.status_code == 200, response.text
        nursery.cancel_scope.cancel()
