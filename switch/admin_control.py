"""Admin API routes that change the switch: fault rules, scenario, seed, reset, maintenance.

Every change is made on the event loop between two messages, so it applies to the next message read;
in-flight messages keep the fault plan they started with. Validation errors are 422s shaped like
FastAPI's own (the fault engine's or scenario loader's key goes in ``loc`` after ``"body"``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

import trio
from fastapi import Body, FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from switch.commit import CommitError
from switch.faults import FaultRuleError, parse_fault_rules
from switch.host import HostConfig
from switch.ledger import LedgerError
from switch.scenario import MAX_SCENARIO_NAME, Scenario, ScenarioError, load_scenario_within, scenario_names

if TYPE_CHECKING:
    from switch.admin import SwitchRuntime
    from switch.faults import FaultEngine, FaultRule
    from switch.server_terminals import TerminalOwner

log = logging.getLogger("switch.admin")

SCENARIO_LOADS = 2
"""Scenario loads running at once; more wait their turn instead of taking more worker threads."""
TAKE_OVER_CHUNK = 16
"""Terminals a multi-instance sessions reset takes over, ends and gives back together (each is a
try-lock and a fetch, on the owner's fetch threads)."""
MAX_TAKE_OVERS = 2_000
"""Stored sessions one reset takes over at most (a few seconds); any beyond are reported kept:
reset again."""
RESTART_ONLY_HOST_SETTINGS = frozenset({"family", "signon_required_code"})
"""Host settings a loaded scenario cannot change at runtime: ``Host`` derives state from them when
it is constructed (the dialect family's checks, the "sign on first" code), so replacing its config
would make ``host.config`` say one thing while the host does another. Every other setting is read
from ``host.config`` on each message."""


# ---------------------------------------------------------------------------------------------
# Request bodies (extra keys are refused, so a typo is a 422 naming it rather than ignored)


class ScenarioRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=MAX_SCENARIO_NAME,
                      description="A shipped scenario name (e.g. 'flaky-network') or a .toml file under a "
                                  "--scenario-path directory.")
    seed: int | None = Field(default=None, gt=-(2**64), lt=2**64,
                             description="Fault RNG seed; default: --seed, else the scenario's.")


class ResetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    what: Literal["faults", "sessions", "all"] = Field(
        description="faults: the fault engine's reset; sessions: every terminal must sign on again; all: both.")


class SeedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = Field(gt=-(2**64), lt=2**64, description="Fault RNG seed; the rules' counters start afresh.")


class MaintenanceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["off", "refuse", "respond"] = Field(
        description="off; refuse: new connections are closed at once; respond: every request is answered `code`.")
    code: str | None = Field(default=None, pattern=r"^[0-9A-Za-z]{2}$",
                             description="Response code in 'respond' mode (e.g. '91'); default: unchanged.")


# ---------------------------------------------------------------------------------------------
# Helpers


def unprocessable(loc: Sequence[str | int], msg: str, **extra: Any) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors, so clients parse one format."""
    return HTTPException(status_code=422, detail=[{"loc": list(loc), "msg": msg, "type": "value_error", **extra}])


def _fault_rule_error(exc: FaultRuleError) -> HTTPException:
    """The engine's ``path`` (``("when", "nth")``; empty for the rule as a whole) becomes ``loc``."""
    return unprocessable(["body", *exc.path], exc.reason)


def _scenario_error(exc: ScenarioError) -> HTTPException:
    return unprocessable(["body", "name"], str(exc), file=exc.path, line=exc.line, key=exc.key)


