"""TLS on the terminal link, and several listeners in one switch, over real loopback sockets.

A self-signed test certificate (EC P-256, valid for 127.0.0.1 and localhost) is made in the test
with ``cryptography``'s x509 builder; nothing is read from disk but what the test wrote. The switch
serves TLS through ``trio.SSLListener``; the terminal client connects through ``trio.SSLStream``
with the certificate as its only trusted CA. Every test is bounded by ``fail_after``; the
terminals' connect timeouts are short so a failure cannot hang.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from switch.app import SwitchOptions, build_switch, parse_listener_spec
from switch.codec import Codec, load_dialect
from switch.codec.framing import Framing
from switch.commit import GroupCommitter
from switch.faults import FaultEngine
from switch.host import Host, HostConfig
from switch.ledger import Ledger
from switch.profiles import example_profiles_path, load_profiles
from switch.scenario import default_scenario
from switch.security import MacPlacement
from switch.server import ServerConfig, SwitchServer, listener_address, server_ssl_context
from terminal.client import TerminalClient, client_ssl_context, tcp_connector
from terminal.policy import Note, Outcome, Purchase, SignOn, TerminalPolicy
from terminal.profile import TerminalProfile
from terminal.store import TerminalStore

ISO = load_dialect("iso87-binary")
CUP = load_dialect("cup-pos")
PAN = "4761739001010010"
EXPIRY = "3012"
LIMIT = 15.0


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path


def make_certificate(directory: Path, name: str = "switch") -> Certificate:
    """A self-signed server certificate for 127.0.0.1 / localhost, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"iso8583 test {name}")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return Certificate(cert_path, key_path)


@pytest.fixture
def certificate(tmp_path: Path) -> Certificate:
    return make_certificate(tmp_path)


@asynccontextmanager
async def tls_switch(certificate: Certificate, dialect: Any = ISO, **host_options: Any) -> AsyncIterator[
        tuple[SwitchServer, int]]:
    ledger = Ledger.open(":memory:")
    server = SwitchServer(
        codec=Codec(dialect), framing=Framing.from_dialect(dialect),
        host=Host(HostConfig.for_dialect(dialect), ledger, default_scenario().response_rules, **host_options),
        ledger=ledger, committer=GroupCommitter(ledger),
        config=ServerConfig(port=0, idle_timeout=30.0, grace_period=1.0,
                            ssl_context=server_ssl_context(str(certificate.cert), str(certificate.key))),
        faults=FaultEngine(seed=1),
    )
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(server.serve)
            assert isinstance(listeners[0], trio.SSLListener)
            yield server, listener_address(listeners[0])[1]
            server.shutdown()


async def run_terminal(port: int, profile: TerminalProfile, dialect: Any, commands: list[Any],
                       ssl_context: Any, notes: list[Note] | None = None) -> list[Outcome]:
    store = TerminalStore.open(":memory:", profile.terminal_id)
    try:
        policy = TerminalPolicy(profile, store, trio.current_time() + 1e9)
        connect = tcp_connector("127.0.0.1", port, ssl_context=ssl_context)
        async with TerminalClient(policy, Codec(dialect), Framing.from_dialect(dialect), connect,
                                  on_note=notes.append if notes is not None else None) as client:
            return [await client.run_command(command) for command in commands]
    finally:
        store.close()


def iso_profile(**settings: Any) -> TerminalProfile:
    return TerminalProfile.for_dialect(ISO, "TERM0001", "MERCHANT0000001", connect_timeout=5.0,
                                       connect_attempts=1, **settings)


async def test_signon_and_purchase_over_tls(certificate: Certificate) -> None:
    async with tls_switch(certificate) as (server, port):
        signon, sale = await run_terminal(port, iso_profile(), ISO, [SignOn(), Purchase(1234, PAN, EXPIRY)],
                                          client_ssl_context(str(certificate.cert)))
        assert (signon.kind, sale.kind) == ("approved", "approved"), (signon, sale)
        (posting,) = server.ledger.postings()
        assert posting.approved and posting.rrn == sale.rrn


