"""The admin listener's gatekeepers, run before any route: the Host header check, the body cap, the bearer token.

Middlewares rather than FastAPI dependencies so that every path (``/openapi.json``, ``/docs``,
``/metrics``, the console's API calls) is covered by the same rules in one place.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from fastapi.responses import JSONResponse

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send


class GuardSettings(Protocol):
    """What the gatekeepers read, per request: a switch's ``SwitchRuntime``, or the supervisor's admin
    endpoint of ``serve --workers`` (``switch.workers_admin``)."""

    token: str | None
    allowed_hosts: tuple[str, ...]

OPEN_PATHS = frozenset({"/health", "/", "/favicon.ico"})
"""Paths served without the bearer token: liveness probes should not need a secret, and the console
page must load to show its login prompt (it holds no data; every call it makes needs the token)."""
OPEN_PREFIXES = ("/console/",)
"""Static console and Swagger UI assets: files shipped in the package, no data, so no token."""
MAX_BODY_BYTES = 1 << 20
"""Request bodies above 1 MiB are refused (413): a rule or a scenario request is a few hundred bytes."""
LOCAL_HOST_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
"""Host header names always accepted, with any IP address literal (an IP cannot be DNS-rebound)."""


def _host_name(value: bytes) -> str:
    """The name in a Host header, without port or IPv6 brackets, lower-case."""
    text = value.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1:].partition("]")[0]
    name, _, port = text.rpartition(":")
    return (name if name and port.isdigit() else text).rstrip(".")  # "localhost." is localhost


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Guard:
    """ASGI middleware run before anything else: the Host header check and the body cap.

    Host: a browser page on ``evil.example`` that rebinds its name to 127.0.0.1 sends
    ``Host: evil.example``; refusing names we were not told about (421) stops it reaching the API.
    Body: refused from its ``Content-Length`` at once, and counted as it streams otherwise, so a
    100 MB body is never buffered (at most ``MAX_BODY_BYTES`` are).
    """

    def __init__(self, app: ASGIApp, runtime: GuardSettings) -> None:
        self.app = app
        self.runtime = runtime

    def _host_allowed(self, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        hosts = [value for name, value in headers if name == b"host"]
        if len(hosts) != 1:
            return False
        name = _host_name(hosts[0])
        allowed = {*LOCAL_HOST_NAMES, *(host.lower() for host in self.runtime.allowed_hosts)}
        return _is_ip(name) or name in allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        if not self._host_allowed(headers):
            response = JSONResponse({"detail": "Host header not allowed (use localhost or an IP address, "
                                               "or start the switch with --admin-allow-host NAME)"}, status_code=421)
            await response(scope, receive, send)
            return
        declared = next((value for name, value in headers if name == b"content-length"), None)
        if declared is not None and (not declared.strip().isdigit() or int(declared) > MAX_BODY_BYTES):
            await self._too_large(scope, receive, send)
            return
        # read the body here, at most the cap (FastAPI would buffer it all anyway), then replay it
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            if len(body) > MAX_BODY_BYTES:
                await self._too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _too_large(scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse({"detail": f"request body larger than {MAX_BODY_BYTES} bytes"}, status_code=413)
        await response(scope, receive, send)


class BearerAuth:
    """ASGI middleware: with ``runtime.token`` set, every path but ``OPEN_PATHS`` needs the bearer token.

    A middleware rather than a FastAPI dependency so that ``/openapi.json``, ``/docs`` and
    ``/metrics`` are covered too. The token is read per request, so it can be changed at runtime.
    """

    def __init__(self, app: ASGIApp, runtime: GuardSettings) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = self.runtime.token
        path = scope.get("path", "")
        if token and scope["type"] == "http" and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES):
            given = b""
            for name, value in scope["headers"]:
                if name == b"authorization":
                    given = value
                    break
            scheme, _, credentials = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(credentials.strip(), token.encode()):
                reason = "missing bearer token" if not given else "wrong bearer token"
                response = JSONResponse({"detail": reason}, status_code=401,
                                        headers={"WWW-Authenticate": 'Bearer realm="iso-switch admin"'})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

