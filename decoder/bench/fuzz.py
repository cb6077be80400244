"""`neurocine bench fuzz`: hostile messages interleaved with a valid 30 Hz stream, against real processes.

A publisher here plays the built-in example session at 30 Hz into a real `neurocine decode` and a real
`neurocine record` (their own processes, wired by the pipeline declaration, decoder/live/pipeline.py) and slips N
hostile messages between the frames, evenly spread: random bytes, broken framing, frames of the wrong size or
with Inf, stale and far-past duplicates, forged far-ahead seqs, heartbeats and `end`s claiming impossible counts,
a stranger's session headers and injected `decoded` messages, frames with a part over the session's size limit
(under the socket's ceiling). It reports crashes, how many valid frames each process lost, and their RSS
before the hostile traffic and after it (JSON).

Messages over the socket's ceiling make ZeroMQ cut the peer off (frames sent until it connects again are lost;
only keys prevent that), so they are apart: `--cutoffs K` sends K of them (`--cutoff-mb`, 256 MiB by default)
on topic `frame` halfway through, at once, and reports how soon each process had valid frames again (the first
valid frame sent after them that it decoded or recorded, in frames and ms at 30 Hz), what it lost, and whether it
said so in its log (four 256 MiB messages can leave a subscriber without its reconnect deaf for good).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

KINDS = ("random_bytes", "unknown_topic", "bad_header", "wrong_neuron_count", "infinite_traces", "stale_duplicate",
         "far_past_seq", "forged_far_jump", "huge_heartbeat", "forged_short_end", "foreign_session",
         "injected_decoded", "oversized_part")


def register(bench_sub: Any) -> None:
    from neurocine.streams.commandline import add_verb

    p = add_verb(bench_sub, "fuzz", "hostile messages interleaved with a valid 30 Hz stream into real decode and "
                 "record processes: crashes, valid frames lost, RSS", "neurocine bench fuzz --hostile 20000 "
                 "--seconds 20 --json out/fuzz.json")
    p.add_argument("--hostile", type=int, default=10_000, help="hostile messages to send (spread over the run)")
    p.add_argument("--seconds", type=float, default=20.0, help="length of the valid stream (30 Hz)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cutoffs", type=int, default=0, metavar="K",
                   help="also send K messages over the subscribers' ceiling at once, halfway through (default 0)")
    p.add_argument("--cutoff-mb", type=float, default=256.0, help="their size in MiB (default 256)")
    p.add_argument("--json", help="also write the result here")
    p.set_defaults(func=run)


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


class Hostile:
    """Makes one hostile message of a given kind, knowing the stream's session and last real seq."""

    def __init__(self, header: Any, n: int, seed: int) -> None:
        from neurocine.streams.protocol import encode_frame

        self.rng = np.random.default_rng(seed)
        self.h, self.n = header, n
        self.template = encode_frame(header.session_id, 0, 0, 0, np.zeros(n, np.float32), np.zeros(4, np.float32))
        from neurocine.streams.transport import session_part_limit

        self.oversized = np.zeros(session_part_limit(header) // 4 + 1, np.float32)  # one float over the limit

    def make(self, kind: str, last: int) -> list[bytes]:
        from neurocine.streams import protocol as p

        r, sid, n = self.rng, self.h.session_id, self.n
        zeros = np.zeros(4, np.float32)
        if kind == "random_bytes":
            return [r.bytes(int(r.integers(0, 64))) for _ in range(int(r.integers(1, 5)))]
        if kind == "unknown_topic":
            return [b"framez", *[bytes(x) for x in self.template[1:]]]
        if kind == "bad_header":
            return [b"frame", msgpack.packb({"v": 1, "arrays": "x", "seq": "no"}), r.bytes(16)]
        if kind == "wrong_neuron_count":
            return p.encode_frame(sid, last + 1, 0, 0, np.zeros(n + 3, np.float32), zeros)
        if kind == "infinite_traces":
            return p.encode_frame(sid, last + 1, 0, 0, np.full(n, np.inf, np.float32), zeros)
        if kind == "stale_duplicate":
            return p.encode_frame(sid, max(0, last - int(r.integers(0, 5))), 0, 0, np.zeros(n, np.float32), zeros)
        if kind == "far_past_seq":
            return p.encode_frame(sid, 0, 0, 0, np.zeros(n, np.float32), zeros)
        if kind == "forged_far_jump":
            return p.encode_frame(sid, last + int(r.integers(1000, 1 << 62)), 0, 0, np.zeros(n, np.float32), zeros)
        if kind == "huge_heartbeat":
            return p.encode_heartbeat(p.Heartbeat(sid, 0, last + int(r.integers(10_000, 1 << 62))))
        if kind == "forged_short_end":
            return p.encode_end(p.End(sid, max(0, last - 1), "forged", 0))
        if kind == "foreign_session":
            return p.encode_session(p.SessionHeader(f"stranger-{int(r.integers(1 << 30))}", "rig", "intruder",
                                                    30.0, np.arange(n, dtype=np.int64)))
        if kind == "injected_decoded":
            return p.encode_decoded(sid, {"seq": last}, [("frame", np.zeros((36, 64), np.uint8))])
        if kind == "oversized_part":
            return p.encode_frame(sid, last + 1, 0, 0, self.oversized, zeros)
        raise ValueError(kind)


def run(args: argparse.Namespace) -> int:
    from neurocine.streams.commandline import emit_json

    emit_json(fuzz(args.hostile, args.seconds, args.seed, cutoffs=args.cutoffs,
                   cutoff_bytes=int(args.cutoff_mb * (1 << 20))), args.json)
    return 0


def _recovery(got: set[int], after: int, n_frames: int) -> dict[str, Any]:
    """How soon valid frames flowed again after the cut-off messages sent right after frame `after`."""
    back = min((q for q in got if after < q < n_frames), default=None)
    return {"first_valid_seq_after": back,
            "frames_until_back": None if back is None else back - after,
            "ms_until_back": None if back is None else round((back - after) * 1000 / 30, 1),
            "frames_lost_after": (n_frames - after - 1) - len({q for q in got if after < q < n_frames})}


def fuzz(n_hostile: int, seconds: float, seed: int = 0, cutoffs: int = 0,
         cutoff_bytes: int = 256 << 20) -> dict[str, Any]:
    """One run (see the module docstring); returns the JSON-able result."""
    import zmq

    from neurocine.decoder.live.pipeline import LivePipeline, free_port_pair
    from neurocine.streams.example import example_session_path
    from neurocine.streams.formats import load_session
    from neurocine.streams.formats.native import read_recording
    from neurocine.streams.protocol import Decoded, Heartbeat
    from neurocine.streams.session import header_of
    from neurocine.streams.transport import Publisher

    session = load_session(example_session_path())
    h = header_of(session)
    n_frames, warm = max(1, int(seconds * 30)), 60  # the first 2 s are clean: RSS "before" is taken after them
    cut_at = n_frames // 2 if cutoffs else -1
    hostile = Hostile(h, session.n_neurons, seed)
    kinds = np.random.default_rng(seed + 1).integers(0, len(KINDS), n_hostile)
    per_frame = np.bincount(np.linspace(warm, n_frames - 1, n_hostile).astype(int), minlength=n_frames)
    sent_by_kind = {k: 0 for k in KINDS}
    decoded: set[int] = set()
    with tempfile.TemporaryDirectory() as tmp, Publisher("tcp://127.0.0.1:0", nodrop=True) as pub, \
            open(Path(tmp) / "record.err", "w") as rec_err:
        ncr = Path(tmp) / "fuzz.ncr"
        pipe = LivePipeline(pub.endpoint, ["--lag", "4", "--steps", "0", "--threads", "1"], free_port_pair(),
                            keep_decoder_log=True, watch_source=False, log_lines=1 << 20)
        with pipe:
            dec, sub = pipe.procs["decoder"], pipe.decoded_sub
            # the recorder's log to a file: a pipe nobody reads until the end fills (64 KiB) under a long run's
            # rate-limited logs and blocks it in a print, which stalled a 10^6-message run
            rec = pipe.add("record", ["record", "--connect", pub.endpoint, "--out", str(ncr), "--until-end"],
                           stdout=subprocess.PIPE, stderr=rec_err, text=True)

            def drain(wait_s: float = 0.0) -> None:
                m = sub.recv(timeout_s=wait_s)
                while m is not None:
                    if isinstance(m, Decoded) and m.session_id == h.session_id:
                        decoded.add(int(m.fields["seq"]))
                    m = sub.recv(timeout_s=0)

            deadline = time.monotonic() + 120
            listening = False  # the decoder's idle heartbeat tells that our output subscriber is connected
            while not (listening and pub.n_subscribers >= 2) and time.monotonic() < deadline:
                listening |= isinstance(sub.recv(timeout_s=0.05), Heartbeat)
            pub.begin(h)
            rss_before: dict[str, float | None] = {}
            t0, k = time.monotonic(), 0
            for i in range(n_frames):
                while time.monotonic() < t0 + i / 30:
                    time.sleep(0.001)
                j = i % session.n_frames
                pub.send_frame(i, time.time_ns(), session.traces[j], session.behaviour[j])
                if i == warm:
                    rss_before = {"decode": _rss_mb(dec.pid), "record": _rss_mb(rec.pid)}
                if i == cut_at:
                    huge = zmq.Frame(np.zeros(cutoff_bytes, np.uint8))  # one buffer, sent K times, not copied
                    for _ in range(cutoffs):
                        pub.send_raw([b"frame", huge])
                    del huge
                for _ in range(int(per_frame[i])):
                    kind = KINDS[int(kinds[k])]
                    pub.send_raw(hostile.make(kind, i))
                    sent_by_kind[kind] += 1
                    k += 1
                drain()
            elapsed = time.monotonic() - t0  # longer than `seconds` when sending could not keep the pace
            rss_after = {"decode": _rss_mb(dec.pid), "record": _rss_mb(rec.pid)}  # the recorder stops at `end`
            pub.end()
            end = time.monotonic() + 30
            while max(decoded, default=-1) < n_frames - 1 and time.monotonic() < end:  # the last one (a cut-off
                drain(0.1)  # loses some on the way: they never come)
            rss_after["decode"] = _rss_mb(dec.pid)
            crashed = {"decode": dec.poll() is not None, "record": rec.poll() is not None and rec.returncode != 0}
            try:
                rec_out, _ = rec.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                rec.terminate()
                rec_out, _ = rec.communicate(timeout=30)
            pipe.close(wait_s=60)
        dec_err = "\n".join(pipe.decoder_log)
        rec_log = (Path(tmp) / "record.err").read_text(errors="replace")
        recording = read_recording(ncr)
        good = {f.seq for f in recording.frames.get(h.session_id, []) if f.seq < n_frames
                and np.array_equal(f.traces, session.traces[f.seq % session.n_frames], equal_nan=True)}
    dec_stats = (pipe.decoder_result or {}).get("decode", {})
    cut = {}
    if cutoffs:
        cut = {"sent": cutoffs, "bytes_each": cutoff_bytes, "after_seq": cut_at,
               "decode": {**_recovery(decoded, cut_at, n_frames), "cutoffs": dec_stats.get("wire", {}).get("cutoffs"),
                          "warned": "cut this subscriber off" in dec_err},
               "record": {**_recovery(good, cut_at, n_frames),
                          "cutoffs": _json_tail(rec_out).get("record", {}).get("cutoffs"),
                          "warned": "cut this subscriber off" in rec_log}}
    return {
        "benchmark": "fuzz",
        "hostile_sent": n_hostile, "hostile_by_kind": sent_by_kind, "valid_frames_sent": n_frames,
        "seconds": seconds, "hostile_per_s": round(n_hostile / max(seconds - warm / 30, 1e-9), 1),
        "elapsed_s": round(elapsed, 1), "hostile_per_s_achieved": round(n_hostile / max(elapsed - warm / 30, 1e-9), 1),
        "decode": {"crashed": crashed["decode"], "valid_frames_decoded": len(decoded & set(range(n_frames))),
                   "valid_frames_lost": n_frames - len(decoded & set(range(n_frames))),
                   "lost_seqs": sorted(set(range(n_frames)) - decoded)[:20],
                   "rss_mb_before": rss_before.get("decode"), "rss_mb_after": rss_after["decode"],
                   "service": {k: dec_stats.get(k) for k in ("frames_in", "decoded_out", "dropped_stale",
                                                              "not_published", "sessions")},
                   "wire": {k: dec_stats.get("wire", {}).get(k) for k in ("malformed", "rejected", "duplicates",
                                                                           "held_sessions", "errors_by_kind")},
                   "stderr_tail": dec_err[-500:] if crashed["decode"] else "",
                   "stalls": dec_stats.get("wire", {}).get("stalls")},
        "record": {"crashed": crashed["record"], "valid_frames_recorded": len(good),
                   "valid_frames_lost": n_frames - len(good),
                   "lost_seqs": sorted(set(range(n_frames)) - good)[:20],
                   "rss_mb_before": rss_before.get("record"), "rss_mb_after": rss_after["record"],
                   "summary": {k: _json_tail(rec_out).get("record", {}).get(k) for k in ("frames", "malformed",
                                                                                         "decoded", "stalls")}},
        **({"cutoff": cut} if cut else {}),
    }


def _json_tail(text: str) -> dict[str, Any]:
    try:
        return json.loads(text)
    except ValueError:
        return {}
