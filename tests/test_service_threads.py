"""The decode service's two threads, in process over real loopback sockets: the I/O thread's inbox never
loses a frame without counting and logging it, and `max_decoded` stops the service with everything that was
decoded published."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from neurocine.decoder.live.decoded import as_decoded_frame
from neurocine.decoder.reconstruct.streaming import StreamingConfig
from neurocine.streams.protocol import RAW_TOPICS, Decoded
from neurocine.streams.replay import replay
from neurocine.streams.transport import Publisher, Subscriber
from tests.conftest import free_port
from tests.test_service import example_slice


class Lines(logging.Handler):
    """Keeps the decode logger's messages (whatever the process's logging configuration)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def serve(model: Path, rig: str, out: str, result: dict[str, Any], stop: threading.Event, **kw: Any) -> None:
    """A DecodeService on this thread (it creates, and so owns, both sockets), as `neurocine decode` runs it."""
    from neurocine.decoder.live.service import DecodeService

    max_decoded = kw.pop("max_decoded", None)
    with Subscriber(rig, topics=RAW_TOPICS, in_order=True) as sub, Publisher(out) as pub:
        svc = DecodeService([str(model)], sub, pub, backend="torch", **kw)
        pub.wait_subscribers(1, timeout_s=60)  # the test's collector
        result["stats"] = svc.run(should_stop=stop.is_set, max_decoded=max_decoded)


def collect(sub: Subscriber, until: float, want: int, quiet_s: float = 3.0) -> list:
    """Decoded frames until `want` of them, or `quiet_s` without one once they started coming."""
    got: list = []
    last = None
    while time.monotonic() < until and len(got) < want:
        m = sub.recv(timeout_s=0.2)
        if isinstance(m, Decoded):
            got.append(as_decoded_frame(m))
            last = time.monotonic()
        elif last is not None and time.monotonic() - last > quiet_s:
            break
    return got


def run_service(model: Path, n_frames: int, want: int, **kw: Any) -> tuple[Any, list]:
    session = example_slice(n_frames)
    rig, out = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    result: dict[str, Any] = {}
    stop = threading.Event()
    th = threading.Thread(target=serve, args=(model, rig, out, result, stop), kwargs=kw, daemon=True)
    with Subscriber(out) as collector, Publisher(rig, nodrop=True) as pub:
        th.start()
        assert pub.wait_subscribers(1, timeout_s=60)
        replay(session, pub, speed=0)  # flat out: the whole session arrives while the model loads
        frames = collect(collector, time.monotonic() + 60, want=want)
        if "max_decoded" in kw:
            th.join(60)  # it stops by itself
        stop.set()
        th.join(60)
    assert not th.is_alive()
    return result["stats"], frames


def test_a_full_inbox_counts_and_logs_every_frame_it_drops(small_mouse: Path) -> None:
    lines = Lines()
    logger = logging.getLogger("neurocine.decode")
    logger.addHandler(lines)
    try:
        # an inbox of 4 frames, and 120 frames arriving at once while the compute thread loads the model
        stats, frames = run_service(small_mouse, 120, want=120, config=StreamingConfig(lag=4, steps=0),
                                    max_backlog=4)
    finally:
        logger.removeHandler(lines)
    assert stats.backlog_overflow > 0
    assert stats.frames_in + stats.backlog_overflow == 120  # each frame decoded or counted as dropped
    assert stats.backlog_max <= 4
    assert any("decode backlog full" in line for line in lines.lines), lines.lines
    seqs = [f.seq for f in frames]
    assert seqs == sorted(seqs) and len(seqs) == stats.decoded_out  # what was decoded was published, in order


def test_max_decoded_stops_the_service_after_publishing_them(small_mouse: Path) -> None:
    stats, frames = run_service(small_mouse, 60, want=20, config=StreamingConfig(lag=4, steps=1), max_decoded=20)
    assert stats.decoded_out == 20  # the compute thread stops at the frame that reached it
    assert [f.seq for f in frames] == list(range(20))  # and the I/O thread published all of them
    assert stats.sessions == 1 and stats.steps_run + stats.steps_shed == stats.frames_in
