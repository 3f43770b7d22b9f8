"""The README's Python examples run as a user runs them: the test file of "Use it in your tests" in a
fresh project directory (no conftest, the installed package's plugin only), the "From Python"
terminal script against a real switch."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from switch.codec.dialect import DialectRegistry
from switch.testing import SwitchProcess

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_code(heading: str, marker: str) -> str:
    """The first ```python block after ``marker`` within the section ``heading``."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(f"\n{heading}\n"):]
    section = section[:section.find("\n### ", 1)]
    found = re.search(r"```python\n(.*?)```", section[section.index(marker):], re.S)
    assert found is not None, f"no python block after {marker!r} in {heading}"
    return found.group(1)


def user_environment() -> dict[str, str]:
    """This environment minus anything that would make pytest or Python find this repository."""
    return {key: value for key, value in os.environ.items()
            if not key.startswith(("PYTEST_", "PYTHONPATH", "COV_", "HYPOTHESIS"))}


def run_pytest(project: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra, "test_example.py"],
                          cwd=project, env=user_environment(), capture_output=True, text=True, timeout=600)


def test_use_it_in_your_tests_example_passes_in_a_fresh_project(tmp_path: Path) -> None:
    project = tmp_path / "my-project"
    project.mkdir()
    (project / "test_example.py").write_text(readme_code("### Use it in your tests", "A complete test file"))
    result = run_pytest(project)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    expected = 3 + len(DialectRegistry().names())  # three tests, one of them once per shipped dialect
    assert re.search(rf"\b{expected} passed\b", result.stdout), output
    assert not (project / "conftest.py").exists()

    without = run_pytest(project, "-p", "no:iso8583_switch")  # the plugin, and nothing else, provides them
    assert without.returncode != 0 and "fixture 'iso_switch' not found" in without.stdout, without.stdout


def test_from_python_terminal_example_runs_against_a_switch(tmp_path: Path) -> None:
    code = readme_code("### From Python", "The terminal: `open_terminal`")
    assert "127.0.0.1\", 8583" in code
    with SwitchProcess.start(["--ledger", str(tmp_path / "ledger.sqlite")], cwd=tmp_path) as switch:
        script = code.replace("127.0.0.1\", 8583", f"127.0.0.1\", {switch.port}")
        result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=user_environment(),
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.match(r"approved \d{12} \w{6}\nreversed\n$", result.stdout), result.stdout
    assert (tmp_path / "terminal.sqlite").is_file()
    assert switch.returncode == 0 and switch.closed_cleanly, switch.text
