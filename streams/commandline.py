"""What every `neurocine` verb shares, in both packages: the subcommand parser with its worked example, the
JSON result on stdout, SIGTERM as Ctrl-C. Small and light (stdlib only) so the decoder can import it without
the rig's whole command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

#: Where a rig (or replay) publishes by default, and where the decoder connects.
DEFAULT_PUB = "tcp://127.0.0.1:5555"


def neurocine_argv(*args: str) -> list[str]:
    """The command line of a `neurocine` verb run by this Python (no reliance on PATH): what every bench and the
    demo start their processes with."""
    return [sys.executable, "-m", "neurocine", *args]


def add_verb(sub: Any, name: str, help: str, example: str, description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand parser whose --help ends with a worked example (the project's convention)."""
    return sub.add_parser(
        name,
        help=help,
        description=description or help,
        epilog="example:\n" + textwrap.indent(example.strip(), "  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def emit_json(obj: dict, path: str | Path | None = None) -> None:
    """Print one JSON object (a verb's result, on stdout); also write it to `path` when given."""
    print(json_text(obj))
    if path:
        write_json(obj, path)


def write_json(obj: dict, path: str | Path) -> None:
    """Write one JSON object as emit_json prints it (its folder made if needed): a result file, or the part of one
    that a long run has so far."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json_text(obj) + "\n")


def json_text(obj: dict) -> str:
    return json.dumps(obj, indent=2, default=float)


def stop_on_sigterm() -> None:
    """Make SIGTERM behave like Ctrl-C so services stop cleanly and print their summaries."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


# ---------------------------------------------------------------------------------------------- logging
#: Levels `--log-level` accepts (also read from NEUROCINE_LOG_LEVEL, which deploy/ units set).
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_LEVEL_ENV = "NEUROCINE_LOG_LEVEL"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (a test's capture, a redirected stream)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class _VerbFormatter(logging.Formatter):
    """One line per event: `decode: message`, and `decode: warning: message` at WARNING and above (the
    journal keeps the line as is; the level word makes it greppable)."""

    def format(self, record: logging.LogRecord) -> str:
        name = record.name.removeprefix("neurocine.")
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        text = f"{name}: {level}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class RateLimit(logging.Filter):
    """At most one record per `interval_s` per key (the record's `key` extra, else its message template);
    the next one let through says how many were held back. What a hostile stream makes a service log then
    costs one line per second per kind, not one per message."""

    def __init__(self, interval_s: float = 1.0, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(getattr(record, "key", record.msg))
        now = self._clock()
        if now - self._last.get(key, -1e18) < self.interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            record.msg = f"{record.getMessage()} (+{held} more)"
            record.args = None
        return True


def get_logger(verb: str, rate_limit_s: float | None = None) -> logging.Logger:
    """The logger of one verb or service (`neurocine.<verb>`); with `rate_limit_s`, a RateLimit on it."""
    log = logging.getLogger(f"neurocine.{verb}")
    if rate_limit_s is not None and not any(isinstance(f, RateLimit) for f in log.filters):
        log.addFilter(RateLimit(rate_limit_s))
    return log


def configure_logging(level: str | None = None) -> None:
    """Every `neurocine` log line to stderr at `level` (else $NEUROCINE_LOG_LEVEL, else info); stdout stays
    for the JSON result."""
    name = (level or os.environ.get(LOG_LEVEL_ENV) or "info").lower()
    if name not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {name!r} "
                         f"(--log-level or ${LOG_LEVEL_ENV})")
    root = logging.getLogger("neurocine")
    root.setLevel(name.upper())
    root.propagate = False
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_VerbFormatter())
        root.addHandler(handler)


def add_log_level(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """`--log-level` on the top-level parser and on every verb (`neurocine decode --log-level debug`)."""
    parser.add_argument("--log-level", choices=LOG_LEVELS, default=None if top else argparse.SUPPRESS,
                        help=f"what goes to stderr (default info, or ${LOG_LEVEL_ENV})")


# ---------------------------------------------------------------------------------------------- progress
class Progress:
    """A progress line on stderr (tqdm, redrawn at most once a second): call it with the count done so far and
    any figures to show beside it (`report(i, loss=0.12)`); it closes itself when the count reaches `total`, or
    on close() for a run stopped before. Silent when the log level is above info."""

    def __init__(self, desc: str, total: int | None, unit: str = "it") -> None:
        from tqdm import tqdm

        quiet = not logging.getLogger("neurocine").isEnabledFor(logging.INFO)
        self.total = total
        self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=1.0, disable=quiet,
                         dynamic_ncols=True, leave=True)

    def __call__(self, done: int, **figures: Any) -> None:
        if figures:
            self._bar.set_postfix({k: (round(v, 4) if isinstance(v, float) else v) for k, v in figures.items()},
                                  refresh=False)
        self._bar.update(done - self._bar.n)
        if self.total is not None and done >= self.total:
            self._bar.close()

    def close(self) -> None:
        self._bar.close()


