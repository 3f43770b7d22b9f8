"""Issue 12 items 4 and 9: what a scenario load may read, and errors that always name the file.

The admin API loads shipped names, or regular ``.toml`` files under ``--scenario-path``
directories, of at most 1 MiB; the command line's ``--scenario FILE`` takes any path but still
refuses devices, FIFOs and huge files. TOML that breaks the parser itself (integers past Python's
digit limit, nesting thousands deep) is a ``ScenarioError`` naming the file like any other mistake.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from switch.scenario import (
    MAX_SCENARIO_BYTES,
    ScenarioError,
    load_scenario,
    load_scenario_within,
)

GOOD = '[scenario]\nname = "mine"\n\n[[fault]]\nid = "slow"\ndelay_request = "10ms"\n'


def test_a_file_under_a_scenario_directory_loads(tmp_path: Path) -> None:
    (tmp_path / "mine.toml").write_text(GOOD, encoding="utf-8")
    assert load_scenario_within("mine.toml", [tmp_path]).name == "mine"
    assert load_scenario_within(str(tmp_path / "mine.toml"), [tmp_path]).name == "mine"
    assert load_scenario_within("healthy").name == "healthy"  # shipped names need no directory


@pytest.mark.parametrize("name", ["/dev/zero", "/etc/passwd", "/etc/hostname.toml", "mine.toml"])
def test_without_scenario_directories_only_shipped_names_load(name: str, tmp_path: Path) -> None:
    (tmp_path / "mine.toml").write_text(GOOD, encoding="utf-8")
    with pytest.raises(ScenarioError, match="--scenario-path"):
        load_scenario_within(name)


def test_paths_that_leave_the_directory_are_refused(tmp_path: Path) -> None:
    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir()
    outside.mkdir()
    (outside / "secret.toml").write_text(GOOD, encoding="utf-8")
    (inside / "link.toml").symlink_to(outside / "secret.toml")
    for name in ("../out/secret.toml", str(outside / "secret.toml"), "link.toml"):
        with pytest.raises(ScenarioError, match="no such file under the scenario directories"):
            load_scenario_within(name, [inside])


async def test_devices_and_fifos_are_never_read(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.toml")
    (tmp_path / "zero.toml").symlink_to("/dev/zero")

    def refused(load: object, *args: object) -> str:
        try:
            load(*args)  # type: ignore[operator]
        except ScenarioError as exc:
            return exc.reason
        return "loaded"

    # in a thread, abandoned on timeout: reading a FIFO would block forever, /dev/zero fill memory
    with trio.fail_after(10):
        for name in ("pipe.toml", "zero.toml"):
            reason = await trio.to_thread.run_sync(refused, load_scenario_within, name, [tmp_path],
                                                   abandon_on_cancel=True)
            # a symlink to /dev/zero leaves the directory, so is not even looked at; the FIFO is in it
            assert reason != "loaded" and ("not a regular file" in reason or name == "zero.toml")
            # the command line's explicit file: the same refusal
            assert "not a regular file" in await trio.to_thread.run_sync(
                refused, load_scenario, str(tmp_path / name), abandon_on_cancel=True)
        assert "not a regular file" in await trio.to_thread.run_sync(refused, load_scenario, "/dev/zero",
                                                                     abandon_on_cancel=True)


def test_files_over_the_size_limit_are_refused_before_parsing(tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    big.write_text(GOOD + "#" * MAX_SCENARIO_BYTES, encoding="utf-8")
    with pytest.raises(ScenarioError, match="larger than"):
        load_scenario_within("big.toml", [tmp_path])
    with pytest.raises(ScenarioError, match="larger than"):
        load_scenario(str(big))


@pytest.mark.parametrize("name", ["healthy\x00", "a\x00b.toml", "x\n.toml"])
def test_control_characters_are_a_scenario_error(name: str, tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="control characters"):
        load_scenario_within(name, [tmp_path])


@pytest.mark.parametrize(("text", "reason"), [
    ("[scenario]\nseed = " + "9" * 5000 + "\n", "invalid TOML"),
    ("x = " + "[" * 50_000 + "]" * 50_000 + "\n", "nested too deeply"),
    ("x = " + "{ a = " * 50_000 + "1" + " }" * 50_000 + "\n", "nested too deeply"),
    ("[scenario]\nseed = " + "9" * 100 + "\n", "scenario.seed"),
])
def test_parser_breaking_toml_names_the_file(text: str, reason: str, tmp_path: Path) -> None:
    path = tmp_path / "hostile.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ScenarioError) as caught:
        load_scenario_within("hostile.toml", [tmp_path])
    assert caught.value.path == "hostile.toml"
    assert reason in str(caught.value)
    assert str(caught.value).startswith("hostile.toml")
