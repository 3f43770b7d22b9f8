"""What a test asks of its switch (``SwitchConfig``), turned into ``serve`` arguments for a subprocess
or ``SwitchOptions`` for an in-process switch — one description, both ways of running it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from switch.codec.framing import LENGTH_HEADERS

__all__ = ["SwitchConfig"]


@dataclass(frozen=True)
class SwitchConfig:
    """The switch a test runs. ``None`` everywhere means "as ``iso-switch serve`` would".

    ``framing`` is a length header kind (binary2, binary4, ascii2, ascii4, bcd2) and ``tpdu``
    whether a TPDU precedes each message, both defaulting to the dialect's. ``ledger`` is a path or
    ":memory:" (None: ``ledger.sqlite`` in the test's temporary directory). ``profiles`` a terminal
    profile file. ``args``: more ``serve`` arguments, for the subprocess variant only.
    """

    scenario: str | None = None
    dialect: str = "iso87-binary"
    framing: str | None = None
    tpdu: bool | None = None
    ledger: str | None = None
    seed: int | None = None
    profiles: str | None = None
    signon: bool | None = None
    args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.framing is not None and self.framing not in LENGTH_HEADERS:
            raise ValueError(f"framing={self.framing!r}: expected one of {', '.join(LENGTH_HEADERS)}")
        if isinstance(self.args, str) or not all(isinstance(arg, str) for arg in self.args):
            raise ValueError(f"args must be a sequence of strings, got {self.args!r}")

    @classmethod
    def of(cls, settings: SwitchConfig | Mapping[str, Any] | str | None) -> SwitchConfig:
        """A config from a config, a mapping of its fields (a marker's keywords, a parameter) or a
        scenario name; unknown keys are a ValueError naming the known ones."""
        if settings is None:
            return cls()
        if isinstance(settings, SwitchConfig):
            return settings
        if isinstance(settings, str):
            return cls(scenario=settings)
        return cls().merged(settings)

    def merged(self, changes: Mapping[str, Any]) -> SwitchConfig:
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown switch setting {unknown[0]!r} (known: {', '.join(sorted(known))})")
        values = dict(changes)
        if "args" in values and not isinstance(values["args"], str):  # a string is refused, not split
            values["args"] = tuple(values["args"])
        return dataclasses.replace(self, **values)

    def ledger_path(self, directory: Path) -> str:
        return self.ledger if self.ledger is not None else str(directory / "ledger.sqlite")

    def serve_args(self, directory: Path) -> list[str]:
        """``iso-switch serve`` arguments (ports are left to ``SwitchProcess``: free ones)."""
        args = ["--dialect", self.dialect, "--ledger", self.ledger_path(directory)]
        if self.scenario is not None:
            args += ["--scenario", self.scenario]
        if self.framing is not None:
            args += ["--length-header", self.framing]
        if self.tpdu is not None:
            args.append("--tpdu" if self.tpdu else "--no-tpdu")
        if self.seed is not None:
            args += ["--seed", str(self.seed)]
        if self.profiles is not None:
            args += ["--profiles", self.profiles]
        if self.signon is not None:
            args.append("--signon" if self.signon else "--no-signon")
        return args + list(self.args)
