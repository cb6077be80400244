"""The live topology, written once: a source (replay or rig) -> `neurocine decode` -> this process.

`neurocine demo` and `neurocine bench latency` both run it. Each part is its own process talking ZeroMQ
over loopback, as at a microscope; this process subscribes to the decoded stream and to the source's
frames (for the true stimulus). The source waits for two subscribers (the decoder and this process) so
no frame is published to nobody.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from neurocine.decoder.live.decoded import DecodedFrame, as_decoded_frame
from neurocine.streams.commandline import neurocine_argv
from neurocine.streams.protocol import Decoded, End, Frame, ProtocolError
from neurocine.streams.transport import Subscriber


class LivePipeline:
    """Start the decoder, subscribe, start the source; `poll()` hands over what arrived; `close()` stops all.

    `source` is a verb and its options without `--bind` (e.g. ["replay", path, "--loop"]); `decode` holds the
    decoder's options without `--connect/--bind`. Used as a context manager.
    """

    def __init__(self, source: Sequence[str], decode: Sequence[str], port: int, keep_decoder_log: bool = False) -> None:
        self.source_ep, self.decoded_ep = f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port + 1}"
        self._source_argv = [*source, "--bind", self.source_ep, "--wait-subscribers", "2"]
        self._decode_argv = ["decode", "--connect", self.source_ep, "--bind", self.decoded_ep, *decode]
        self._keep_log = keep_decoder_log
        #: the decoder's last stderr lines when `keep_decoder_log` (read by a thread, so a chatty decoder never
        #: blocks on a full pipe); otherwise its log goes to this process's stderr
        self.decoder_log: collections.deque[str] = collections.deque(maxlen=200)
        self.procs: dict[str, subprocess.Popen] = {}
        self.source_ended = False
        self._subs: list[Subscriber] = []
        self._drainer: threading.Thread | None = None

    def __enter__(self) -> LivePipeline:
        try:
            self.procs["decoder"] = subprocess.Popen(
                neurocine_argv(*self._decode_argv), stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE if self._keep_log else None, text=True)
            if self._keep_log:
                self._drainer = threading.Thread(target=self._drain, args=(self.procs["decoder"].stderr,), daemon=True)
                self._drainer.start()
            self.decoded_sub = Subscriber(self.decoded_ep)
            self.source_sub = Subscriber(self.source_ep, topics=[b"session", b"frame", b"end"])
            self._subs = [self.decoded_sub, self.source_sub]
            self.procs["source"] = subprocess.Popen(neurocine_argv(*self._source_argv), stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.DEVNULL)
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
        """Start one more `neurocine` process that belongs to the pipeline (the viewer); stopped by close()."""
        self.procs[name] = subprocess.Popen(neurocine_argv(*argv), **popen)
        return self.procs[name]

    def poll(self, timeout_s: float = 0.05) -> tuple[list[Frame], DecodedFrame | None]:
        """The source frames that arrived (without waiting), then at most one decoded frame (waiting up to
        `timeout_s`); a decoded message that does not parse is skipped."""
        frames = []
        while (m := self.source_sub.recv(timeout_s=0)) is not None:
            if isinstance(m, Frame):
                frames.append(m)
            elif isinstance(m, End):
                self.source_ended = True
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
        for s in self._subs:
            s.close()
        self._subs = []


def truth_of(frames: Sequence[Frame]) -> dict[int, np.ndarray]:
    """seq -> the true stimulus, for the frames that carry one."""
    return {m.seq: np.array(m.stimulus) for m in frames if m.stimulus is not None}
