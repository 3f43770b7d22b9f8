"""The admin API over shared sessions (multi-instance mode, real PostgreSQL): the console's terminal
pages show the session the database holds, whichever instance serves the terminal, and a sessions
reset ends a stored session no instance serves (by taking the terminal over) while naming the ones
another instance serves (only that instance can end them).

Two whole switches (``build_switch``) in one Trio program; the admin app is driven in process
through ``httpx.ASGITransport``. A serves with a short idle time (it gives terminals back at once),
B keeps what it takes.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import trio

from switch.admin import create_admin_app
from switch.app import Switch, SwitchOptions, build_switch
from switch.codec import Message
from switch.ledger import Ledger
from tests.test_server import DIALECT, FRAMING, connect, exchange, network, purchase

T = "TERM0001"
TEST_LIMIT = 30.0


async def ask(port: int, request: Message) -> dict[int, str]:
    frames = await connect(port)
    try:
        return (await exchange(frames, request)).fields
    finally:
        await frames.aclose()


@asynccontextmanager
async def admin(switch: Switch) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_admin_app(switch.runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        yield http


async def test_console_and_reset_see_the_database_sessions(pg_url: str) -> None:
    def options(idle: float, wait: float) -> SwitchOptions:
        return SwitchOptions(port=0, ledger=pg_url, journal="none", admin_port=None, multi_instance=True,
                             require_signon=True, grace_period=1.0, terminal_idle=idle, terminal_wait=wait)

    a = build_switch(DIALECT, FRAMING, options(idle=0.2, wait=0.3))
    b = build_switch(DIALECT, FRAMING, options(idle=600.0, wait=2.0))
    with trio.fail_after(TEST_LIMIT):
        async with trio.open_nursery() as nursery:
            ports = []
            for switch in (a, b):
                listeners, _ = await nursery.start(functools.partial(switch.run, handle_signals=False))
                ports.append(listeners[0].socket.getsockname()[1])
            a_owner = a.runtime.owner
            assert a_owner is not None
            assert (await ask(ports[0], network("001", stan=1)))[39] == "00"  # signed on at A...
            while a_owner.stats.released < 1:  # ...which gives the idle terminal back (every 2 s)
                await trio.sleep(0.05)

            async with admin(b) as http:  # B never served the terminal: its pages read the database
                assert T in (await http.get("/api/v1/terminals")).json()["terminals"]
                page = (await http.get(f"/api/v1/terminals/{T}")).json()
                assert page["sessions"][0]["signed_on_at"] is not None
                reset = (await http.post("/api/v1/reset", json={"what": "sessions"})).json()
                assert (reset["sessions_cleared"], reset["sessions_kept"]) == (1, [])
                page = (await http.get(f"/api/v1/terminals/{T}"))
                assert page.json()["sessions"][0]["signed_on_at"] is None, page.text
            assert (await ask(ports[1], purchase(2)))[39] == b.server.host.config.signon_code  # ended everywhere

            assert (await ask(ports[1], network("001", stan=3)))[39] == "00"  # B serves it now, and keeps it
            async with admin(a) as http:
                reset = (await http.post("/api/v1/reset", json={"what": "sessions"})).json()
                assert (reset["sessions_cleared"], reset["sessions_kept"]) == (0, [T])  # only B can end it
            assert (await ask(ports[1], purchase(4)))[39] == "00"  # so its session stands
            for switch in (a, b):
                switch.server.shutdown()
    with contextlib.closing(Ledger.open(pg_url)) as ledger:
        assert [p.stan for p in ledger.postings(T)] == ["000004"]
        session = ledger.session(T)
        assert session is not None and session.signed_on_at is not None and session.signons == 2