async def _reset_shared_sessions(runtime: SwitchRuntime) -> tuple[int, list[str]]:
    """Multi-instance sessions reset: (sessions ended, terminals another instance serves).

    Sessions are shared ledger rows, and only a terminal's owner may write its row. First every
    session this instance serves is ended; then the terminals whose COMMITTED session is still open
    and that no instance serves are handled ``TAKE_OVER_CHUNK`` at a time: taken over without waiting,
    ended, committed, and given back at once (also on failure or cancellation), so no terminal is
    held here longer than its chunk. A terminal another instance serves is kept: only that instance
    can end its session (a ``--workers`` supervisor sends the reset to every worker and reports what
    none of them ended)."""
    owner, ledger = runtime.owner, runtime.ledger
    assert owner is not None
    served = {terminal for host in runtime.hosts for terminal in host.sessions}
    for host in runtime.hosts:
        host.reset_sessions()
    await _committed(runtime)
    stored = await trio.to_thread.run_sync(ledger.open_session_terminals)
    others = [terminal for terminal in stored if terminal not in served]
    ended, kept = len(served), sorted(set(others[MAX_TAKE_OVERS:]))
    for first in range(0, min(len(others), MAX_TAKE_OVERS), TAKE_OVER_CHUNK):
        chunk = others[first:first + TAKE_OVER_CHUNK]
        taken: list[str] = []
        failures: list[str] = []
        try:
            async with trio.open_nursery() as nursery:
                for terminal in chunk:
                    nursery.start_soon(_take_over, owner, terminal, taken, kept, failures)
            if failures:
                raise HTTPException(status_code=503, detail=f"sessions not reset: {failures[0]}")
            done: set[str] = set()
            for host in runtime.hosts:
                done.update(host.end_sessions(taken))
            await _committed(runtime)
            ended += len(done)
        finally:
            with trio.CancelScope(shield=True):
                await owner.give_back(taken)
    return ended, sorted(kept)


async def _take_over(owner: TerminalOwner, terminal: str, taken: list[str], kept: list[str],
                     failures: list[str]) -> None:
    """Own ``terminal`` for a reset without waiting for another instance: into ``taken`` or ``kept``
    (``failures`` when the lock session is gone: the switch is stopping)."""
    if owner.owned(terminal):  # a live request of it took it over meanwhile: it is ours to end
        taken.append(terminal)
        return
    try:
        (taken if await owner.acquire(terminal, wait=0.0) else kept).append(terminal)
    except LedgerError as exc:
        failures.append(f"terminal {terminal}: {exc}")


async def _committed(runtime: SwitchRuntime) -> None:
    """Wait until every row appended so far is committed (the ended sessions): 503 if it cannot be."""
    if runtime.committer is None:
        return
    try:
        await runtime.committer.wait_committed(runtime.ledger.pending_seq)
    except CommitError as exc:
        raise HTTPException(status_code=503, detail=f"sessions ended in memory only: {exc}") from None


def _find_rule(faults: FaultEngine, rule_id: str) -> FaultRule:
    for rule in faults.rules:
        if rule.id == rule_id:
            return rule
    raise HTTPException(status_code=404, detail=f"no fault rule with id {rule_id!r}")


def _faults_state(faults: FaultEngine) -> dict[str, Any]:
    return {
        "rules": [rule.to_dict() for rule in faults.rules],
        "maintenance": {"mode": faults.maintenance, "code": faults.maintenance_code},
        "seed": faults.seed,
        "counters": faults.counters(),
    }


def _host_config_for(runtime: SwitchRuntime, current: HostConfig, scenario: Scenario
                     ) -> tuple[HostConfig, dict[str, Any], dict[str, str]]:
    """The host config a scenario asks for, what of it changes now, and what must wait for a restart.

    Built as at start-up: the family's defaults, then the scenario's ``[host]``, then the command
    line's settings; so loading "healthy" after "system-timeout" undoes the latter's settings.
    Raises ValueError when the combination is not a valid configuration.
    """
    wanted = HostConfig(family=current.family, **{**scenario.host, **runtime.host_overrides})
    applied: dict[str, Any] = {}
    not_applied: dict[str, str] = {}
    keep: dict[str, Any] = {}
    for spec in dataclasses.fields(HostConfig):
        name = spec.name
        old, new = getattr(current, name), getattr(wanted, name)
        if old == new:
            continue
        if name == "signon_required_code" and wanted.signon_code == current.signon_code:
            applied[name] = new  # same code in force, only spelled differently (explicit vs default)
        elif name in RESTART_ONLY_HOST_SETTINGS:
            keep[name] = old
            not_applied[name] = (f"wants {new!r}, keeps {old!r}: the host fixes this setting when it starts; "
                                 "restart the switch with this scenario to apply it")
        else:
            applied[name] = new
    return dataclasses.replace(wanted, **keep), applied, not_applied