async def test_cup_terminal_with_keys_and_macs_over_tls(certificate: Certificate) -> None:
    profiles = load_profiles(example_profiles_path())
    security = profiles.get("CUP00001")
    assert security is not None
    async with tls_switch(certificate, CUP, profiles=profiles, key_seed=7,
                          mac_placement=MacPlacement.for_dialect(CUP)) as (server, port):
        profile = TerminalProfile.from_security_profile(security, connect_timeout=5.0, connect_attempts=1)
        outcomes = await run_terminal(
            port, profile, CUP,
            [SignOn(), Purchase(1000, "6270000000000000", EXPIRY, pin="123456"),
             Purchase(1000, "6270000000000000", EXPIRY, pin="000000")],
            client_ssl_context(str(certificate.cert)))
        assert [(o.kind, o.response_code) for o in outcomes] == [("approved", "00"), ("approved", "00"),
                                                                  ("declined", "55")]
        assert [p.response_code for p in server.ledger.postings()] == ["00", "55"]


async def test_a_certificate_the_terminal_does_not_trust_fails_the_connection(
    certificate: Certificate, tmp_path: Path
) -> None:
    other = make_certificate(tmp_path, "someone-else")
    async with tls_switch(certificate) as (server, port):
        notes: list[Note] = []
        (outcome,) = await run_terminal(port, iso_profile(), ISO, [SignOn()], client_ssl_context(str(other.cert)),
                                        notes)
        assert outcome.kind == "failed"
        failures = [note.text for note in notes if note.kind == "connect-failed"]
        assert failures and "TLS handshake failed" in failures[0] and "certificate" in failures[0], failures
        assert server.ledger.postings() == []
        # anyone can still connect with the right CA, or (testing only) without checking
        (ok,) = await run_terminal(port, iso_profile(), ISO, [SignOn()], client_ssl_context(insecure=True))
        assert ok.kind == "approved"


async def test_a_plain_tcp_client_on_a_tls_listener_is_dropped_and_the_switch_goes_on(
    certificate: Certificate,
) -> None:
    async with tls_switch(certificate) as (_, port):
        notes: list[Note] = []
        with trio.fail_after(2):  # the switch drops the connection at once: no response timeout runs out
            (outcome,) = await run_terminal(port, iso_profile(signon_attempts=1), ISO, [SignOn()], None, notes)
        assert outcome.kind == "failed", outcome
        failed = [note.text for note in notes if note.kind == "exchange-failed"]
        assert failed and "0800" in failed[0], [(note.kind, note.text) for note in notes]
        (ok,) = await run_terminal(port, iso_profile(), ISO, [SignOn()], client_ssl_context(str(certificate.cert)))
        assert ok.kind == "approved"


