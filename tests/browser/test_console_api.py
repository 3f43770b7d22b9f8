"""The admin API routes and pieces behind the QA console, without a browser (fast tier).

Static files and Swagger UI come from the package with no CDN; a journal entry is described as
``iso-switch describe`` does with the journal's masking kept; the event stream sends each entry
once and then its changes; the health history turns counters into rates; templates are valid rules.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

from switch.admin import SwitchRuntime, create_admin_app
from switch.admin_console import FAULT_TEMPLATES, STATIC_DIR, check_templates, describe_entry
from switch.admin_live import HealthHistory, JournalFollower, Sample, journal_events, take_sample
from switch.codec import Codec, Message, load_dialect
from switch.faults.rule import ACTION_KEYS
from switch.host import HostConfig
from switch.journal import Journal
from switch.metrics import SwitchMetrics
from tests.test_admin import CODEC, DIALECT, NOW, TOKEN, make_runtime, purchase, reply_to

PAN = "4761739001010010"
MASKED_PAN = "476173******0010"


@pytest.fixture
def runtime() -> SwitchRuntime:
    return make_runtime()


@pytest.fixture
async def client(runtime: SwitchRuntime) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_admin_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        yield http


def exchange(journal: Journal, stan: int, terminal: str = "TERM0001", codec: Codec = CODEC) -> tuple[int, int]:
    request = purchase(stan, terminal=terminal)
    seq = journal.record_in(connection=1, peer="127.0.0.1:5000", raw=codec.encode(request), message=request)
    reply = reply_to(request)
    out = journal.record_out(connection=1, peer="127.0.0.1:5000", raw=codec.encode(reply), message=reply,
                             request_seq=seq)
    return seq, out


# ---------------------------------------------------------------------------------------------
# Static files, Swagger UI, the token


async def test_console_page_and_assets_are_served_from_the_package_without_a_token() -> None:
    runtime = make_runtime(token=TOKEN)
    transport = httpx.ASGITransport(app=create_admin_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        page = await http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "unsafe-inline" not in policy
        assert '<script type="module" src="/console/console.js">' in page.text
        for asset, kind in (("/console/console.js", "javascript"), ("/console/console.css", "text/css"),
                            ("/console/vendor/swagger-ui/swagger-ui-bundle.js", "javascript"),
                            ("/console/vendor/swagger-ui/LICENSE", "")):
            response = await http.get(asset)
            assert response.status_code == 200, asset
            assert kind in response.headers["content-type"], asset
        # the page holds no data: every API call it makes still needs the token
        assert (await http.get("/api/v1/journal")).status_code == 401
        assert (await http.get("/docs")).status_code == 401
        assert (await http.get("/console/../openapi.json")).status_code == 401


@pytest.mark.parametrize("path", ["/console/../api/v1/journal", "/console/../openapi.json", "/console//api/v1/faults",
                                  "/console/../../switch/admin.py"])
async def test_the_open_static_prefix_reaches_nothing_else(path: str) -> None:
    """A raw ASGI path (no client normalising dot segments) under /console/ is static files or 404."""
    app = create_admin_app(make_runtime(token=TOKEN))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": [(b"host", b"localhost")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    await app(scope, receive, send)
    assert sent[0]["status"] == 404


async def test_swagger_ui_loads_from_the_package_not_a_cdn(client: httpx.AsyncClient) -> None:
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "/console/vendor/swagger-ui/swagger-ui-bundle.js" in docs.text
    assert "/console/vendor/swagger-ui/swagger-ui.css" in docs.text
    assert "cdn" not in docs.text and "https://" not in docs.text
    assert "connect-src 'self'" in docs.headers["content-security-policy"]


def test_every_shipped_console_file_is_listed_in_package_data() -> None:
    """A non-editable install ships only what pyproject's package-data names: one glob per kind."""
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["switch"]
    package = STATIC_DIR.parent.parent  # switch/
    shipped = [path.relative_to(package) for path in STATIC_DIR.rglob("*") if path.is_file()]
    assert {"index.html", "console.js", "console.css", "LICENSE", "swagger-ui-bundle.js"} <= {p.name for p in shipped}
    for path in shipped:
        assert any(path.match(pattern) for pattern in globs), f"{path} is not in package-data {globs}"


# ---------------------------------------------------------------------------------------------
# Describing journal entries


