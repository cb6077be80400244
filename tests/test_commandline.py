"""What every verb shares: logging (levels, one line per event, the rate limit as a filter) and progress."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from neurocine.streams.commandline import Progress, RateLimit, configure_logging, get_logger
from neurocine.streams.formats import save_session
from tests.conftest import REPO, free_port, make_session


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def record(msg: str, key: str | None = None) -> logging.LogRecord:
    r = logging.LogRecord("neurocine.decode", logging.WARNING, __file__, 1, msg, None, None)
    if key is not None:
        r.key = key
    return r


def test_rate_limit_lets_one_line_per_key_per_interval_and_counts_the_rest() -> None:
    clock = FakeClock()
    f = RateLimit(1.0, clock=clock)
    assert f.filter(record("bad frame 1", key="frame"))
    assert not f.filter(record("bad frame 2", key="frame"))
    assert not f.filter(record("bad frame 3", key="frame"))
    assert f.filter(record("bad header", key="header"))  # another kind is not held back
    clock.t = 1.0
    r = record("bad frame 4", key="frame")
    assert f.filter(r)
    assert r.getMessage() == "bad frame 4 (+2 more)"
    clock.t = 5.0
    r = record("bad frame 5", key="frame")
    assert f.filter(r) and r.getMessage() == "bad frame 5"  # nothing held since


def test_lines_say_the_verb_and_the_level_and_respect_the_level(capsys) -> None:
    log = get_logger("test-verb")
    try:
        configure_logging("warning")
        log.info("not shown")
        log.warning("shown")
        configure_logging("info")
        log.info("now shown")
        log.error("broken")
    finally:
        configure_logging("info")
    err = capsys.readouterr().err.splitlines()
    assert err == ["test-verb: warning: shown", "test-verb: now shown", "test-verb: error: broken"]


def test_a_bad_level_is_refused_naming_the_setting(monkeypatch) -> None:
    with pytest.raises(ValueError, match="NEUROCINE_LOG_LEVEL"):
        configure_logging("loud")
    monkeypatch.setenv("NEUROCINE_LOG_LEVEL", "chatty")
    r = subprocess.run([sys.executable, "-m", "neurocine", "inspect", "x.ncr"], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "chatty" in r.stderr


def test_progress_counts_to_its_total_and_is_silent_above_info(capsys) -> None:
    report = Progress("unit", 3, unit="step")
    for i in (1, 2, 3):
        report(i, loss=0.5)
    assert "unit" in capsys.readouterr().err
    try:
        configure_logging("warning")
        quiet = Progress("quiet", 3)
        quiet(3)
    finally:
        configure_logging("info")
    assert "quiet" not in capsys.readouterr().err


def test_log_level_on_a_real_verb(tmp_path) -> None:
    """`--log-level warning` after the verb drops the info lines; the JSON result still comes on stdout."""
    save_session(make_session(n_frames=30), tmp_path / "s.ncr")
    ep = f"tcp://127.0.0.1:{free_port()}"
    runs = {}
    for level in ("info", "warning"):
        runs[level] = subprocess.run([sys.executable, "-m", "neurocine", "replay", str(tmp_path / "s.ncr"),
                                      "--bind", ep, "--speed", "0", "--log-level", level],
                                     cwd=REPO, capture_output=True, text=True, timeout=60)
    assert all(r.returncode == 0 and '"replay"' in r.stdout for r in runs.values())
    assert "replay: " in runs["info"].stderr
    assert "replay: " not in runs["warning"].stderr
