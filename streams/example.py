"""The built-in example session: a few trials of the default synthetic mouse, shipped in the package."""

from __future__ import annotations

from pathlib import Path

EXAMPLE_NAME = "example.ncr"


def example_session_path() -> Path:
    """Path of the shipped example recording (a source checkout builds it with tools/build_example_session.py)."""
    path = Path(__file__).parent / "data" / EXAMPLE_NAME
    if not path.exists():
        from neurocine.streams.formats import FormatError

        raise FormatError(f"{path}: the built-in example session is missing, so this installation is incomplete: "
                          "reinstall neurocine (pip install --force-reinstall neurocine); in a source checkout, "
                          "rebuild it with: python tools/build_example_session.py")
    return path
