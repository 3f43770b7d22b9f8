"""Authorizations per second: this switch against another Python ISO 8583 host simulator, one interleaved run.

Issue #13's compass asks that the switch be at least 2.5 times as fast as the fastest other Python
ISO 8583 host simulator we measured. The one on PyPI that answers over TCP is ``iso8583sim``
(``iso8583sim serve``: an asyncio mock issuer host, Cython parser, approves everything, keeps no
state). It is AGPL, so it is never a dependency of this project: this script installs it into a
throwaway virtual environment of its own (``--sim-venv``, kept between runs) and runs it as a
separate program. Nothing of its code is used here.

Every host gets the same client as ``bench_switch.py`` (same frames: ISO 8583:1987, binary bitmap,
ASCII fields, 2-byte binary length header — ``iso8583sim``'s ``ascii-binary`` / ``2b`` and this
project's ``iso87-binary``), the same connections and window, in turns for ``--rounds`` rounds, and
the report gives the best round of each and the ratios. The bare Trio + pyiso8583 floor server is
measured too, for scale. This switch runs as ``iso-switch serve`` does by default — durable SQLite
ledger with group commit, file journal, host checks — so it does far more per request than a
stateless mock host. Run:

    python scripts/bench_others.py [--seconds 4] [--rounds 3] [--connections 50] [--window 4]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

from bench_switch import FLOOR_SERVER, free_port, measure

SIM_PACKAGE = "iso8583sim"
SIM_VERSION = "1.6.0"
GOAL = 2.5


def default_venv() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "iso8583-switch-emulator" / "bench-others"


def ensure_simulator(venv_dir: Path, version: str) -> Path:
    """The ``iso8583sim`` program in ``venv_dir``, installed there first if it is missing or another version."""
    program = venv_dir / "bin" / "iso8583sim"
    python = venv_dir / "bin" / "python"
    marker = venv_dir / f".{SIM_PACKAGE}-{version}"
    if program.is_file() and marker.is_file():
        return program
    print(f"installing {SIM_PACKAGE}=={version} into {venv_dir} (once; a virtual environment of its own)", flush=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"{SIM_PACKAGE}=={version}"],
                          capture_output=True, text=True, cwd=venv_dir)  # not the caller's directory: its .py files
                                                                          # would shadow the standard library
    if done.returncode != 0 or not program.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"error: cannot install {SIM_PACKAGE}=={version} into {venv_dir}: {last}")
    marker.touch()
    return program


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per host and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--window", type=int, default=4, help="requests in flight per connection")
    parser.add_argument("--sim-venv", type=Path, default=default_venv(), metavar="DIR",
                        help=f"where {SIM_PACKAGE} is installed (default: %(default)s)")
    parser.add_argument("--sim-version", default=SIM_VERSION, help=f"{SIM_PACKAGE} version (default: %(default)s)")
    args = parser.parse_args()
    if args.seconds <= 0 or args.rounds < 1 or args.connections < 1 or args.window < 1:
        parser.error("--seconds must be > 0; --rounds, --connections and --window >= 1")
    simulator = ensure_simulator(args.sim_venv, args.sim_version)

    hosts: list[tuple[str, str]] = [
        ("sim", f"{SIM_PACKAGE} {args.sim_version} serve (stateless mock)"),
        ("default", "this switch, default (SQLite + file journal)"),
        ("journal_none", "this switch, --journal none"),
        ("floor", "floor (trio+pyiso8583, no host logic)"),
    ]
    best: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        floor_script = Path(tmp) / "floor.py"
        floor_script.write_text(FLOOR_SERVER)
        for round_number in range(args.rounds):
            shift = round_number % len(hosts)
            for key, label in hosts[shift:] + hosts[:shift]:
                port = free_port()
                if key == "sim":
                    argv = [str(simulator), "serve", "--port", str(port), "--format", "ascii-binary", "--header", "2b"]
                    ready = "listening"
                elif key == "floor":
                    argv, ready = [sys.executable, str(floor_script), str(port)], "ready"
                else:
                    extra = ["--journal", "none"] if key == "journal_none" else []
                    ledger = str(Path(tmp) / f"{key}-{round_number}" / "ledger.sqlite")
                    argv = [sys.executable, "-m", "switch", "serve", "--port", str(port), "--ledger", ledger,
                            "--no-signon", "--no-admin", *extra]
                    ready = "listening"
                result = measure(argv, port, ready, args, tmp)
                if result["approved"] != result["requests"]:
                    raise SystemExit(f"error: {label} approved {result['approved']:.0f} of {result['requests']:.0f} "
                                     f"requests; the comparison needs every request approved")
                cpu = f"  {result['cpu_us']:6.1f} us CPU/req" if "cpu_us" in result else ""
                print(f"round {round_number + 1}: {label:<48} {result['tps']:>8.0f} auth/s{cpu}  "
                      f"p99 {result['p99_ms']:6.2f} ms", flush=True)
                if key not in best or result["tps"] > best[key]["tps"]:
                    best[key] = result

    sim = best["sim"]
    print(f"\n{'best round':<48} {'auth/s':>8}  {'CPU/req':>9}  vs {SIM_PACKAGE}: rate / CPU per request")
    for key, label in hosts:
        figures = best[key]
        cpu = figures.get("cpu_us")
        cpu_text = f"{cpu:7.1f} us" if cpu is not None else f"{'n/a':>10}"
        cpu_ratio = f" / {sim['cpu_us'] / cpu:.2f}" if cpu and "cpu_us" in sim else ""
        goal = f"  (goal >= {GOAL})" if key == "default" else ""
        print(f"{label:<48} {figures['tps']:>8.0f}  {cpu_text}  {figures['tps'] / sim['tps']:.2f}{cpu_ratio}{goal}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