def test_bad_tls_files_are_refused_with_the_file_named(certificate: Certificate, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such file"):
        server_ssl_context(str(tmp_path / "missing.pem"), str(certificate.key))
    with pytest.raises(ValueError, match="cannot be used"):
        server_ssl_context(str(certificate.key), str(certificate.cert))
    with pytest.raises(ValueError, match="no such CA file"):
        client_ssl_context(str(tmp_path / "missing-ca.pem"))


# ---------------------------------------------------------------------------------------------
# Several listeners in one switch


async def test_two_listeners_plain_iso_and_cup_over_tls_share_one_ledger(certificate: Certificate) -> None:
    profiles_path = example_profiles_path()
    options = SwitchOptions(
        port=0, ledger=":memory:", journal="none", admin_port=None, seed=42, profiles=str(profiles_path),
        also_listen=(parse_listener_spec(f"127.0.0.1:0,dialect=cup-pos,tls-cert={certificate.cert},"
                                         f"tls-key={certificate.key}"),),
    )
    switch = build_switch(ISO, Framing.from_dialect(ISO), options)
    assert switch.group is not None and len(switch.servers) == 2
    iso_server, cup_server = switch.servers
    assert iso_server.host is not cup_server.host and iso_server.ledger is cup_server.ledger
    assert (iso_server.host.config.family, cup_server.host.config.family) == ("iso87", "cup")
    assert cup_server.config.ssl_context is not None and iso_server.config.ssl_context is None
    profiles = load_profiles(profiles_path)
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(switch.group.serve)
            iso_port, cup_port = (listener_address(listener)[1] for listener in listeners)
            iso_terminal = TerminalProfile.from_security_profile(profiles.get("ISO00001"),  # type: ignore[arg-type]
                                                                 connect_timeout=5.0, connect_attempts=1)
            cup_terminal = TerminalProfile.from_security_profile(profiles.get("CUP00001"),  # type: ignore[arg-type]
                                                                 connect_timeout=5.0, connect_attempts=1)
            iso_sale = await run_terminal(iso_port, iso_terminal, ISO, [Purchase(700, PAN, EXPIRY)], None)
            cup_sale = await run_terminal(cup_port, cup_terminal, CUP, [Purchase(900, PAN, EXPIRY)],
                                          client_ssl_context(str(certificate.cert)))
            assert [o.kind for o in iso_sale + cup_sale] == ["approved", "approved"]
            unknown = await run_terminal(iso_port, iso_profile(signon_attempts=1), ISO, [SignOn()], None)
            assert unknown[0].response_code == "58"  # TERM0001 is not in the profile file
            switch.group.shutdown()
    postings = switch.server.ledger.postings()
    assert sorted((p.terminal, p.amount) for p in postings) == [("CUP00001", 900), ("ISO00001", 700)]
    assert len({p.seq for p in postings}) == 2  # one ledger, one sequence
    assert switch.group.stats.approvals == 2 and switch.group.stats.connections_total == 3
    assert switch.server.ledger.closed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("9583", {"port": 9583}),
        ("9583,dialect=cup-pos", {"port": 9583, "dialect": "cup-pos"}),
        ("0.0.0.0:9583,dialect=cup-pos,tls=yes", {"host": "0.0.0.0", "port": 9583, "dialect": "cup-pos",
                                                  "tls": True}),
        ("[::1]:9583,tpdu=no,length-header=ascii4", {"host": "::1", "port": 9583, "tpdu": False,
                                                     "length_header": "ascii4"}),
        ("9583,tls-cert=c.pem,tls-key=k.pem", {"port": 9583, "tls": True, "tls_cert": "c.pem", "tls_key": "k.pem"}),
    ],
)
def test_listener_specs(text: str, expected: dict[str, Any]) -> None:
    spec = parse_listener_spec(text)
    for name, value in expected.items():
        assert getattr(spec, name) == value, name


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty listener"),
        ("port", "port must be a number"),
        ("70000", "port must be a number"),
        (":9583", "host before ':' is empty"),
        ("[::1]9583", "IPv6"),
        ("9583,dialect", "expected KEY=VALUE"),
        ("9583,colour=blue", "not a listener setting"),
        ("9583,tls=maybe", "expected yes or no"),
        ("9583,tls-cert=c.pem", "tls-key is missing"),
        ("9583,tls=no,tls-cert=c.pem,tls-key=k.pem", "contradicts"),
        ("9583,length-header=binary3", "expected one of"),
        ("9583,dialect=a,dialect=b", "given twice"),
    ],
)
def test_bad_listener_specs_say_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse_listener_spec(text)


def test_tls_yes_needs_the_main_certificate_and_ports_must_differ(certificate: Certificate) -> None:
    framing = Framing.from_dialect(ISO)
    options = SwitchOptions(port=9000, ledger=":memory:", journal="none", admin_port=None,
                            also_listen=(parse_listener_spec("9583,tls=yes"),))
    with pytest.raises(ValueError, match="tls=yes needs --tls-cert"):
        build_switch(ISO, framing, options)
    options = SwitchOptions(port=9583, ledger=":memory:", journal="none", admin_port=None,
                            also_listen=(parse_listener_spec("9583,dialect=cup-pos"),))
    with pytest.raises(ValueError, match=re.escape("two listeners on 127.0.0.1:9583")):
        build_switch(ISO, framing, options)
    options = SwitchOptions(port=0, ledger=":memory:", journal="none", admin_port=None, tls_cert=str(certificate.cert),
                            tls_key=str(certificate.key), also_listen=(parse_listener_spec("0,tls=yes"),))
    switch = build_switch(ISO, framing, options)
    assert all(server.config.ssl_context is not None for server in switch.servers)


# ---------------------------------------------------------------------------------------------
# The command lines, end to end


