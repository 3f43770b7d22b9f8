"""The QA console at ``/`` and Swagger UI at ``/docs``, both served from files in the package.

No CDN and no build step: the console is one HTML page, one JavaScript module and one stylesheet
under ``switch/console/static``; Swagger UI's bundle is vendored beside them with its licence. A
Content-Security-Policy of ``'self'`` makes the browser refuse any request elsewhere, so an offline
lab network sees the same page as a connected one.

The API routes here exist for the console (any client may use them): a journal entry described
field by field as ``iso-switch describe`` does, with its request/response pair; a terminal's page
(session, last sign-on, key check values, open batch); the fault rule templates per action.
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from switch.admin_read import ledger_view
from switch.codec.message import Codec
from switch.describe import describe_message, report_to_json
from switch.faults.parse import rule_from_table
from switch.host.core import keys_from_text
from switch.security import WorkingKeys, check_value

if TYPE_CHECKING:
    from switch.admin import SwitchRuntime
    from switch.codec import Dialect
    from switch.journal import JournalEntry
    from switch.ledger_records import SessionRecord

STATIC_DIR = Path(str(files("switch.console") / "static"))
CONSOLE_PREFIX = "/console"
SWAGGER_PREFIX = f"{CONSOLE_PREFIX}/vendor/swagger-ui"
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data:; connect-src 'self'; "
                           "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
"""The console's: its own files only, no inline script or style; frame-ancestors stops clickjacking."""
DOCS_CONTENT_SECURITY_POLICY = CONTENT_SECURITY_POLICY.replace(
    "default-src 'self';", "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline';")
"""Swagger UI's page (made by FastAPI) starts it with an inline script, and Swagger UI styles inline."""
_MASKED_HEX = re.compile(r"(\*\*)+")
FILLERS = (0x30, 0x00, 0xF0)
"""Bytes tried in place of the journal's masked ``**`` bytes so the frame decodes again: an ASCII,
a BCD and an EBCDIC zero. Every element that covers a masked byte then shows the journal's masked
value, never the filler."""
JOURNAL_SCAN = 10_000

FAULT_TEMPLATES: dict[str, dict[str, Any]] = {
    "delay_request": {"name": "requests wait 2 s before the host", "when": {"mti": "0200"}, "delay_request": "2s"},
    "delay_response": {"name": "replies wait 35 s (a late reply)", "when": {"mti": "0200"}, "delay_response": "35s"},
    "drop_request": {"name": "requests lost before the host", "when": {"mti": "0200"}, "drop_request": True},
    "drop_response": {"name": "processed, reply not sent", "when": {"mti": "0200"}, "drop_response": True},
    "close": {"name": "connection closed after processing", "when": {"mti": "0200"}, "close": "after"},
    "reset": {"name": "TCP reset before processing", "when": {"mti": "0200"}, "reset": "before"},
    "garbage": {"name": "16 random bytes instead of the reply", "when": {"mti": "0200"}, "garbage": 16},
    "truncate": {"name": "reply cut short", "when": {"mti": "0200"}, "truncate": True},
    "wrong_length": {"name": "length header off", "when": {"mti": "0200"}, "wrong_length": True},
    "duplicate": {"name": "reply sent twice", "when": {"mti": "0200"}, "duplicate": True},
    "wrong_echo": {"name": "reply echoes another STAN", "when": {"mti": "0200"}, "wrong_echo": ["stan"]},
    "corrupt_mac": {"name": "reply MAC corrupted", "when": {"mti": "0200"}, "corrupt_mac": True},
    "wrong_check_value": {"name": "sign-on key check value wrong", "when": {"mti": "0800"},
                          "wrong_check_value": True},
    "signon_again": {"name": "terminal must sign on again", "when": {"mti": "0200"}, "signon_again": True},
    "slice": {"name": "reply written 8 bytes at a time", "when": {"mti": "0200"},
              "slice": {"bytes": 8, "pause": "5ms"}},
    "bandwidth": {"name": "reply at 200 bytes/s", "when": {"mti": "0200"}, "bandwidth": 200},
    "respond": {"name": "answer 91 unprocessed", "when": {"mti": "0200"}, "respond": "91"},
    "hold": {"name": "held until released", "when": {"mti": "0200"}, "hold": True},
}
"""A starting point per action for "add from template"; a test checks each one is a valid rule."""


