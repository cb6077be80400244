"""Write docs/commands.md from the command line's own parsers: every verb and bench, every option, its example.

    python tools/command_reference.py            # rewrite docs/commands.md
    python tools/command_reference.py --check    # exit 1 if docs/commands.md is not what the parsers say

tests/test_docs.py runs the check, so the reference can never drift from the code.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "docs" / "commands.md"
WIDTH = "100"  # argparse wraps help at $COLUMNS: fixed, so the file is the same on every machine

HEADER = """# Command reference

Every verb of `neurocine`, as its `--help` prints it. Generated from the parsers by
`python tools/command_reference.py` (a test checks that this file is current); do not edit by hand.
Results are JSON on stdout, logs and progress on stderr (`--log-level`, or `NEUROCINE_LOG_LEVEL`).
"""


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def render() -> str:
    os.environ["COLUMNS"] = WIDTH
    from neurocine.streams.cli import build_parser

    top = build_parser()
    top.prog = "neurocine"
    parts = [HEADER, "## neurocine\n", "```text\n" + top.format_help().rstrip() + "\n```\n"]
    verbs = _subparsers(top)
    parts.append("Verbs: " + ", ".join(f"[`{v}`](#neurocine-{v})" for v in sorted(verbs)) + ".\n")
    for name in sorted(verbs):
        parser = verbs[name]
        parts += [f"## neurocine {name}\n", "```text\n" + parser.format_help().rstrip() + "\n```\n"]
        for sub, child in sorted(_subparsers(parser).items()):
            parts += [f"### neurocine {name} {sub}\n", "```text\n" + child.format_help().rstrip() + "\n```\n"]
    return "\n".join(parts)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="compare with docs/commands.md instead of writing it")
    args = p.parse_args()
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python tools/command_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
