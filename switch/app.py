"""Assembles a switch from command-line choices: dialect, framing, scenario, ledger, listeners.

Kept apart from the click layer so tests and the benchmark build exactly what ``iso-switch serve``
runs, without parsing arguments.

One switch may listen on several addresses (``--also-listen``), each with its own dialect,
framing and TLS: one ``SwitchServer`` and one ``Host`` per listener over a shared ledger (see
``switch.server`` for why). A profile file (``--profiles``) is shared by every listener's host.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs
import trio

from switch.admin import SwitchRuntime, serve_admin
from switch.codec import Codec, Dialect
from switch.codec.dialect import load_dialect
from switch.codec.framing import LENGTH_HEADERS, Framing, FramingError
from switch.commit import GroupCommitter
from switch.fault_counters import FaultCounters
from switch.faults import FaultEngine
from switch.faults.shared import SharedFaultEngine
from switch.held import HeldRequests
from switch.host import Host, HostConfig
from switch.journal import Journal
from switch.journal.writing import choose_writer
from switch.ledger import Ledger
from switch.ledger_backends import is_postgres_target
from switch.metrics import SwitchMetrics
from switch.profiles import ProfileSet, load_profiles
from switch.scenario import Scenario, default_scenario, load_scenario
from switch.security import MacError, MacPlacement
from switch.server import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PENDING,
    ServerConfig,
    SwitchGroup,
    SwitchServer,
    listener_address,
    run_until_signalled,
    server_ssl_context,
)
from switch.server_terminals import DEFAULT_IDLE_SECONDS, DEFAULT_WAIT, TerminalOwner

APP_NAME = "iso8583-switch-emulator"


def default_ledger_path() -> Path:
    """Per-user data directory, so the ledger survives restarts without any flag."""
    return Path(platformdirs.user_data_dir(APP_NAME)) / "ledger.sqlite"


LISTEN_KEYS = ("dialect", "length-header", "tpdu", "tls", "tls-cert", "tls-key")
"""What an ``--also-listen`` spec may set after its address."""


@dataclass(frozen=True)
class ListenerSpec:
    """One more listener, as ``--also-listen`` describes it (before dialects and files are loaded).

    ``host`` None: the main listener's address. ``dialect`` None: the main listener's dialect.
    ``tls``: True = TLS with the main listener's certificate and key (``--tls-cert``/``--tls-key``)
    unless ``tls_cert``/``tls_key`` name this listener's own.
    """

    port: int
    host: str | None = None
    dialect: str | None = None
    length_header: str | None = None
    tpdu: bool | None = None
    tls: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None


def _yes_no(key: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("yes", "true", "on", "1"):
        return True
    if lowered in ("no", "false", "off", "0"):
        return False
    raise ValueError(f"{key}={value!r}: expected yes or no")


def parse_listener_spec(text: str) -> ListenerSpec:
    """``[HOST:]PORT[,dialect=NAME|FILE][,length-header=KIND][,tpdu=yes|no][,tls=yes|no]
    [,tls-cert=FILE,tls-key=FILE]`` → a ``ListenerSpec``; ValueError saying what is wrong.

    An IPv6 host is written in brackets: ``[::1]:9583``. Examples: ``9583,dialect=cup-pos``,
    ``0.0.0.0:9583,dialect=cup-pos,tls=yes``.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty listener: expected [HOST:]PORT[,dialect=NAME,...], e.g. 9583,dialect=cup-pos")
    address, *options = (part.strip() for part in text.split(","))
    host: str | None = None
    port_text = address
    if address.startswith("["):
        closing = address.find("]")
        if closing < 0 or address[closing + 1:closing + 2] != ":":
            raise ValueError(f"{address!r}: write an IPv6 address as [ADDRESS]:PORT, e.g. [::1]:9583")
        host, port_text = address[1:closing], address[closing + 2:]
    elif ":" in address:
        host, port_text = address.rsplit(":", 1)
    if host is not None and not host:
        raise ValueError(f"{address!r}: the host before ':' is empty")
    if not (port_text.isascii() and port_text.isdigit() and 0 <= int(port_text) <= 65535):
        raise ValueError(f"{address!r}: the port must be a number 0-65535, got {port_text!r}")
    values: dict[str, str] = {}
    for option in options:
        key, sep, value = option.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or not value:
            raise ValueError(f"{option!r}: expected KEY=VALUE with KEY one of {', '.join(LISTEN_KEYS)}")
        if key not in LISTEN_KEYS:
            raise ValueError(f"{key!r} is not a listener setting (known: {', '.join(LISTEN_KEYS)})")
        if key in values:
            raise ValueError(f"{key} is given twice")
        values[key] = value
    length_header = values.get("length-header")
    if length_header is not None and length_header not in LENGTH_HEADERS:
        raise ValueError(f"length-header={length_header!r}: expected one of {', '.join(LENGTH_HEADERS)}")
    if ("tls-cert" in values) != ("tls-key" in values):
        missing = "tls-key" if "tls-cert" in values else "tls-cert"
        raise ValueError(f"{missing} is missing: a listener's own certificate needs both tls-cert and tls-key")
    tls = _yes_no("tls", values["tls"]) if "tls" in values else "tls-cert" in values
    if not tls and "tls-cert" in values:
        raise ValueError("tls=no contradicts tls-cert/tls-key")
    return ListenerSpec(
        port=int(port_text), host=host, dialect=values.get("dialect"), length_header=length_header,
        tpdu=_yes_no("tpdu", values["tpdu"]) if "tpdu" in values else None, tls=tls,
        tls_cert=values.get("tls-cert"), tls_key=values.get("tls-key"),
    )


