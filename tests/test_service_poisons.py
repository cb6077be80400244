"""One well-aimed message cannot crash, stall or blind a real `neurocine decode` process."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest

from neurocine.streams.protocol import End, Heartbeat, encode_end, encode_frame, encode_heartbeat
from neurocine.streams.session import header_of
from neurocine.streams.transport import Publisher, Subscriber
from tests.conftest import first_frames, free_port, probe_until_heard
from tests.test_service import collect, example_slice, start_decoder, stop


def test_poisons_are_survived_and_nothing_is_published_for_frames_never_received(small_mouse: Path) -> None:
    s = example_slice(40)
    rig, out = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    dec = start_decoder(small_mouse, rig, out, "--lag", "4", "--steps", "0")
    try:
        with Subscriber(out) as sub, Publisher(rig, nodrop=True) as pub:
            assert pub.wait_subscribers(1, timeout_s=60)
            probes = probe_until_heard(pub, sub.recv, first_frames(s, 2))
            h = header_of(s)
            pub.begin(h)

            def send(seq: int, k: int | None = None) -> None:
                k = seq % 40 if k is None else k
                pub.send_frame(seq, seq, s.traces[k], s.behaviour[k])

            for seq in [*range(10), 11, 10]:  # 10 arrives after 11: dropped, counted, no crash
                send(seq)
            # one forged far-ahead seq (sent raw: our publisher's own count stays honest): held, never believed
            pub.send_raw(encode_frame(h.session_id, 1 << 62, 0, 0, s.traces[0], s.behaviour[0]))
            pub.send_raw(encode_heartbeat(Heartbeat(h.session_id, 0, 1 << 62)))  # cannot blind the tracker
            pub.send_raw(encode_end(End(h.session_id, 3, "forged", 0)))  # fewer frames than received: refused
            for seq in range(12, 30):
                send(seq)
            for seq in range(100_000, 100_010):  # a real jump: one frame lost to confirm it, O(lag) work
                send(seq)
            pub.end()
            # a decoder joining a long session late: starts at its first real frame
            late = dataclasses.replace(header_of(s), session_id="joined-late")
            pub.begin(late)
            for seq in range(1_000_000, 1_000_010):
                send(seq, seq % 40)
            pub.end()
            # a last session: the decoder publishes in order, so once its frames come, nothing else of the first
            # two is still on its way
            last = dataclasses.replace(header_of(s), session_id="last")
            pub.begin(last)
            for seq in range(10):
                send(seq)
            pub.end()
            frames: list = []
            deadline = time.monotonic() + 60
            while not any(f.session_id == last.session_id for f in frames) and time.monotonic() < deadline:
                frames += collect(sub, time.monotonic() + 0.5)
    finally:
        out_text, err = stop(dec)
    assert dec.returncode == 0, err
    first = [f.seq for f in frames if f.session_id == h.session_id]
    assert first == [*range(10), *range(11, 30), *range(100_001, 100_010)], err
    second = [f.seq for f in frames if f.session_id == late.session_id]
    assert second == list(range(1_000_000, 1_000_010))
    stats = json.loads(out_text)["decode"]
    assert stats["wire"]["dropped_late"] == 1 and stats["wire"]["rejected"] >= 3
    assert stats["not_published"] >= 1 and stats["sessions"] == 3 + len(probes)
    assert np.isfinite([f.t_done_ns for f in frames]).all()


@pytest.mark.parametrize("damaged", ["gradient.onnx", "graph.json", "alpha_mask.npy"])
def test_a_damaged_model_file_is_named_at_start_up(tmp_path: Path, damaged: str) -> None:
    import shutil
    import subprocess
    import sys

    from neurocine.decoder.reconstruct.models import DEFAULT_MODEL_DIR
    from tests.conftest import REPO

    model = tmp_path / "model"
    model.mkdir()
    for name in ("gradient.onnx", "graph.json", "alpha_mask.npy"):
        shutil.copy(DEFAULT_MODEL_DIR / name, model / name)
    raw = bytearray((model / damaged).read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = b"\xff" * 64  # a damaged block in the middle
    (model / damaged).write_bytes(bytes(raw[: max(16, len(raw) - 100)]))
    # no rig at all: the error must come before any session arrives
    r = subprocess.run([sys.executable, "-m", "neurocine", "decode", "--model", str(model), "--provider", "cpu",
                        "--connect", f"tcp://127.0.0.1:{free_port()}", "--bind", f"tcp://127.0.0.1:{free_port()}"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr[-2000:]
    assert damaged in r.stderr and "Traceback" not in r.stderr


class _Capture:
    """A publisher stand-in that keeps what the service publishes."""

    def __init__(self) -> None:
        self.sent: list = []

    def send_raw(self, parts) -> bool:
        from neurocine.streams.protocol import parse_message

        self.sent.append(parse_message([bytes(p) for p in parts]))
        return True

    def tick(self) -> None:
        pass


def test_session_switch_flushes_and_a_flapping_session_never_reloads_models(small_mouse: Path, monkeypatch) -> None:
    from neurocine.decoder.live.service import DecodeService
    from neurocine.decoder.reconstruct import models as model_module
    from neurocine.decoder.reconstruct.streaming import StreamingConfig

    loads = []
    real = model_module.load_models
    monkeypatch.setattr(model_module, "load_models", lambda *a, **k: loads.append(1) or real(*a, **k))
    s = example_slice(20)
    a = header_of(s)
    b = dataclasses.replace(a, session_id="b")
    pub = _Capture()
    with Subscriber(f"tcp://127.0.0.1:{free_port()}") as sub:
        svc = DecodeService([str(small_mouse)], sub, pub, config=StreamingConfig(lag=4, steps=0), backend="torch")
        svc.start_session(a)
        for seq in range(10):
            svc.on_frame(_frame(s, a.session_id, seq), 0, 1)
        svc.start_session(b)  # no `end` for a: its last `lag` frames must still come out
        seqs_a = [m.fields["seq"] for m in pub.sent if m.session_id == a.session_id]
        assert seqs_a == list(range(10))
        # the last `lag` came out early, and say so: why (another session began) and how many frames refined them
        early = [(m.fields["seq"], m.fields["flushed"], m.fields["lag"]) for m in pub.sent if m.fields["flushed"]]
        assert early == [(6, "switch", 3), (7, "switch", 2), (8, "switch", 1), (9, "switch", 0)]
        assert {m.fields["lag"] for m in pub.sent if not m.fields["flushed"]} == {4}
        for h in (a, b, a, b):  # a stranger's header flapping with the rig's: models come from the cache
            svc.start_session(h)
        assert len(loads) == 1 and svc.stats.deferred_loads == 0


def _frame(s, sid: str, seq: int):
    from neurocine.streams.protocol import Frame

    return Frame(sid, seq, seq, seq, s.traces[seq], s.behaviour[seq])


def test_a_segment_change_restarts_the_optimiser_so_no_window_spans_the_cut(small_mouse: Path) -> None:
    """Frames 0-9 are one trial, 10-19 another (segment 0, then 1): the first trial drains at its usual lag beside
    the second, which decodes exactly as a fresh stream starting at frame 10 would; every frame once, in order."""
    from neurocine.decoder.live.service import DecodeService
    from neurocine.decoder.reconstruct.streaming import StreamingConfig
    from neurocine.streams.protocol import Frame

    s = example_slice(20)
    h = header_of(s)

    def frame(seq: int, segment: int | None) -> Frame:
        return Frame(h.session_id, seq, seq, seq, s.traces[seq], s.behaviour[seq], segment=segment)

    def decoded(pub: _Capture) -> dict[int, bytes]:
        return {m.fields["seq"]: m.arrays["frame"].tobytes() for m in pub.sent}

    cfg = StreamingConfig(lag=4, steps=1, warm_start="previous")
    with Subscriber(f"tcp://127.0.0.1:{free_port()}") as sub:
        cut, fresh = _Capture(), _Capture()
        svc = DecodeService([str(small_mouse)], sub, cut, config=cfg, backend="torch", every_step=True)
        svc.start_session(h)
        for seq in range(10):
            svc.on_frame(frame(seq, 0), 0, 1)
        svc.on_frame(frame(10, 1), 0, 1)
        assert [m.fields["seq"] for m in cut.sent] == list(range(7)) and svc.stats.cuts == 1
        for seq in range(11, 20):
            svc.on_frame(frame(seq, 1), 0, 1)
        svc.end_session(End(h.session_id, 20))
        other = DecodeService([str(small_mouse)], sub, fresh, config=cfg, backend="torch", every_step=True)
        other.start_session(h)
        for seq in range(10, 20):
            other.on_frame(frame(seq, None), 0, 1)  # a publisher that never says `segment`: no cuts
        other.end_session(End(h.session_id, 20))
    assert other.stats.cuts == 0
    got, want = decoded(cut), decoded(fresh)
    assert [m.fields["seq"] for m in cut.sent] == list(range(20))
    assert all(got[seq] == want[seq] for seq in range(10, 20))
