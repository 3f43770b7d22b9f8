"""The switch survives mutated frames over loopback (scripts/fuzz_switch.py, kept short here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "fuzz_switch.py"


@pytest.mark.parametrize("dialect", ["iso87-binary", "cup-pos"])
def test_the_switch_survives_mutated_frames(dialect: str) -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--frames", "250", "--dialect", dialect, "--seed", "5",
                             "--check-every", "50"], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the switch survived" in result.stdout
    assert "closed" in result.stdout and "answered 0" in result.stdout  # the mutations did reach the host