@dataclass
class SwitchOptions:
    host: str = "127.0.0.1"
    port: int = 8583
    ledger: str | os.PathLike[str] | None = None  # None: default_ledger_path(); ":memory:" allowed
    scenario: str | None = None
    seed: int | None = None
    require_signon: bool | None = None  # None: scenario / default decides
    idle_timeout: float | None = 300.0
    max_connections: int | None = DEFAULT_MAX_CONNECTIONS  # per listener; None: no limit
    max_pending: int = DEFAULT_MAX_PENDING  # per connection: requests read, not yet answered
    grace_period: float = 5.0
    host_overrides: dict[str, object] = field(default_factory=dict)
    journal: str | os.PathLike[str] | None = None  # None: journal.jsonl beside the ledger file; "none": memory only
    journal_writer: str = "auto"  # "process": lines formatted in a writer process; "thread": in this one; "auto"
    admin_host: str = "127.0.0.1"
    admin_port: int | None = 8584  # None: no admin API
    admin_port_given: bool = True  # False: the port is a default, and a free one may replace it when taken
    admin_token: str | None = None
    admin_allow_hosts: tuple[str, ...] = ()  # Host header names the admin API accepts besides localhost/IPs
    scenario_paths: tuple[str, ...] = ()  # directories the admin API may load scenario files from
    profiles: str | os.PathLike[str] | None = None  # terminal profile file; None: no profiles (as before)
    dialect_paths: tuple[str | os.PathLike[str], ...] = ()  # for profile and --also-listen dialect names
    tls_cert: str | None = None  # TLS on the main listener: PEM certificate (chain) ...
    tls_key: str | None = None  # ... and its private key
    also_listen: tuple[ListenerSpec, ...] = ()
    multi_instance: bool = False  # share a PostgreSQL ledger with other instances (docs/scaleout.md)
    terminal_wait: float = DEFAULT_WAIT  # multi-instance: wait for a terminal another instance serves
    terminal_idle: float = DEFAULT_IDLE_SECONDS  # multi-instance: give back a terminal idle this long
    reuse_port: bool = False  # SO_REUSEPORT on every listener: a worker of serve --workers
    fault_epoch: str = ""  # multi-instance: scopes the shared counts of counted fault rules (switch.faults.shared)


def resolve_ledger_path(option: str | os.PathLike[str] | None) -> str:
    if option is None:
        path = default_ledger_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        return str(path)
    if is_postgres_target(str(option)):  # a server's database: nothing to create here
        return str(option)
    if str(option) != ":memory:":
        Path(option).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return str(option)


