"""The live topology, written once: a source (replay, rig, or a publisher of the caller's) -> `neurocine decode`
-> this process.

`neurocine demo`, `bench latency`, `bench loop`, `bench soak` and `bench fuzz` all run it. Each part is its own
process talking ZeroMQ over loopback, as at a microscope; this process subscribes to the decoded stream and to
the source's frames (for the true stimulus), or leaves either to a consumer of its own (bench loop reads the
decoded stream through the client API). A source started here waits for its subscribers (the decoder and this
process) so no frame is published to nobody; a source the caller owns (fuzz, soak) is the caller's to pace.
"""

from __future__ import annotations

import collections
import json
import signal
import socket
import subprocess
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from neurocine.decoder.live.decoded import DecodedFrame, as_decoded_frame
from neurocine.streams.commandline import neurocine_argv
from neurocine.streams.protocol import Decoded, End, Frame, ProtocolError
from neurocine.streams.transport import Subscriber


def free_port_pair() -> int:
    """A loopback port p with p + 1 free too (a pipeline binds both), below the ephemeral range (see
    docs/protocol.md: a subscriber reconnecting to a dead ephemeral port can connect to itself)."""
    import random

    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000, 2)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no two free ports in 20000-32000")


class LivePipeline:
    """Start the decoder, subscribe, start the source; `poll()` hands over what arrived; `close()` stops all.

    `source` is a verb and its options without `--bind` (e.g. ["replay", path, "--loop"]), bound to `port`; or the
    endpoint of a publisher the caller runs itself (a string), which starts nothing. `decode` holds the decoder's
    options without `--connect/--bind`; it publishes on `port + 1`. `watch_source` / `watch_decoded`: this
    process subscribes to the source's frames / the decoded stream (False: the caller connects its own consumer
    to `decoded_ep`). The decoder's JSON summary (its stdout) is in `decoder_result` after close(); with
    `keep_decoder_log`, its last `log_lines` log lines are in `decoder_log`. Used as a context manager.
    """

    def __init__(self, source: Sequence[str] | str, decode: Sequence[str], port: int, keep_decoder_log: bool = False,
                 *, watch_source: bool = True, watch_decoded: bool = True, log_lines: int = 200) -> None:
        own_source = not isinstance(source, str)
        self.source_ep = f"tcp://127.0.0.1:{port}" if own_source else str(source)
        self.decoded_ep = f"tcp://127.0.0.1:{port + 1}"
        self.watch_source, self.watch_decoded = watch_source, watch_decoded
        listeners = 1 + int(watch_source)  # the decoder, and this process when it watches the source
        self._source_argv = [*source, "--bind", self.source_ep, "--wait-subscribers", str(listeners)] \
            if own_source else None
        self._decode_argv = ["decode", "--connect", self.source_ep, "--bind", self.decoded_ep, *decode]
        self._keep_log = keep_decoder_log
        #: the decoder's last stderr lines when `keep_decoder_log` (read by a thread, so a chatty decoder never
        #: blocks on a full pipe); otherwise its log goes to this process's stderr
        self.decoder_log: collections.deque[str] = collections.deque(maxlen=log_lines)
        #: the decoder's final JSON (its stats), read when it exits; None if it printed none
        self.decoder_result: dict[str, Any] | None = None
        self.procs: dict[str, subprocess.Popen] = {}
        self.source_ended = False
        self._subs: list[Subscriber] = []
        self._drainer: threading.Thread | None = None
        self._stdout: list[str] = []
        self._stdout_reader: threading.Thread | None = None
        self.decoded_sub: Subscriber | None = None
        self.source_sub: Subscriber | None = None

    def __enter__(self) -> LivePipeline:
        try:
            self.procs["decoder"] = dec = subprocess.Popen(
                neurocine_argv(*self._decode_argv), stdout=subprocess.PIPE,
                stderr=subprocess.PIPE if self._keep_log else None, text=True)
            self._stdout_reader = threading.Thread(target=lambda: self._stdout.append(dec.stdout.read()), daemon=True)
            self._stdout_reader.start()
            if self._keep_log:
                self._drainer = threading.Thread(target=self._drain, args=(dec.stderr,), daemon=True)
                self._drainer.start()
            if self.watch_decoded:
                self.decoded_sub = Subscriber(self.decoded_ep)
                self._subs.append(self.decoded_sub)
            if self.watch_source:
                self.source_sub = Subscriber(self.source_ep, topics=[b"session", b"frame", b"end"])
                self._subs.append(self.source_sub)
            if self._source_argv is not None:
                self.procs["source"] = subprocess.Popen(neurocine_argv(*self._source_argv),
                                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drain(self, stream: Any) -> None:
        for line in stream:
            self.decoder_log.append(line.rstrip("\n"))

    def add(self, name: str, argv: Sequence[str], **popen: Any) -> subprocess.Popen:
        """Start one more `neurocine` process that belongs to the pipeline (the viewer, a recorder); stopped by
        close()."""
        self.procs[name] = subprocess.Popen(neurocine_argv(*argv), **popen)
        return self.procs[name]

    def poll(self, timeout_s: float = 0.05) -> tuple[list[Frame], DecodedFrame | None]:
        """The source frames that arrived (without waiting), then at most one decoded frame (waiting up to
        `timeout_s`); a decoded message that does not parse is skipped."""
        frames = []
        while self.source_sub is not None and (m := self.source_sub.recv(timeout_s=0)) is not None:
            if isinstance(m, Frame):
                frames.append(m)
            elif isinstance(m, End):
                self.source_ended = True
        if self.decoded_sub is None:
            raise RuntimeError("poll() needs watch_decoded=True")
        msg = self.decoded_sub.recv(timeout_s=timeout_s)
        if isinstance(msg, Decoded):
            try:
                return frames, as_decoded_frame(msg)
            except ProtocolError:
                pass
        return frames, None

    def exited(self) -> list[tuple[str, int]]:
        """(name, exit code) of the pipeline's processes that have stopped (the caller decides what that means
        and pops from `procs` what it accepts)."""
        return [(name, p.returncode) for name, p in self.procs.items() if p.poll() is not None]

    def stop_source(self) -> None:
        p = self.procs.get("source")
        if p is not None and p.poll() is None:
            p.terminate()

    def close(self, wait_s: float = 20.0) -> None:
        """SIGTERM every process (each prints its summary), wait, kill what does not stop; close the sockets."""
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self._drainer is not None:
            self._drainer.join(timeout=5)  # the decoder's last lines (its summary) after it exits
        if self._stdout_reader is not None:
            self._stdout_reader.join(timeout=5)
            try:
                self.decoder_result = json.loads("".join(self._stdout)) if "".join(self._stdout).strip() else None
            except ValueError:
                self.decoder_result = None
        for s in self._subs:
            s.close()
        self._subs = []


def truth_of(frames: Sequence[Frame]) -> dict[int, np.ndarray]:
    """seq -> the true stimulus, for the frames that carry one."""
    return {m.seq: np.array(m.stimulus) for m in frames if m.stimulus is not None}