async def test_journal_entry_is_described_field_by_field_with_its_response(runtime: SwitchRuntime,
                                                                           client: httpx.AsyncClient) -> None:
    exchange(runtime.journal, 1)
    seq, out = exchange(runtime.journal, 2, terminal="TERM0002")
    response = await client.get(f"/api/v1/journal/{seq}", params={"terminal": "TERM0002", "stan": "2"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["entry"]["seq"] == seq
    elements = {e["element"]: e for e in body["described"]["elements"]}
    assert elements["2"]["value"] == MASKED_PAN and elements["2"]["masked"] and elements["2"]["data"] is None
    assert elements["11"]["value"] == "000002"
    assert body["described"]["mti_meaning"] == "financial request"
    assert [item["entry"]["seq"] for item in body["related"]] == [out]
    reply = {e["element"]: e for e in body["related"][0]["described"]["elements"]}
    assert reply["39"]["value"] == "00"
    assert PAN not in response.text
    # the response's page names the request as its pair; without hints the whole ring is searched
    back = (await client.get(f"/api/v1/journal/{out}")).json()
    assert [item["entry"]["seq"] for item in back["related"]] == [seq]


async def test_unknown_journal_entry_is_404(runtime: SwitchRuntime, client: httpx.AsyncClient) -> None:
    seq, _ = exchange(runtime.journal, 1)
    assert (await client.get("/api/v1/journal/99")).status_code == 404
    assert (await client.get(f"/api/v1/journal/{seq}", params={"terminal": "OTHER"})).status_code == 404
    assert (await client.get("/api/v1/journal/-1")).status_code == 422


@pytest.mark.parametrize("name", ["iso87-ascii", "iso87-bcd", "iso87-binary"])
def test_masked_bytes_decode_again_and_stay_masked(name: str) -> None:
    dialect = load_dialect(name)
    codec = Codec(dialect)
    journal = Journal(codec)
    request = Message("0200", {2: PAN, 3: "000000", 4: "000000001500", 11: "000001", 41: "TERM0001",
                               48: f"card {PAN} typed here", 49: "840"})
    journal.record_in(connection=1, peer="p", raw=codec.encode(request), message=request)
    entry = journal.query()[0].as_dict()
    assert "**" in entry["raw_hex"]
    described = describe_entry(entry, [dialect])
    assert described is not None and described["error"] is None, described
    elements = {e["element"]: e for e in described["elements"]}
    assert elements["2"]["value"] == MASKED_PAN
    assert elements["4"]["value"] == "000000001500"
    assert PAN not in str(described)
    assert elements["48"]["value"] == entry["fields"]["48"]  # the journal's masking, not filler digits


def test_an_entry_without_a_dialect_or_frame_is_not_described() -> None:
    assert describe_entry({"raw_hex": "0200"}, []) is None
    assert describe_entry({"raw_hex": ""}, [DIALECT]) is None


# ---------------------------------------------------------------------------------------------
# The event stream


def test_follower_sends_each_entry_once_then_its_changes() -> None:
    journal = Journal(CODEC)
    follower = JournalFollower(after=0)
    request = purchase(1)
    seq = journal.record_in(connection=1, peer="p", raw=CODEC.encode(request), message=request)
    new, changed, gap = follower.poll(journal)
    assert [e["seq"] for e in new] == [seq] and new[0]["matched"] is False and not changed and not gap
    assert follower.poll(journal) == ([], [], False)
    out = journal.record_out(connection=1, peer="p", raw=CODEC.encode(reply_to(request)),
                             message=reply_to(request), request_seq=seq)
    new, changed, _ = follower.poll(journal)
    assert [e["seq"] for e in new] == [out]
    assert [(e["seq"], e["matched"]) for e in changed] == [(seq, True)]
    assert follower.poll(journal) == ([], [], False)


def test_follower_announces_a_gap_when_more_arrived_than_one_poll_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("switch.admin_live.BATCH", 3)
    journal = Journal(CODEC)
    for stan in range(1, 6):
        message = purchase(stan)
        journal.record_in(connection=1, peer="p", raw=CODEC.encode(message), message=message)
    new, _, gap = JournalFollower(after=0).poll(journal)
    assert gap and [e["seq"] for e in new] == [3, 4, 5]
    assert not JournalFollower(after=2).poll(journal)[2]


async def test_stream_events_are_server_sent_events_and_the_stream_ends(autojump_clock: trio.abc.Clock) -> None:
    journal = Journal(CODEC)
    first, _ = exchange(journal, 1)
    chunks = [chunk async for chunk in journal_events(journal, after=first, poll=1.0, max_seconds=3.0)]
    text = b"".join(chunks).decode()
    assert text.startswith("retry: 1000\n\n")
    assert text.count("event: entry\n") == 1  # only the response: the request was at `after`
    assert text.rstrip().endswith('event: end\ndata: {"after":2}')


async def test_stream_endpoint_answers_event_stream_and_needs_the_token() -> None:
    runtime = make_runtime(token=TOKEN)
    transport = httpx.ASGITransport(app=create_admin_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        assert (await http.get("/api/v1/journal/stream")).status_code == 401
        assert (await http.get("/api/v1/journal/stream", params={"after": -2},
                               headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 422


# ---------------------------------------------------------------------------------------------
# Health history


def test_history_turns_counters_into_rates_and_mean_latency() -> None:
    history = HealthHistory(size=3)
    for sample in (Sample(100.0, 0, 0.0, 0, 1), Sample(101.0, 10, 0.5, 10, 2), Sample(103.0, 14, 0.5, 10, 2),
                   Sample(102.0, 20, 0.9, 12, 3)):  # the last: the wall clock stepped back
        history.add(sample)
    points = history.series()
    assert len(history.samples) == 3  # bounded
    assert points == [{"time": 103.0, "messages_per_second": 2.0, "latency_ms": None, "connections": 2}]
    history = HealthHistory()
    history.add(Sample(100.0, 0, 0.0, 0, 1))
    assert history.series(Sample(102.0, 10, 0.25, 5, 1)) == [
        {"time": 102.0, "messages_per_second": 5.0, "latency_ms": 50.0, "connections": 1}]


def test_sample_reads_the_prometheus_totals() -> None:
    metrics = SwitchMetrics()
    for code in ("00", "00", "05", None):
        metrics.message("0200", code)
    metrics.latency(0.01)
    metrics.latency(0.03)
    metrics.connection_opened()
    sample = take_sample(metrics, now=5.0)
    assert (sample.messages, sample.latency_count, sample.connections) == (4, 2, 1)
    assert sample.latency_sum == pytest.approx(0.04)


async def test_history_endpoint(runtime: SwitchRuntime, client: httpx.AsyncClient) -> None:
    runtime.history.add(Sample(time.time() - 1.0, 0, 0.0, 0, 0))
    runtime.metrics.message("0200", "00")
    body = (await client.get("/api/v1/health/history")).json()
    assert body["points"][-1]["messages_per_second"] > 0


# ---------------------------------------------------------------------------------------------
# Templates, seed, scenarios, terminals


def test_there_is_a_valid_template_for_every_action() -> None:
    check_templates()
    assert set(FAULT_TEMPLATES) == set(ACTION_KEYS)


async def test_each_template_is_accepted_by_the_api(runtime: SwitchRuntime, client: httpx.AsyncClient) -> None:
    templates = (await client.get("/api/v1/fault-templates")).json()["templates"]
    for action, table in templates.items():
        response = await client.post("/api/v1/faults", json=table)
        assert response.status_code == 201, (action, response.text)
        assert action in response.json()
    assert len(runtime.faults.rules) == len(ACTION_KEYS)


async def test_seed_restarts_the_rules_on_the_new_seed(runtime: SwitchRuntime, client: httpx.AsyncClient) -> None:
    await client.post("/api/v1/faults", json={"id": "x", "respond": "91"})
    runtime.faults.decide(purchase(1), connection=1, elapsed=0.0)
    assert runtime.faults.counters()["x"]["fired"] == 1
    body = (await client.put("/api/v1/seed", json={"seed": 42})).json()
    assert body["seed"] == 42 == runtime.faults.seed
    assert body["counters"]["x"] == {"matched": 0, "fired": 0}
    assert [rule["id"] for rule in body["rules"]] == ["x"]
    for bad in ({"seed": "x"}, {}, {"seed": 1, "extra": 2}, {"seed": 2**64}):
        assert (await client.put("/api/v1/seed", json=bad)).status_code == 422, bad
    assert runtime.faults.seed == 42
    # the console sends the digits as typed: a 64-bit seed does not fit a JavaScript number
    assert (await client.put("/api/v1/seed", json={"seed": str(2**64 - 1)})).status_code == 200
    assert runtime.faults.seed == 2**64 - 1


async def test_scenarios_lists_the_shipped_names(client: httpx.AsyncClient) -> None:
    body = (await client.get("/api/v1/scenarios")).json()
    assert body["loaded"] == "default"
    assert {"healthy", "flaky-network"} <= set(body["shipped"])


async def test_terminal_page_shows_session_signon_and_open_batch(runtime: SwitchRuntime,
                                                                 client: httpx.AsyncClient) -> None:
    host = runtime.host
    host.config = HostConfig.for_dialect(DIALECT, require_signon=False)
    signon = Message("0800", {7: "1122103000", 11: "000009", 41: "TERM0001", 70: "001"})
    answer = host.handle(signon, NOW)
    seq = runtime.journal.record_in(connection=1, peer="p", raw=CODEC.encode(signon), message=signon)
    runtime.journal.record_out(connection=1, peer="p", raw=CODEC.encode(answer.response), message=answer.response,
                               request_seq=seq)
    for stan, amount in ((1, 1000), (2, 250)):
        host.handle(purchase(stan, amount), NOW)
    assert (await client.get("/api/v1/terminals")).json()["terminals"] == ["TERM0001"]
    page = (await client.get("/api/v1/terminals/TERM0001")).json()
    assert page["sessions"][0]["signed_on_at"] is not None
    assert page["last_signon_request"] is not None
    assert (page["open_batch"]["batch"], page["open_batch"]["debit_count"], page["open_batch"]["debit_amount"]) == (
        "000001", 2, 1250)
    assert (await client.get("/api/v1/terminals/NOBODY01")).status_code == 404