def resolve_journal_path(option: str | os.PathLike[str] | None, ledger_path: str) -> str | None:
    """The journal file: given, beside a file ledger, or none (memory ring only)."""
    if option is not None:
        return None if str(option).lower() == "none" else str(option)
    if ledger_path == ":memory:":
        return None
    if is_postgres_target(ledger_path):  # no directory beside a database: the per-user data directory
        directory = default_ledger_path().parent
        directory.mkdir(parents=True, exist_ok=True)
        return str(directory / "journal.jsonl")
    return str(Path(ledger_path).parent / "journal.jsonl")


@dataclass
class Switch:
    """A configured switch: its listeners (``server`` is the main one) plus what the admin API drives.

    The admin API drives every listener's host (``runtime.hosts``); fault rules, the ledger, the
    journal and the metrics are shared by every listener.
    """

    server: SwitchServer
    runtime: SwitchRuntime
    scenario: Scenario
    options: SwitchOptions
    journal_path: str | None
    group: SwitchGroup | None = None  # None: the main listener alone
    profiles: ProfileSet | None = None
    admin_port_taken: int | None = None
    """Set when the default admin port was in use and a free one was taken instead (``run``)."""

    @property
    def servers(self) -> tuple[SwitchServer, ...]:
        return self.group.servers if self.group is not None else (self.server,)

    async def run(self, *, handle_signals: bool = True,
                  task_status: trio.TaskStatus[tuple[list[trio.SocketListener], int | None]]
                  = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until SIGINT/SIGTERM: listeners, journal writer and admin API in one nursery.

        On the signal the server drains (grace period) and closes the ledger; then the journal
        writes what is queued and the admin API stops. ``handle_signals=False`` (a switch inside
        someone else's program, e.g. the pytest plugin) serves until ``shutdown()`` instead.
        """
        try:
            await self._serve(handle_signals, task_status)
        finally:
            if self.runtime.faults.shared is not None:
                self.runtime.faults.shared.close()

    async def _serve(self, handle_signals: bool,
                     task_status: trio.TaskStatus[tuple[list[trio.SocketListener], int | None]]) -> None:
        async with trio.open_nursery() as nursery:
            if self.server.journal is not None:
                await nursery.start(self.server.journal.run)
            if self.runtime.faults.shared is not None:  # multi-instance: counted rules counted in batches
                await nursery.start(self.runtime.faults.shared.run)
            admin_port = None
            if self.options.admin_port is not None:
                admin_port = await self._start_admin(nursery, self.options.admin_port)
            async with trio.open_nursery() as serving:
                if handle_signals:
                    listeners = await serving.start(run_until_signalled, self.group or self.server)
                else:
                    listeners = await serving.start((self.group or self.server).serve)
                self.runtime.listeners = listener_entries(self.servers)  # /health lists them
                task_status.started((listeners, admin_port))
            # drained and the ledger closed: the journal writer flushes as it is cancelled
            nursery.cancel_scope.cancel()
        if self.server.journal is not None:
            self.server.journal.close()  # anything recorded after the writer stopped, then the file

    async def _start_admin(self, nursery: trio.Nursery, port: int) -> int:
        """Serve the admin API; its bound port. A second switch started with the defaults finds 8584
        taken: when the port was not asked for, a free one is taken (``admin_port_taken`` says so);
        when it was, the error names the address and the option that sets it."""
        host = self.options.admin_host
        try:
            bound: int = await nursery.start(serve_admin, self.runtime, host, port)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE and not self.options.admin_port_given and port:
                bound = await nursery.start(serve_admin, self.runtime, host, 0)
                self.admin_port_taken = port
                return bound
            raise OSError(exc.errno, admin_bind_error(host, port, exc)) from exc
        return bound


def listener_entries(servers: Sequence[SwitchServer]) -> list[dict[str, Any]]:
    """Every bound address of every listener, as ``/health`` lists them: a client (the load runner's
    consistency check) can then tell whether an admin API belongs to the switch it talks to."""
    entries: list[dict[str, Any]] = []
    for server in servers:
        for listener in server.listeners:
            host, port = listener_address(listener)
            entries.append({"host": host, "port": port, "dialect": server.codec.dialect.name,
                            "tls": server.config.ssl_context is not None})
    return entries


def admin_bind_error(host: str, port: int, exc: OSError) -> str:
    """``admin API 127.0.0.1:8584: Address already in use (another switch? ...)``: which port, and
    which option moves it, since the bare "Address already in use" names neither."""
    reason = exc.strerror or str(exc)
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    hint = "another switch? " if exc.errno == errno.EADDRINUSE else ""
    return f"admin API {where}: {reason} ({hint}set its port with --admin-port, 0 for a free one, or --no-admin)"


@dataclass(frozen=True)
class _Listener:
    """A listener with everything loaded: what one ``SwitchServer`` is built from."""

    host: str
    port: int
    dialect: Dialect
    framing: Framing
    tls_cert: str | None
    tls_key: str | None


def resolve_listeners(dialect: Dialect, framing: Framing, options: SwitchOptions) -> list[_Listener]:
    """The main listener and every ``--also-listen`` one, dialects loaded and TLS files paired.

    Raises ValueError (bad TLS options, two listeners on one address) or DialectError.
    """
    if (options.tls_cert is None) != (options.tls_key is None):
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    listeners = [_Listener(options.host, options.port, dialect, framing, options.tls_cert, options.tls_key)]
    for spec in options.also_listen:
        extra = load_dialect(spec.dialect, options.dialect_paths) if spec.dialect else dialect
        try:
            extra_framing = Framing.from_dialect(extra, length_header=spec.length_header, tpdu=spec.tpdu)
        except FramingError as exc:
            raise ValueError(f"--also-listen {spec.port}: framing: {exc}") from None
        cert, key = spec.tls_cert, spec.tls_key
        if spec.tls and cert is None:
            if options.tls_cert is None:
                raise ValueError(f"--also-listen {spec.port}: tls=yes needs --tls-cert and --tls-key "
                                 "(or tls-cert=FILE,tls-key=FILE in the listener)")
            cert, key = options.tls_cert, options.tls_key
        listeners.append(_Listener(spec.host or options.host, spec.port, extra, extra_framing, cert, key))
    seen: dict[tuple[str, int], int] = {}
    for index, listener in enumerate(listeners):
        where = (listener.host, listener.port)
        if listener.port and where in seen:
            raise ValueError(f"two listeners on {listener.host}:{listener.port}; give each its own port")
        seen[where] = index
    return listeners


def _mac_placement(dialect: Dialect, profiles: ProfileSet | None, port: int) -> MacPlacement | None:
    try:
        return MacPlacement.for_dialect(dialect)
    except MacError as exc:
        if profiles is not None and any(profile.macs for profile in profiles):
            raise ValueError(f"listener on port {port}: terminals in {profiles.path} MAC their messages, "
                             f"but {exc}") from None
        return None


def _fault_engine(scenario: Scenario, options: SwitchOptions, ledger_path: str) -> FaultEngine:
    """The scenario's fault engine. Multi-instance: a message's draws depend on it alone (not on which
    instance's stream it met) and counted rules count in the shared database (``switch.faults.shared``)."""
    if not options.multi_instance:
        return FaultEngine.from_scenario(scenario, seed=options.seed)
    seed = options.seed
    if seed is None and scenario.seed is None and options.fault_epoch:
        # the workers of one run must draw alike: one seed for all of them, from the run's token
        seed = int.from_bytes(hashlib.blake2b(options.fault_epoch.encode(), digest_size=4).digest(), "big")
    counters = FaultCounters.open(ledger_path)
    try:
        return SharedFaultEngine.for_scenario(scenario, seed=seed, counters=counters, epoch=options.fault_epoch)
    except BaseException:
        counters.close()
        raise


def build_switch(dialect: Dialect, framing: Framing, options: SwitchOptions) -> Switch:
    """Everything ``serve`` needs, wired together; raises the loaders' typed errors on bad input
    (ScenarioError, ProfileError, DialectError, LedgerError, ValueError)."""
    scenario = load_scenario(options.scenario) if options.scenario else default_scenario()
    listeners = resolve_listeners(dialect, framing, options)
    for listener in listeners:
        scenario.check_dialect(listener.dialect)
    cli_overrides = dict(options.host_overrides)
    if options.require_signon is not None:
        cli_overrides["require_signon"] = options.require_signon
    profiles = load_profiles(options.profiles, dialect_path=options.dialect_paths) if options.profiles else None
    contexts = [server_ssl_context(item.tls_cert, item.tls_key) if item.tls_cert and item.tls_key else None
                for item in listeners]
    configs = [HostConfig.for_dialect(item.dialect, **{**scenario.host, **cli_overrides}) for item in listeners]
    placements = [_mac_placement(item.dialect, profiles, item.port) for item in listeners]
    ledger_path = resolve_ledger_path(options.ledger)
    if options.multi_instance and not is_postgres_target(ledger_path):
        raise ValueError(f"--multi-instance needs a postgresql:// ledger, not {ledger_path}: instances on a SQLite "
                         "file would each decide from their own memory")
    ledger = Ledger.open(ledger_path, writer=True, multi_instance=options.multi_instance)
    with contextlib.ExitStack() as undo:  # what is open is closed again if anything below fails
        undo.callback(ledger.close)
        faults = _fault_engine(scenario, options, ledger_path)
        if faults.shared is not None:
            undo.callback(faults.shared.close)
        owner = (TerminalOwner(ledger, wait=options.terminal_wait, idle_seconds=options.terminal_idle)
                 if options.multi_instance else None)
        committer = GroupCommitter(ledger)
        codec = Codec(dialect)
        journal_path = resolve_journal_path(options.journal, ledger_path)
        journal = Journal(codec, path=journal_path,  # one file; masked by the main dialect (others: PAN-safe)
                          writer=choose_writer(options.journal_writer))
        metrics = SwitchMetrics()
        held = HeldRequests(metrics=metrics)  # one per switch: the cap and the ids span every listener
        servers = []
        for index, (item, config, placement, context) in enumerate(zip(listeners, configs, placements, contexts,
                                                                        strict=True)):
            # each host counts sign-ons on its own: a seed per listener, or a terminal signing on through two
            # listeners would get the same working keys twice
            key_seed = faults.seed if index == 0 else f"{faults.seed}/listener/{index}"
            host = Host(config, ledger, scenario.response_rules, profiles=profiles, key_seed=key_seed,
                        mac_placement=placement, auth_seed=faults.seed)  # one salt: the listeners share a ledger
            servers.append(SwitchServer(
                codec=codec if item.dialect is dialect else Codec(item.dialect), framing=item.framing, host=host,
                ledger=ledger, committer=committer,
                config=ServerConfig(host=item.host, port=item.port, idle_timeout=options.idle_timeout,
                                    grace_period=options.grace_period, ssl_context=context,
                                    max_connections=options.max_connections, reuse_port=options.reuse_port,
                                    max_pending=options.max_pending),
                faults=faults, journal=journal, metrics=metrics, held=held, owner=owner,
            ))
        server = servers[0]
        runtime = SwitchRuntime(faults=faults, host=server.host, ledger=ledger, journal=journal, metrics=metrics,
                                dialect_name=dialect.name, scenario=scenario.name, seed=options.seed,
                                token=options.admin_token, dialect=dialect, host_overrides=cli_overrides,
                                committer=committer, held=held, scenario_paths=tuple(options.scenario_paths),
                                owner=owner,
                                allowed_hosts=tuple(options.admin_allow_hosts),
                                more_listeners=tuple((extra.host, item.dialect)
                                                     for extra, item in zip(servers[1:], listeners[1:], strict=True)))
        group = SwitchGroup(servers) if len(servers) > 1 else None
        built = Switch(server, runtime, scenario, options, journal_path, group, profiles)
        undo.pop_all()  # built: Switch.run closes them
    return built

