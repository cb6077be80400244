"""What every `neurocine` verb shares, in both packages: the subcommand parser with its worked example, the
JSON result on stdout, SIGTERM as Ctrl-C. Small and light (stdlib only) so the decoder can import it without
the rig's whole command line."""

from __future__ import annotations

import argparse
import json
import signal
import textwrap
from pathlib import Path
from typing import Any

#: Where a rig (or replay) publishes by default, and where the decoder connects.
DEFAULT_PUB = "tcp://127.0.0.1:5555"


def add_verb(sub: Any, name: str, help: str, example: str, description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand parser whose --help ends with a worked example (the project's convention)."""
    return sub.add_parser(
        name,
        help=help,
        description=description or help,
        epilog="example:\n" + textwrap.indent(example.strip(), "  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def emit_json(obj: dict, path: str | None = None) -> None:
    """Print one JSON object; also write it to `path` when given."""
    text = json.dumps(obj, indent=2, default=float)
    print(text)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")


def stop_on_sigterm() -> None:
    """Make SIGTERM behave like Ctrl-C so services stop cleanly and print their summaries."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