def test_serve_and_terminal_commands_with_profiles_tls_and_two_listeners(certificate: Certificate,
                                                                         tmp_path: Path) -> None:
    profiles = str(example_profiles_path())
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    serve = subprocess.Popen(
        [sys.executable, "-m", "switch", "serve", "--port", "0", "--no-admin", "--ledger", str(tmp_path / "l.sqlite"),
         "--journal", "none", "--profiles", profiles, "--seed", "5",
         "--also-listen", f"0,dialect=cup-pos,tls-cert={certificate.cert},tls-key={certificate.key}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert serve.stdout is not None
        lines = [serve.stdout.readline() for _ in range(3)]
        ports = [int(m.group(1)) for line in lines if (m := re.search(r"listening on 127\.0\.0\.1:(\d+)", line))]
        assert len(ports) == 2, lines
        assert "TLS" in lines[1] and "cup-pos" in lines[1] and "terminal profiles" in lines[2], lines

        def terminal(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "terminal", *args, "--profiles", profiles,
                                   "--connect-timeout", "5", "--connect-attempts", "1", "--timeout", "5"],
                                  capture_output=True, text=True, timeout=30, env=env)

        cup = terminal("purchase", "--amount", "12.34", "--pan", "6270000000000000", "--pin", "123456",
                       "--terminal-id", "CUP00001", "--port", str(ports[1]), "--tls-ca", str(certificate.cert),
                       "--store", str(tmp_path / "cup.sqlite"))
        assert cup.returncode == 0, cup.stdout + cup.stderr
        assert "approved" in cup.stdout
        wrong_pin = terminal("purchase", "--amount", "1", "--pan", "6270000000000000", "--pin", "999999",
                             "--terminal-id", "CUP00001", "--port", str(ports[1]), "--tls-ca",
                             str(certificate.cert), "--store", str(tmp_path / "cup.sqlite"))
        assert wrong_pin.returncode == 1 and "55" in wrong_pin.stdout, wrong_pin.stdout + wrong_pin.stderr
        iso = terminal("purchase", "--amount", "5", "--terminal-id", "ISO00001", "--port", str(ports[0]),
                       "--store", str(tmp_path / "iso.sqlite"))
        assert iso.returncode == 0, iso.stdout + iso.stderr
        untrusted = terminal("signon", "--terminal-id", "CUP00001", "--port", str(ports[1]), "--tls",
                             "--store", str(tmp_path / "cup.sqlite"))
        assert untrusted.returncode == 3, untrusted.stdout + untrusted.stderr
        several = terminal("signon", "--port", str(ports[0]), "--store", str(tmp_path / "x.sqlite"))
        assert several.returncode == 3 and "pick one with --terminal-id" in several.stderr
    finally:
        serve.terminate()
        try:
            out, err = serve.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            serve.kill()
            out, err = serve.communicate()
    assert serve.returncode == 0, err
    assert "2 approvals" in out, out  # the CUP sale and the ISO sale; the wrong PIN was declined


def test_serve_names_an_also_listen_address_already_in_use_in_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "switch", "serve", "--port", "0", "--no-admin", "--ledger", ":memory:",
             "--journal", "none", "--also-listen", f"127.0.0.1:{port},dialect=cup-pos"],
            capture_output=True, text=True, timeout=30, env={**os.environ, "ISO8583_DEBUG": ""},
        )
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [f"error: cannot listen: 127.0.0.1:{port}: Address already in use"]


def test_each_listener_issues_its_own_working_keys() -> None:
    from switch.codec.composite import CupField60, CupHeader
    from switch.codec.message import Message

    options = SwitchOptions(port=0, ledger=":memory:", journal="none", admin_port=None, seed=42,
                            profiles=str(example_profiles_path()),
                            also_listen=(parse_listener_spec("127.0.0.1:0,dialect=cup-pos"),))
    switch = build_switch(CUP, Framing.from_dialect(CUP), options)
    signon = Message("0800", {11: "000001", 41: "CUP00001", 42: "898100000000001",
                              60: CupField60("00", "000001", "003").format()}, CupHeader.DEFAULT.format())
    now = dt.datetime.now(dt.UTC)
    replies = [server.host.handle(signon, now).response for server in switch.servers]
    assert all(reply is not None and reply.fields[39] == "00" for reply in replies)
    first, second = (reply.fields[62] for reply in replies)  # type: ignore[union-attr]
    assert first != second  # the same terminal signing on through two listeners gets fresh keys each time
    switch.server.ledger.close()