def add_control_routes(app: FastAPI, runtime: SwitchRuntime, api: str) -> None:
    """Register the fault, scenario, seed, reset and maintenance endpoints under ``api``."""
    # scenario loads read files in worker threads: a limiter of their own, so however many callers
    # send loads, they never take the threads that others (the ledger's flushes) need
    scenario_loads = trio.CapacityLimiter(SCENARIO_LOADS)

    # -- fault rules ---------------------------------------------------------------------------

    @app.get(f"{api}/faults", tags=["faults"])
    async def list_faults() -> dict[str, Any]:
        """Every fault rule in evaluation order, maintenance mode, the seed in force and the counters."""
        return _faults_state(runtime.faults)

    @app.post(f"{api}/faults", tags=["faults"], status_code=201)
    async def add_fault(table: Annotated[dict[str, Any], Body(
            description="One fault rule, written as a scenario's [[fault]] table in JSON.")]) -> dict[str, Any]:
        """Add a fault rule; it applies from the next message."""
        try:
            rule = runtime.faults.add(table)
        except FaultRuleError as exc:
            raise _fault_rule_error(exc) from None
        log.info("admin: fault rule %s added", rule.id)
        return rule.to_dict()

    @app.get(f"{api}/faults/{{rule_id}}", tags=["faults"])
    async def get_fault(rule_id: str) -> dict[str, Any]:
        return _find_rule(runtime.faults, rule_id).to_dict()

    @app.patch(f"{api}/faults/{{rule_id}}", tags=["faults"])
    async def patch_fault(rule_id: str, changes: Annotated[dict[str, Any], Body(
            description="Keys of the rule to replace, as in a [[fault]] table.")]) -> dict[str, Any]:
        """Change some keys of a rule; messages already in flight keep the plan they started with."""
        rule = _find_rule(runtime.faults, rule_id)
        try:
            patched = runtime.faults.patch(rule.id, changes)
        except FaultRuleError as exc:
            raise _fault_rule_error(exc) from None
        except KeyError:  # deleted meanwhile (cannot happen on one loop, but the engine has the last word)
            raise HTTPException(status_code=404, detail=f"no fault rule with id {rule_id!r}") from None
        log.info("admin: fault rule %s patched: %s", rule.id, ", ".join(sorted(changes)))
        return patched.to_dict()

    @app.delete(f"{api}/faults/{{rule_id}}", tags=["faults"])
    async def delete_fault(rule_id: str) -> dict[str, Any]:
        rule = _find_rule(runtime.faults, rule_id)
        try:
            runtime.faults.delete(rule.id)
        except KeyError:
            raise HTTPException(status_code=404, detail=f"no fault rule with id {rule_id!r}") from None
        log.info("admin: fault rule %s deleted", rule.id)
        return {"deleted": rule.to_dict()}

    # -- scenario, reset, maintenance ----------------------------------------------------------

    @app.post(f"{api}/scenario", tags=["control"])
    async def load(request: ScenarioRequest) -> dict[str, Any]:
        """Load a scenario: its response rules, fault rules and the host settings that can change at runtime.

        Everything is validated before anything changes: a bad scenario leaves the switch as it was.
        """
        try:
            # reading and parsing a file is blocking work: keep it off the loop the terminals use,
            # on threads of its own (see scenario_loads)
            scenario = await trio.to_thread.run_sync(load_scenario_within, request.name, runtime.scenario_paths,
                                                     limiter=scenario_loads)
            for dialect in (runtime.dialect, *(dialect for _, dialect in runtime.more_listeners)):
                if dialect is not None:
                    scenario.check_dialect(dialect)
            rules = parse_fault_rules(scenario)
        except ScenarioError as exc:
            raise _scenario_error(exc) from None
        try:
            # one config per listener (families differ); the main listener's changes are reported
            configs = [_host_config_for(runtime, host.config, scenario) for host in runtime.hosts]
        except ValueError as exc:
            raise unprocessable(["body", "name"], f"{scenario.name}: [host]: {exc}") from None
        seed = next((s for s in (request.seed, runtime.seed, scenario.seed) if s is not None), None)

        # parse_fault_rules checked everything load() would (ids unique); nothing below can fail
        runtime.faults.load(rules, seed=seed)
        for host, (config, _, _) in zip(runtime.hosts, configs, strict=True):
            host.rules = scenario.response_rules or None
            host.config = config
        _, applied, not_applied = configs[0]
        runtime.scenario = scenario.name
        log.info("admin: scenario %s loaded (%d response rules, %d fault rules, seed %s)",
                 scenario.name, len(scenario.response_rules), len(rules), runtime.faults.seed)
        return {
            "scenario": scenario.name,
            "path": scenario.path,
            "seed": runtime.faults.seed,
            "response_rules": len(scenario.response_rules),
            "fault_rules": [rule.to_dict() for rule in runtime.faults.rules],
            "host": {"applied": applied, "not_applied": not_applied},
        }

    @app.post(f"{api}/reset", tags=["control"])
    async def reset(request: ResetRequest) -> dict[str, Any]:
        """Reset the fault engine, the sign-on sessions, or both. Postings are never touched.

        Multi-instance mode: sessions are ledger rows every instance shares (``_reset_shared_sessions``);
        ``sessions_kept`` lists the terminals another instance serves now, whose sessions only that
        instance can end."""
        result: dict[str, Any] = {"reset": request.what}
        if request.what in ("faults", "all"):
            runtime.faults.reset()
            result["faults"] = _faults_state(runtime.faults)
        if request.what in ("sessions", "all"):
            if runtime.owner is not None:
                result["sessions_cleared"], result["sessions_kept"] = await _reset_shared_sessions(runtime)
            else:
                result["sessions_cleared"] = sum(len(host.sessions) for host in runtime.hosts)
                for host in runtime.hosts:
                    host.reset_sessions()
        log.info("admin: reset %s", request.what)
        return result

    @app.put(f"{api}/maintenance", tags=["control"])
    async def maintenance(request: MaintenanceRequest) -> dict[str, Any]:
        """Maintenance mode: refuse new connections, or answer every request with one code (91 by default)."""
        faults = runtime.faults
        if request.code is not None:
            faults.maintenance_code = request.code.upper()
        faults.maintenance = request.mode
        log.info("admin: maintenance %s (code %s)", faults.maintenance, faults.maintenance_code)
        return {"mode": faults.maintenance, "code": faults.maintenance_code}

    @app.get(f"{api}/scenarios", tags=["control"])
    async def scenarios() -> dict[str, Any]:
        """The scenario loaded now and the shipped names ``POST /scenario`` accepts (plus --scenario-path files)."""
        return {"loaded": runtime.scenario, "shipped": scenario_names(), "paths": list(runtime.scenario_paths)}

    @app.put(f"{api}/seed", tags=["control"])
    async def set_seed(request: SeedRequest) -> dict[str, Any]:
        """Set the fault seed for a replay: the same rules start afresh (counters, random streams) on this seed."""
        runtime.faults.load(runtime.faults.rules, seed=request.seed)
        log.info("admin: fault seed set to %s", runtime.faults.seed)
        return _faults_state(runtime.faults)
