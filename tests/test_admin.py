"""The admin API: every endpoint through an ASGI client, and once over real loopback HTTP with hypercorn.

Real objects throughout (fault engine, journal, host, ledger, metrics): the point is that a request
changes what the switch will do, not that a handler calls a method.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from switch.admin import SwitchRuntime, create_admin_app, serve_admin
from switch.codec import Codec, Message, load_dialect
from switch.codec.composite import SettlementTotals
from switch.faults import FaultEngine
from switch.host import Host, HostConfig
from switch.journal import Journal
from switch.ledger import Ledger
from switch.metrics import SwitchMetrics
from switch.rules import Match, ResponseRule, ResponseRules
from switch.scenario import default_scenario

DIALECT = load_dialect("iso87-binary")
CODEC = Codec(DIALECT)
NOW = datetime(2026, 11, 22, 10, 30, 0, tzinfo=UTC)
F7 = NOW.strftime("%m%d%H%M%S")
TOKEN = "s3cret-token"
DROP_0210 = {"id": "lose-0210", "when": {"mti": ["0200"]}, "drop_response": True}


# ---------------------------------------------------------------------------------------------
# Fixtures


def purchase(stan: int, amount: int = 1000, terminal: str = "TERM0001") -> Message:
    return Message("0200", {2: "4761739001010010", 3: "000000", 4: f"{amount:012d}", 7: F7, 11: f"{stan:06d}",
                            12: F7[4:], 13: F7[:4], 22: "051", 25: "00", 41: terminal,
                            42: "MERCHANT0000001", 49: "840"})


class StepClock:
    """Journal time under the test's control."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_runtime(**overrides: Any) -> SwitchRuntime:
    ledger = Ledger.open(":memory:")
    host = Host(HostConfig.for_dialect(DIALECT), ledger, default_scenario().response_rules)
    settings: dict[str, Any] = dict(faults=FaultEngine(seed=7), host=host, ledger=ledger,
                                    journal=Journal(CODEC), metrics=SwitchMetrics(),
                                    dialect_name=DIALECT.name, dialect=DIALECT, seed=None)
    settings.update(overrides)
    return SwitchRuntime(**settings)


@pytest.fixture
def clock() -> StepClock:
    return StepClock(1000.0)


@pytest.fixture
def runtime(clock: StepClock, tmp_path: Path) -> SwitchRuntime:
    # scenario files written by the tests are loadable: tmp_path is a --scenario-path directory
    return make_runtime(journal=Journal(CODEC, clock=clock), scenario_paths=(str(tmp_path),))


@pytest.fixture
async def client(runtime: SwitchRuntime) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_admin_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        yield http


def detail_locs(response: httpx.Response) -> list[list[Any]]:
    assert response.status_code == 422, response.text
    return [entry["loc"] for entry in response.json()["detail"]]


# ---------------------------------------------------------------------------------------------
# Health, OpenAPI, metrics


async def test_health_reports_mode_and_connections(runtime: SwitchRuntime, client: httpx.AsyncClient) -> None:
    runtime.metrics.connection_opened()
    runtime.metrics.connection_opened()
    runtime.faults.maintenance = "refuse"
    body = (await client.get("/health")).json()
    assert body["status"] == "ok"
    assert body["connections_open"] == 2
    assert body["maintenance"] == "refuse"
    assert body["scenario"] == "default"
    assert body["seed"] == 7
    assert body["dialect"] == DIALECT.name
    assert body["uptime_seconds"] >= 0