def _dialects(runtime: SwitchRuntime) -> list[Dialect]:
    found = [runtime.dialect, *(dialect for _, dialect in runtime.more_listeners)]
    return [dialect for dialect in found if dialect is not None]


def _masked_ranges(raw_hex: str) -> list[tuple[int, int]]:
    """Byte ranges the journal masked (``**`` pairs in its hex)."""
    return [(found.start() // 2, found.end() // 2) for found in _MASKED_HEX.finditer(raw_hex)
            if found.start() % 2 == 0]


def describe_entry(entry: dict[str, Any], dialects: list[Dialect]) -> dict[str, Any] | None:
    """The entry's frame described as ``iso-switch describe --json`` does, masked bytes kept masked.

    The first dialect that decodes the frame whole wins (a switch with ``--also-listen`` has
    several); None when there is no dialect or no frame.
    """
    raw_hex = entry.get("raw_hex") or ""
    if not raw_hex or not dialects:
        return None
    masked = _masked_ranges(raw_hex)
    best: dict[str, Any] | None = None
    for dialect in dialects:
        codec = Codec(dialect)
        for filler in FILLERS if masked else (None,):
            text = raw_hex if filler is None else raw_hex.replace("**", f"{filler:02X}")
            try:
                raw = bytes.fromhex(text)
            except ValueError:
                return None
            described = report_to_json(describe_message(codec, raw))
            described["dialect"] = dialect.name
            if best is None or (best["error"] is not None and described["error"] is None):
                best = described
            if described["error"] is None:
                break
        if best is not None and best["error"] is None:
            break
    assert best is not None
    fields = entry.get("fields") or {}
    for element in best["elements"]:
        start = element["offset"]
        end = start + len(element["length_prefix"]) // 2 + element["size"]
        if any(low < end and start < high for low, high in masked):
            element.update(value=fields.get(element["element"], "****"), data=None, masked=True, parts={})
    return best


def _find_entries(runtime: SwitchRuntime, terminal: str | None, stan: str | None) -> list[JournalEntry]:
    return runtime.journal.query(terminal=terminal, stan=stan, limit=JOURNAL_SCAN)


def add_console_routes(app: FastAPI, runtime: SwitchRuntime, api: str) -> None:
    """Register ``/``, ``/docs``, the static files and the console's API routes."""
    app.mount(CONSOLE_PREFIX, StaticFiles(directory=STATIC_DIR, check_dir=True), name="console")
    headers = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
               "Referrer-Policy": "no-referrer"}
    docs_headers = {**headers, "Content-Security-Policy": DOCS_CONTENT_SECURITY_POLICY}

    @app.get("/", include_in_schema=False)
    async def console() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=headers)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(STATIC_DIR / "vendor" / "swagger-ui" / "favicon-32x32.png", media_type="image/png")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url="/openapi.json", title="iso-switch admin API",
            swagger_js_url=f"{SWAGGER_PREFIX}/swagger-ui-bundle.js",
            swagger_css_url=f"{SWAGGER_PREFIX}/swagger-ui.css",
            swagger_favicon_url=f"{SWAGGER_PREFIX}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None})
        page.headers.update(docs_headers)
        return page

    @app.get(f"{api}/journal/{{seq}}", tags=["read"], responses={404: {"description": "Not in the ring"}})
    async def journal_entry(
        seq: Annotated[int, PathParam(ge=0)],
        terminal: Annotated[str | None, Query(min_length=1, max_length=16,
                                              description="Field 41 of the entry: narrows the search.")] = None,
        stan: Annotated[str | None, Query(pattern=r"^[0-9]{1,6}$", description="Field 11 of the entry.")] = None,
    ) -> dict[str, Any]:
        """One journal entry described field by field (PAN masked), with its request and its responses."""
        candidates = _find_entries(runtime, terminal, stan)
        entry = next((found for found in candidates if found.seq == seq), None)
        if entry is None:
            raise HTTPException(status_code=404, detail=f"journal entry {seq} is not in the in-memory ring "
                                                        "(or does not match terminal/stan)")
        request_seq = seq if entry.direction == "in" else entry.request_seq
        dialects = _dialects(runtime)
        pair = [found for found in candidates
                if request_seq is not None and found.seq != seq and (found.seq == request_seq
                                                                     or found.request_seq == request_seq)]
        return {
            "entry": entry.as_dict(),
            "described": describe_entry(entry.as_dict(), dialects),
            "related": [{"entry": found.as_dict(), "described": describe_entry(found.as_dict(), dialects)}
                        for found in pair],
        }

    @app.get(f"{api}/fault-templates", tags=["faults"])
    async def fault_templates() -> dict[str, Any]:
        """An example rule per action, to edit and ``POST /faults``."""
        return {"templates": FAULT_TEMPLATES}

    @app.get(f"{api}/terminals", tags=["read"])
    async def terminals() -> dict[str, Any]:
        """Terminals the ledger or a sign-on session knows, with their sessions."""
        async with ledger_view(runtime.ledger, None) as ledger:
            known = {row.terminal for row in ledger.batches()}
            known.update(record.terminal for record in ledger.sessions() if record.signed_on_at is not None)
        for host in runtime.hosts:
            known.update(host.sessions)
        return {"terminals": sorted(known)}

    @app.get(f"{api}/terminals/{{terminal}}", tags=["read"])
    async def terminal_page(terminal: Annotated[str, PathParam(min_length=1, max_length=16)]) -> dict[str, Any]:
        """A terminal's session, last sign-on in the journal, key check values, open batch and settlements."""
        terminal = terminal.rstrip()
        signons = [entry for entry in runtime.journal.query(terminal=terminal, mti="0800", limit=JOURNAL_SCAN)
                   if entry.fields.get("70") == "001"]
        async with ledger_view(runtime.ledger, terminal) as ledger:
            batch = ledger.current_batch(terminal)
            batches = [row.as_dict() for row in ledger.batches(terminal=terminal)]
            open_batch = ledger.batch_summary(terminal, batch).as_dict()
            settlements = [row.as_dict() for row in ledger.settlements(terminal=terminal)]
            stored = ledger.session(terminal)
        sessions = []
        for host in runtime.hosts:
            if runtime.ledger.multi_instance:  # the shared row: this instance may not serve the terminal now
                signed_on, keys = _stored_session(stored)
            else:
                signed_on, keys = host.sessions.get(terminal), host.session_keys.get(terminal)
            sessions.append({"family": host.config.family, "signed_on_at": signed_on,
                             "check_values": _check_values(keys)})
        if not batches and not any(session["signed_on_at"] for session in sessions) and not signons and stored is None:
            raise HTTPException(status_code=404, detail=f"terminal {terminal!r} is unknown to the ledger, the "
                                                        "sessions and the journal ring")
        return {
            "terminal": terminal,
            "sessions": sessions,
            "last_signon_request": signons[-1].time if signons else None,
            "open_batch": open_batch,
            "batches": batches,
            "settlements": settlements,
        }


def _stored_session(record: SessionRecord | None) -> tuple[float | None, WorkingKeys | None]:
    """A multi-instance session row as (signed on at, working keys); keys that cannot be read show none."""
    if record is None or record.signed_on_at is None:
        return None, None
    try:
        keys = keys_from_text(record.working_keys) if record.working_keys is not None else None
    except ValueError:
        keys = None
    return record.signed_on_at, keys


def _check_values(keys: WorkingKeys | None) -> dict[str, str] | None:
    """Key check values (never the keys): what an operator compares with the terminal's."""
    if keys is None:
        return None
    values = {"pin_key": check_value(keys.pin_key).hex().upper(), "mac_key": check_value(keys.mac_key).hex().upper()}
    if keys.track_key is not None:
        values["track_key"] = check_value(keys.track_key).hex().upper()
    return values


def check_templates() -> None:
    """Raise ``FaultRuleError`` if a template is not a valid rule (run by the tests)."""
    for action, table in FAULT_TEMPLATES.items():
        rule_from_table(table, default_id=f"template-{action}")
