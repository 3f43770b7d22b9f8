"""Data shipped with the emulator: dialect files and fault/rule scenarios.

It is a package only so that the files are installed with the code and found through
importlib.resources after a plain ``pip install .``, from any working directory.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def dialects_dir() -> Path:
    """Directory holding the shipped dialect files."""
    return Path(str(files(__name__) / "dialects"))


def scenarios_dir() -> Path:
    """Directory holding the shipped scenario files."""
    return Path(str(files(__name__) / "scenarios"))