async def test_openapi_document_lists_the_endpoints(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in ("/health", "/metrics", "/api/v1/faults", "/api/v1/faults/{rule_id}", "/api/v1/scenario",
                 "/api/v1/reset", "/api/v1/maintenance", "/api/v1/journal", "/api/v1/ledger/postings",
                 "/api/v1/ledger/batches", "/api/v1/ledger/discrepancies"):
        assert path in paths, path
    assert set(paths["/api/v1/faults/{rule_id}"]) == {"get", "patch", "delete"}
    assert (await client.get("/docs")).status_code == 200


async def test_metrics_endpoint_serves_prometheus_text(runtime: SwitchRuntime, client: httpx.AsyncClient) -> None:
    runtime.metrics.message("0200", "00")
    runtime.metrics.fault("drop-response")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'iso_switch_messages_total{mti="0200",response_code="00"} 1.0' in text
    # matched by label, not by the whole line: further labels (the rule id) may follow the action
    assert re.search(r'^iso_switch_faults_applied_total\{action="drop-response"[^}]*\} 1\.0$', text, re.MULTILINE), text


# ---------------------------------------------------------------------------------------------
# Fault rules


def decide(runtime: SwitchRuntime, message: Message) -> tuple[str, ...]:
    """What the engine would do to the next message: the admin API's effect as the server sees it."""
    return runtime.faults.decide(message, connection=1, elapsed=1.0).actions_applied()


async def test_fault_rules_add_get_patch_delete_change_the_engine(runtime: SwitchRuntime,
                                                                  client: httpx.AsyncClient) -> None:
    assert decide(runtime, purchase(1)) == ()
    added = await client.post("/api/v1/faults", json=DROP_0210)
    assert added.status_code == 201, added.text
    assert added.json()["id"] == "lose-0210"
    assert decide(runtime, purchase(2)) == ("drop_response",)

    listed = (await client.get("/api/v1/faults")).json()
    assert [rule["id"] for rule in listed["rules"]] == ["lose-0210"]
    assert listed["maintenance"] == {"mode": "off", "code": "91"}
    assert listed["seed"] == 7
    assert listed["counters"] == {"lose-0210": {"matched": 1, "fired": 1}}

    fetched = (await client.get("/api/v1/faults/lose-0210")).json()
    assert fetched["drop_response"] is True and fetched["when"] == {"mti": ["0200"]}

    patched = await client.patch("/api/v1/faults/lose-0210", json={"drop_response": None, "respond": "96"})
    assert patched.status_code == 200, patched.text
    assert patched.json()["respond"] == "96" and "drop_response" not in patched.json()
    assert decide(runtime, purchase(3)) == ("respond",)

    deleted = await client.delete("/api/v1/faults/lose-0210")
    assert deleted.status_code == 200
    assert deleted.json()["deleted"]["id"] == "lose-0210"
    assert runtime.faults.rules == ()
    assert decide(runtime, purchase(4)) == ()


async def test_added_rule_without_id_gets_one(runtime: SwitchRuntime, client: httpx.AsyncClient) -> None:
    first = (await client.post("/api/v1/faults", json={"drop_request": True})).json()
    second = (await client.post("/api/v1/faults", json={"duplicate": True})).json()
    assert first["id"] != second["id"]
    assert (await client.get(f"/api/v1/faults/{second['id']}")).json()["duplicate"] is True


@pytest.mark.parametrize(
    ("payload", "loc", "reason"),
    [
        ({"when": {"mti": ["0200"]}}, ["body"], "has no action"),
        ({"drop_response": True, "explode": 1}, ["body", "explode"], "unknown key"),
        ({"drop_response": True, "probability": 2}, ["body", "probability"], "from 0 to 1"),
        ({"drop_response": True, "when": {"nth": 0}}, ["body", "when", "nth"], "integer >= 1"),
        ({"respond": "9"}, ["body", "respond"], "response code"),
    ],
)
async def test_bad_fault_rule_is_422_naming_the_key(runtime: SwitchRuntime, client: httpx.AsyncClient,
                                                    payload: dict[str, Any], loc: list[str], reason: str) -> None:
    response = await client.post("/api/v1/faults", json=payload)
    assert detail_locs(response) == [loc]
    assert reason in response.json()["detail"][0]["msg"]
    assert runtime.faults.rules == ()


async def test_duplicate_rule_id_is_422(runtime: SwitchRuntime, client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/v1/faults", json=DROP_0210)).status_code == 201
    response = await client.post("/api/v1/faults", json={**DROP_0210, "drop_response": False, "duplicate": True})
    assert detail_locs(response) == [["body", "id"]]
    assert runtime.faults.rules[0].to_dict()["drop_response"] is True


@pytest.mark.parametrize("body", [[1, 2], "drop", 42])
async def test_fault_rule_must_be_a_json_object(client: httpx.AsyncClient, body: Any) -> None:
    assert detail_locs(await client.post("/api/v1/faults", json=body)) == [["body"]]


async def test_fault_rule_body_must_be_json(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/faults", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422


async def test_bad_patch_is_422_and_leaves_the_rule(runtime: SwitchRuntime, client: httpx.AsyncClient) -> None:
    rule = runtime.faults.add(DROP_0210)
    for changes, loc in (({"probability": -1}, ["body", "probability"]), ({"id": "other"}, ["body", "id"]),
                         ({"drop_response": None}, ["body"])):
        assert detail_locs(await client.patch(f"/api/v1/faults/{rule.id}", json=changes)) == [loc]
    assert runtime.faults.rules == (rule,)


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
async def test_unknown_fault_rule_is_404(runtime: SwitchRuntime, client: httpx.AsyncClient, method: str) -> None:
    runtime.faults.add(DROP_0210)
    response = await client.request(method, "/api/v1/faults/f999", json={} if method == "PATCH" else None)
    assert response.status_code == 404
    assert "f999" in response.json()["detail"]
    assert len(runtime.faults.rules) == 1


# ---------------------------------------------------------------------------------------------
# Scenario


SCENARIO = """\
[scenario]
name = "admin-test"
seed = 99

[host]
stale_code = "05"
session_timeout = "10m"
signon_required_code = "A1"

[[response]]
name = "big amounts are referred"
when = { mti = ["0200"], amount_min = 500000 }
respond = "01"

[[fault]]
id = "half-lost"
when = { mti = ["0200"] }
drop_response = true
probability = 0.5
"""


def write_scenario(tmp_path: Path, text: str = SCENARIO, name: str = "admin-test.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


async def test_scenario_load_replaces_rules_faults_and_runtime_host_settings(
        tmp_path: Path, runtime: SwitchRuntime, client: httpx.AsyncClient) -> None:
    runtime.faults.add(DROP_0210)
    response = await client.post("/api/v1/scenario", json={"name": write_scenario(tmp_path)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["scenario"] == "admin-test"
    assert body["seed"] == 99
    assert body["host"]["applied"] == {"stale_code": "05", "session_timeout": 600.0}
    assert set(body["host"]["not_applied"]) == {"signon_required_code"}
    assert "restart" in body["host"]["not_applied"]["signon_required_code"]

    host = runtime.host
    assert host.config.stale_code == "05" and host.config.session_timeout == 600.0
    assert host.config.signon_required_code is None  # restart-only: unchanged, and config still says so
    rule = host.rules.first_match(purchase(1, amount=600000)) if host.rules else None
    assert rule is not None and rule.response_code == "01"
    assert [r.id for r in runtime.faults.rules] == ["half-lost"]
    assert [r["id"] for r in body["fault_rules"]] == ["half-lost"]
    assert runtime.faults.seed == 99
    assert runtime.scenario == "admin-test"
    assert (await client.get("/health")).json()["scenario"] == "admin-test"


async def test_scenario_changes_the_hosts_answers_on_the_next_message(tmp_path: Path, runtime: SwitchRuntime,
                                                                      client: httpx.AsyncClient) -> None:
    host = runtime.host
    host.config = HostConfig.for_dialect(DIALECT, require_signon=False)
    big = purchase(1, amount=600000)
    assert host.handle(big, NOW).response[39] == "00"
    text = SCENARIO.replace('signon_required_code = "A1"\n', "require_signon = false\n")
    assert (await client.post("/api/v1/scenario", json={"name": write_scenario(tmp_path, text)})).status_code == 200
    assert host.handle(purchase(2, amount=600000), NOW).response[39] == "01"


async def test_loading_another_scenario_undoes_the_previous_host_settings(
        tmp_path: Path, runtime: SwitchRuntime, client: httpx.AsyncClient) -> None:
    await client.post("/api/v1/scenario", json={"name": write_scenario(tmp_path)})
    response = await client.post("/api/v1/scenario", json={"name": "healthy"})
    assert response.status_code == 200, response.text
    assert runtime.host.config == HostConfig.for_dialect(DIALECT)
    assert response.json()["host"]["applied"] == {"stale_code": "22", "session_timeout": None}
    assert runtime.faults.rules == ()


@pytest.mark.parametrize(
    ("runtime_seed", "body_seed", "expected"),
    [(None, None, 99), (5, None, 5), (5, 11, 11), (None, 0, 0)],
)
async def test_scenario_seed_precedence(tmp_path: Path, runtime_seed: int | None, body_seed: int | None,
                                        expected: int) -> None:
    runtime = make_runtime(seed=runtime_seed, scenario_paths=(str(tmp_path),))
    transport = httpx.ASGITransport(app=create_admin_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        payload: dict[str, Any] = {"name": write_scenario(tmp_path)}
        if body_seed is not None:
            payload["seed"] = body_seed
        response = await http.post("/api/v1/scenario", json=payload)
    assert response.json()["seed"] == expected
    assert runtime.faults.seed == expected


async def test_command_line_host_settings_win_over_the_scenario(tmp_path: Path) -> None:
    runtime = make_runtime(host_overrides={"stale_code": "12"}, scenario_paths=(str(tmp_path),))
    transport = httpx.ASGITransport(app=create_admin_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        response = await http.post("/api/v1/scenario", json={"name": write_scenario(tmp_path)})
    assert response.json()["host"]["applied"]["stale_code"] == "12"
    assert runtime.host.config.stale_code == "12"


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        (SCENARIO.replace('stale_code = "05"', 'stale_code = "5"'), 6, "host.stale_code"),
        (SCENARIO.replace("respond = \"01\"", "respond = \"01\"\ncolour = \"red\""), 14, "response[1].colour"),
        (SCENARIO + "[[fault]]\nprobability = 1\n", 20, "fault[2]"),
        (SCENARIO.replace("probability = 0.5", "probability = 1.5"), 19, "fault[1].probability"),
        ("[scenario\n", 1, None),
    ],
)
async def test_bad_scenario_is_422_naming_file_line_and_key_and_changes_nothing(
        tmp_path: Path, runtime: SwitchRuntime, client: httpx.AsyncClient, text: str, line: int,
        key: str | None) -> None:
    path = write_scenario(tmp_path, text)
    rules_before, config_before = runtime.host.rules, runtime.host.config
    runtime.faults.add(DROP_0210)
    response = await client.post("/api/v1/scenario", json={"name": path})
    assert detail_locs(response) == [["body", "name"]]
    detail = response.json()["detail"][0]
    assert (detail["file"], detail["line"], detail["key"]) == (path, line, key)
    assert path in detail["msg"]
    assert runtime.host.rules is rules_before and runtime.host.config is config_before
    assert [rule.id for rule in runtime.faults.rules] == ["lose-0210"]
    assert runtime.faults.seed == 7
    assert runtime.scenario == "default"


async def test_unknown_scenario_name_lists_the_shipped_ones(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/scenario", json={"name": "no-such-scenario"})
    assert detail_locs(response) == [["body", "name"]]
    assert "healthy" in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize(
    ("payload", "loc"),
    [({}, ["body", "name"]), ({"name": ""}, ["body", "name"]), ({"nmae": "healthy"}, ["body", "name"]),
     ({"name": "healthy", "seed": "x"}, ["body", "seed"])],
)
async def test_scenario_request_is_validated(client: httpx.AsyncClient, payload: dict[str, Any],
                                             loc: list[str]) -> None:
    assert loc in detail_locs(await client.post("/api/v1/scenario", json=payload))


async def test_scenario_request_refuses_unknown_keys(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/scenario", json={"name": "healthy", "sead": 3})
    assert detail_locs(response) == [["body", "sead"]]


async def test_scenario_whose_rules_the_dialect_cannot_carry_is_refused(tmp_path: Path,
                                                                       client: httpx.AsyncClient) -> None:
    text = SCENARIO.replace('respond = "01"', 'respond = "01"\nfields = { 44 = "' + "X" * 200 + '" }')
    response = await client.post("/api/v1/scenario", json={"name": write_scenario(tmp_path, text)})
    assert detail_locs(response) == [["body", "name"]]
    assert response.json()["detail"][0]["key"] == "response[1].fields.44"


# ---------------------------------------------------------------------------------------------
# Reset and maintenance


async def test_reset_faults_sessions_and_all(runtime: SwitchRuntime, client: httpx.AsyncClient) -> None:
    host, faults = runtime.host, runtime.faults
    faults.add(DROP_0210)
    faults.maintenance = "respond"
    host.sessions["TERM0001"] = NOW.timestamp()

    body = (await client.post("/api/v1/reset", json={"what": "faults"})).json()
    assert body["faults"]["rules"] == [] and body["faults"]["maintenance"]["mode"] == "off"
    assert faults.rules == () and faults.maintenance == "off" and faults.seed == 7
    assert host.sessions  # untouched

    body = (await client.post("/api/v1/reset", json={"what": "sessions"})).json()
    assert body == {"reset": "sessions", "sessions_cleared": 1}
    assert host.sessions == {}

    faults.add(DROP_0210)
    host.sessions["TERM0002"] = NOW.timestamp()
    body = (await client.post("/api/v1/reset", json={"what": "all"})).json()
    assert body["sessions_cleared"] == 1 and body["faults"]["rules"] == []
    assert faults.rules == () and host.sessions == {}


async def test_reset_sessions_makes_terminals_sign_on_again(runtime: SwitchRuntime,
                                                            client: httpx.AsyncClient) -> None:
    host = runtime.host
    signon = Message("0800", {7: F7, 11: "000001", 41: "TERM0001", 70: "001"})
    assert host.handle(signon, NOW).response[39] == "00"
    assert host.handle(purchase(2), NOW).response[39] == "00"
    await client.post("/api/v1/reset", json={"what": "sessions"})
    assert host.handle(purchase(3), NOW).response[39] == host.config.signon_code


@pytest.mark.parametrize("payload", [{}, {"what": "ledger"}, {"what": "all", "also": 1}])
async def test_bad_reset_is_422(client: httpx.AsyncClient, payload: dict[str, Any]) -> None:
    assert (await client.post("/api/v1/reset", json=payload)).status_code == 422


async def test_maintenance_modes(runtime: SwitchRuntime, client: httpx.AsyncClient) -> None:
    response = await client.put("/api/v1/maintenance", json={"mode": "respond", "code": "96"})
    assert response.json() == {"mode": "respond", "code": "96"}
    assert (runtime.faults.maintenance, runtime.faults.maintenance_code) == ("respond", "96")

    response = await client.put("/api/v1/maintenance", json={"mode": "refuse"})
    assert response.json() == {"mode": "refuse", "code": "96"}  # code kept when not given
    assert (await client.get("/health")).json()["maintenance"] == "refuse"

    await client.put("/api/v1/maintenance", json={"mode": "off"})
    assert runtime.faults.maintenance == "off"


@pytest.mark.parametrize(
    ("payload", "loc"),
    [({"mode": "sometimes"}, ["body", "mode"]), ({"mode": "respond", "code": "911"}, ["body", "code"]),
     ({"mode": "respond", "code": "9!"}, ["body", "code"]), ({}, ["body", "mode"])],
)
async def test_bad_maintenance_is_422_naming_the_key(runtime: SwitchRuntime, client: httpx.AsyncClient,
                                                     payload: dict[str, Any], loc: list[str]) -> None:
    assert detail_locs(await client.put("/api/v1/maintenance", json=payload)) == [loc]
    assert runtime.faults.maintenance == "off"


# ---------------------------------------------------------------------------------------------
# Journal and ledger


def reply_to(request: Message, code: str = "00") -> Message:
    return Message(request.response_mti, {**request.fields, 39: code})


def fill_journal(journal: Journal, clock: StepClock) -> None:
    """Four frames at t = 1000, 1010, 1020 (journal clock): an answered 0200, a 0200 whose answer a
    fault dropped, and an 0800 not answered yet."""
    clock.now = 1000.0
    first = purchase(1, terminal="TERM0001")
    seq = journal.record_in(connection=1, peer="127.0.0.1:5000", raw=CODEC.encode(first), message=first)
    journal.record_out(connection=1, peer="127.0.0.1:5000", raw=CODEC.encode(reply_to(first)),
                       message=reply_to(first), request_seq=seq)
    clock.now = 1010.0
    second = purchase(2, terminal="TERM0002")
    seq = journal.record_in(connection=2, peer="127.0.0.1:5001", raw=CODEC.encode(second), message=second,
                            faults=("drop_response",))
    journal.record_unsent(seq, faults=("drop_response",), note="response dropped by fault lose-0210")
    clock.now = 1020.0
    signon = Message("0800", {7: F7, 11: "000003", 41: "TERM0001", 70: "001"})
    journal.record_in(connection=1, peer="127.0.0.1:5000", raw=CODEC.encode(signon), message=signon)


@pytest.mark.parametrize(
    ("params", "seqs"),
    [
        ({}, [1, 2, 3, 4]),
        ({"terminal": "TERM0001"}, [1, 2, 4]),
        ({"mti": "0200"}, [1, 3]),
        ({"stan": "2"}, [3]),
        ({"stan": "000001"}, [1, 2]),
        ({"faults": "true"}, [3]),
        ({"unmatched": "true"}, [3, 4]),
        ({"since": "1970-01-01T00:16:50Z", "until": "1020"}, [3]),  # ISO 8601 or Unix seconds; until exclusive
        ({"since": "1970-01-01T01:16:50+01:00"}, [3, 4]),
        ({"limit": 2}, [3, 4]),  # the newest, oldest first
        ({"terminal": "TERM0001", "mti": "0800", "unmatched": "1"}, [4]),
    ],
)
async def test_journal_filters(runtime: SwitchRuntime, clock: StepClock, client: httpx.AsyncClient,
                               params: dict[str, Any], seqs: list[int]) -> None:
    fill_journal(runtime.journal, clock)
    response = await client.get("/api/v1/journal", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [entry["seq"] for entry in body["entries"]] == seqs
    assert body["count"] == len(seqs)


async def test_journal_entries_are_masked_and_carry_faults(runtime: SwitchRuntime, clock: StepClock,
                                                           client: httpx.AsyncClient) -> None:
    fill_journal(runtime.journal, clock)
    entry = (await client.get("/api/v1/journal", params={"faults": "true"})).json()["entries"][0]
    assert entry["faults"] == ["drop_response"] and entry["matched"] is False
    assert entry["terminal"] == "TERM0002" and entry["mti"] == "0200"
    assert "4761739001010010" not in str(entry)


@pytest.mark.parametrize(
    ("params", "loc"),
    [({"mti": "200"}, ["query", "mti"]), ({"stan": "12a"}, ["query", "stan"]), ({"limit": 0}, ["query", "limit"]),
     ({"limit": 10001}, ["query", "limit"]), ({"since": "yesterday"}, ["query", "since"]),
     ({"faults": "maybe"}, ["query", "faults"]),
     ({"since": "2026-11-22T11:00:00Z", "until": "2026-11-22T10:00:00Z"}, ["query", "since"])],
)
async def test_bad_journal_query_is_422_naming_the_parameter(client: httpx.AsyncClient, params: dict[str, Any],
                                                             loc: list[str]) -> None:
    assert detail_locs(await client.get("/api/v1/journal", params=params)) == [loc]


def settle(stan: int, net: SettlementTotals, terminal: str = "TERM0001") -> Message:
    return Message("0500", {7: F7, 11: f"{stan:06d}", 41: terminal, **net.to_iso_fields()})


async def test_ledger_postings_batches_settlements_and_discrepancies(runtime: SwitchRuntime,
                                                                     client: httpx.AsyncClient) -> None:
    host = runtime.host
    host.config = HostConfig.for_dialect(DIALECT, require_signon=False)
    host.rules = ResponseRules([ResponseRule("decline big", Match(amount_min=900000), "51")])
    for stan, amount, terminal in ((1, 1000, "TERM0001"), (2, 2500, "TERM0001"), (3, 999999, "TERM0001"),
                                   (4, 700, "TERM0002")):
        host.handle(purchase(stan, amount, terminal), NOW)

    postings = (await client.get("/api/v1/ledger/postings", params={"terminal": "TERM0001"})).json()
    assert postings["count"] == 3
    assert [(p["stan"], p["amount"], p["response_code"]) for p in postings["postings"]] == [
        ("000001", 1000, "00"), ("000002", 2500, "00"), ("000003", 999999, "51")]
    assert (await client.get("/api/v1/ledger/postings")).json()["count"] == 4
    assert (await client.get("/api/v1/ledger/postings", params={"batch": "000002"})).json()["count"] == 0

    batches = (await client.get("/api/v1/ledger/batches", params={"terminal": "TERM0001"})).json()["batches"]
    assert [(b["batch"], b["status"], b["debit_count"], b["debit_amount"]) for b in batches] == [
        ("000001", "open", 2, 3500)]

    # a mismatched settlement (95), an upload of what the terminal believes, then settle again: discrepancies
    assert host.handle(settle(10, SettlementTotals(1, 1000, 0, 0)), NOW).response[39] == "95"
    upload = Message("0320", {2: "4761739001010010", 3: "000000", 4: f"{1000:012d}", 11: "000001",
                              41: "TERM0001"})
    host.handle(upload, NOW)
    host.handle(Message("0320", {11: "000900", 41: "TERM0001", 70: "202"}), NOW)
    assert host.handle(settle(11, SettlementTotals(1, 1000, 0, 0)), NOW).response[39] == "00"

    settlements = (await client.get("/api/v1/ledger/settlements", params={"terminal": "TERM0001"})).json()
    assert [s["result"] for s in settlements["settlements"]] == ["unbalanced", "accepted-after-upload"]
    found = (await client.get("/api/v1/ledger/discrepancies", params={"terminal": "TERM0001"})).json()
    assert [(d["kind"], d["stan"]) for d in found["discrepancies"]] == [("missing-from-upload", "000002")]
    assert (await client.get("/api/v1/ledger/discrepancies", params={"terminal": "TERM0002"})).json()["count"] == 0
    batches = (await client.get("/api/v1/ledger/batches", params={"terminal": "TERM0001"})).json()["batches"]
    assert batches[0]["status"] == "closed"


@pytest.mark.parametrize("path", ["/api/v1/ledger/postings", "/api/v1/ledger/discrepancies"])
async def test_bad_batch_number_is_422(client: httpx.AsyncClient, path: str) -> None:
    assert detail_locs(await client.get(path, params={"batch": "12"})) == [["query", "batch"]]


async def test_unknown_path_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/nothing")).status_code == 404


# ---------------------------------------------------------------------------------------------
# Bearer token


@pytest.mark.parametrize("path", ["/api/v1/faults", "/metrics", "/openapi.json", "/docs", "/api/v1/journal",
                                  "/api/v1/ledger/batches", "/api/v1/health/history", "/api/v1/scenarios",
                                  "/api/v1/fault-templates", "/api/v1/terminals"])
async def test_token_is_required_everywhere_but_health(path: str) -> None:
    runtime = make_runtime(token=TOKEN)
    transport = httpx.ASGITransport(app=create_admin_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        assert (await http.get("/health")).status_code == 200
        missing = await http.get(path)
        assert missing.status_code == 401
        assert missing.json() == {"detail": "missing bearer token"}
        assert missing.headers["www-authenticate"].startswith("Bearer")
        for wrong in (f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer "):
            response = await http.get(path, headers={"Authorization": wrong})
            assert response.status_code == 401, wrong
        good = await http.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert good.status_code == 200
        assert (await http.get(path, headers={"Authorization": f"bearer {TOKEN}"})).status_code == 200


async def test_refused_request_changes_nothing() -> None:
    runtime = make_runtime(token=TOKEN)
    transport = httpx.ASGITransport(app=create_admin_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        assert (await http.put("/api/v1/maintenance", json={"mode": "refuse"})).status_code == 401
        assert (await http.post("/api/v1/faults", json=DROP_0210)).status_code == 401
    assert runtime.faults.maintenance == "off" and runtime.faults.rules == ()


# ---------------------------------------------------------------------------------------------
# Over real loopback HTTP


async def test_served_over_loopback_with_hypercorn() -> None:
    runtime = make_runtime(token=TOKEN)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_admin, runtime, "127.0.0.1", 0)
            assert port > 0
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base, timeout=5.0) as http:
                health = await http.get("/health")
                assert health.status_code == 200
                assert health.json()["dialect"] == DIALECT.name
                assert (await http.get("/openapi.json")).status_code == 401
                document = await http.get("/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"})
                assert document.status_code == 200
                assert "/api/v1/faults" in document.json()["paths"]
                changed = await http.put("/api/v1/maintenance", json={"mode": "respond", "code": "91"},
                                         headers={"Authorization": f"Bearer {TOKEN}"})
                assert changed.status_code == 200
                assert runtime.faults.maintenance == "respond"
            nursery.cancel_scope.cancel()


async def test_shutdown_event_stops_the_server_gracefully() -> None:
    shutdown = trio.Event()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(lambda task_status: serve_admin(
                make_runtime(), "127.0.0.1", 0, shutdown=shutdown, task_status=task_status))
            async with httpx.AsyncClient(timeout=5.0) as http:
                assert (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200
            shutdown.set()
        # the nursery exited on its own: serve_admin returned after the event
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port)


async def test_port_in_use_is_an_error() -> None:
    with trio.socket.socket() as taken:
        await taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with trio.fail_after(10), pytest.raises(OSError):
            await serve_admin(make_runtime(), "127.0.0.1", port)


async def test_scenario_and_reset_reach_every_listener() -> None:
    """With --also-listen each listener has its own host: the admin API must drive all of them."""
    cup = load_dialect("cup-pos")
    ledger = Ledger.open(":memory:")
    runtime = make_runtime(ledger=ledger, host=Host(HostConfig.for_dialect(DIALECT, require_signon=False), ledger))
    cup_host = Host(HostConfig.for_dialect(cup, require_signon=False), ledger)
    runtime.more_listeners = ((cup_host, cup),)
    runtime.host.sessions["TERM0001"] = 1.0
    cup_host.sessions["CUP00001"] = 1.0
    transport = httpx.ASGITransport(app=create_admin_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        loaded = await http.post("/api/v1/scenario", json={"name": "order-expired"})
        assert loaded.status_code == 200, loaded.text
        assert runtime.host.rules is not None and cup_host.rules is runtime.host.rules
        assert runtime.host.config.require_signon and cup_host.config.require_signon
        assert cup_host.config.family == "cup" and runtime.host.config.family == "iso87"
        assert cup_host.config.signon_code == "A0" and runtime.host.config.signon_code == "A0"
        body = (await http.post("/api/v1/reset", json={"what": "sessions"})).json()
    assert body["sessions_cleared"] == 2
    assert runtime.host.sessions == {} and cup_host.sessions == {}
