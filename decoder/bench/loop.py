"""`neurocine bench loop`: the whole closed loop, stimulus change -> decoded movie -> decision -> next change.

Three processes, as at the microscope: the steerable synthetic rig (`neurocine rig --synthetic --control`),
the decode service (`neurocine decode`, built-in model) and this process, which is both the experimenter's
schedule and the closed-loop client (neurocine.decoder.client + neurocine.decoder.detect +
neurocine.streams.control). Events alternate
at random between *target* trials (the rig shows the target image; the client must detect it in the decoded
movie and answer by switching the rig back to a movie) and *catch* trials (the rig switches to another
movie; the detector must stay quiet). A target the client has not found after --window seconds is taken
off by the schedule (a miss).

Per event and per frame it measures: shown -> published (rig), published -> decoded (decoder: final frames
after their lag, provisional ones at once when the decoder publishes them), decoded -> client, client
decision, decision -> the rig showing the next change (command transport + the rig's frame clock) and the
acknowledgement back. "Overhead" is what is ours: everything except the optimiser's designed lag, the
biology (indicator rise, the encoder's temporal context: how many frames the decoded movie needs before
it shows the target) and the rig's frame clock (a change waits for the next frame boundary), which are
reported apart. Hit rate and false alarms of the detector come from the known stimulus.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from neurocine.streams.commandline import get_logger, neurocine_argv

log = get_logger("bench.loop")

PERIOD_NS = round(1e9 / 30)


def register(bench_sub: Any) -> None:
    from neurocine.streams.commandline import add_verb

    p = add_verb(bench_sub, "loop", "closed-loop latency and detection: rig -> decode -> client -> rig (JSON)",
                 "neurocine bench loop --events 20 --json out/loop.json --figure out/loop.png\n"
                 "neurocine bench loop --provisional   # act on provisional frames (needs decode --provisional)")
    p.add_argument("--events", type=int, default=20, help="events, half target and half catch (default 20)")
    p.add_argument("--window", type=float, default=3.0,
                   help="seconds a target stays up if not found (default 3: the biology's ~1 s, the lag, margin)")
    p.add_argument("--iti", type=float, nargs=2, default=(2.5, 3.5), metavar=("MIN", "MAX"),
                   help="seconds of movie between events, uniform (default 2.5 3.5)")
    p.add_argument("--target", default="bar", help="built-in target image (neurocine.streams.control.TARGETS)")
    p.add_argument("--threshold", type=float, default=None, help="detector threshold (default: DetectorConfig)")
    p.add_argument("--detector-frames", type=int, default=None, help="frames the detector averages")
    p.add_argument("--provisional", action="store_true",
                   help="ask the decoder for provisional frames (decode --provisional) and act on them")
    p.add_argument("--lag", type=int, default=16, help="decoder lag in frames (default 16)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="decoder compute threads (default 1)")
    p.add_argument("--provider", choices=["cuda", "cpu"], default=None)
    p.add_argument("--neurons", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="schedule seed (event order, intervals, movies)")
    p.add_argument("--port", type=int, default=27650, help="first of three loopback ports to use")
    p.add_argument("--warmup", type=float, default=4.0, help="seconds of decoding before the first event")
    p.add_argument("--json", help="also write the result here")
    p.add_argument("--figure", help="write the stage latencies and the detector trace (PNG, matplotlib)")
    p.set_defaults(func=run)


def _pct(x: Any) -> dict[str, Any]:
    a = np.asarray(list(x), np.float64)
    if a.size == 0:
        return {"n": 0}
    p = np.percentile(a, [50, 95, 99])
    return {"n": int(a.size), "p50": round(float(p[0]), 2), "p95": round(float(p[1]), 2),
            "p99": round(float(p[2]), 2), "max": round(float(a.max()), 2)}


def decoder_has_provisional() -> bool:
    r = subprocess.run(neurocine_argv("decode", "--help"), capture_output=True, text=True, timeout=60)
    return "--provisional" in r.stdout


class Loop:
    """The schedule and the client, one thread: reads decoded frames and rig acknowledgements as they come."""

    def __init__(self, args: argparse.Namespace, stream: Any, ctl: Any, target: np.ndarray) -> None:
        from neurocine.decoder.detect import DetectorConfig, TargetDetector

        base = DetectorConfig()
        cfg = DetectorConfig(threshold=base.threshold if args.threshold is None else args.threshold,
                             frames=base.frames if args.detector_frames is None else args.detector_frames,
                             refractory=base.refractory)
        self.config = cfg
        self.args, self.stream, self.ctl = args, stream, ctl
        self.detectors = {"final": TargetDetector(target, cfg), "provisional": TargetDetector(target, cfg)}
        self.action_kind = "provisional" if args.provisional else "final"
        self.rng = np.random.default_rng(args.seed)
        kinds = ["target"] * (args.events - args.events // 2) + ["catch"] * (args.events // 2)
        self.plan = list(self.rng.permutation(kinds))
        self.events: list[dict[str, Any]] = []
        self.fires: dict[str, list[dict[str, Any]]] = {"final": [], "provisional": []}
        # (kind, seq, t_acq, t_pub, trigger_seq, trigger_t_pub, t_done, t_recv, mean score, decoder's t_recv,
        #  queue_ns, compute_ns, this frame's score) per decoded frame
        self.frames: list[tuple] = []
        self.pending: dict[int, tuple[dict[str, Any], str]] = {}  # command id -> (event, role)
        self.movie = 0

    def _new_movie(self) -> int:
        self.movie = int(self.movie + 1 + self.rng.integers(0, 5))
        return self.movie

    def _command(self, event: dict[str, Any], role: str, cmd: str, **fields: Any) -> None:
        cid = self.ctl.send(cmd, **fields)
        self.pending[cid] = (event, role)

    def _on_reply(self, r: dict[str, Any]) -> None:
        event, role = self.pending.pop(r.get("id"), (None, None))
        if event is None or not r.get("ok"):
            log.info(f"unexpected rig reply {r}")
            return
        event[role] = {k: r[k] for k in ("seq", "t_recv_ns", "t_shown_ns", "t_pub_ns", "t_sent_ns", "t_reply_ns")}

    def _on_frame(self, f: Any) -> None:
        kind = "final" if f.final else "provisional"
        det = self.detectors[kind]
        if f.new_session:
            det.reset()
        fired = det.update(f.seq, f.frame)
        t_decision = time.time_ns()
        self.frames.append((kind, f.seq, f.t_acq_ns, f.t_pub_ns, f.trigger_seq, f.trigger_t_pub_ns,
                            f.t_done_ns, f.t_recv_ns, det.last_mean, f.decoded.t_recv_ns, f.decoded.queue_ns,
                            f.decoded.compute_ns, det.last_score))
        if not fired:
            return
        fire = {"seq": f.seq, "t_decision_ns": t_decision, "t_recv_ns": f.t_recv_ns, "t_done_ns": f.t_done_ns,
                "t_acq_ns": f.t_acq_ns, "t_pub_ns": f.t_pub_ns, "trigger_seq": f.trigger_seq,
                "trigger_t_pub_ns": f.trigger_t_pub_ns}
        self.fires[kind].append(fire)
        ev = self.events[-1] if self.events else None
        if (kind == self.action_kind and ev is not None and ev["kind"] == "target" and "on" in ev
                and "off_cmd" not in ev and f.seq >= ev["on"]["seq"]):
            ev["off_cmd"] = "client"
            ev["decision"] = fire
            self._command(ev, "off", "movie", k=self._new_movie())

    def pump(self, until_ns: int) -> None:
        """Handle frames and replies until the wall clock reaches until_ns."""
        while time.time_ns() < until_ns:
            for r in self.ctl.replies(0):
                self._on_reply(r)
            f = self.stream.recv(timeout_s=0.003)
            if f is not None:
                self._on_frame(f)

    def run(self) -> None:
        a = self.args
        for kind in self.plan:
            self.pump(time.time_ns() + int(self.rng.uniform(*a.iti) * 1e9))
            ev: dict[str, Any] = {"kind": kind}
            self.events.append(ev)
            if kind == "target":
                self._command(ev, "on", "target", name=a.target)
            else:
                self._command(ev, "on", "movie", k=self._new_movie())
            deadline = time.time_ns() + int(a.window * 1e9)
            while time.time_ns() < deadline and "off_cmd" not in ev:
                self.pump(min(deadline, time.time_ns() + 20_000_000))
            if kind == "target" and "off_cmd" not in ev:
                ev["off_cmd"] = "schedule"
                self._command(ev, "off", "movie", k=self._new_movie())
            self.pump(time.time_ns() + 200_000_000)  # the off acknowledgement
        # the last final frames arrive a lag later
        self.pump(time.time_ns() + int((a.lag / 30 + 1.5) * 1e9))


def summarise(loop: Loop, args: argparse.Namespace, provisional_seen: bool) -> dict[str, Any]:
    window_frames = round(args.window * 30)
    rows = loop.frames
    out: dict[str, Any] = {"config": {k: v for k, v in vars(args).items() if k != "func"},
                           "detector": {"threshold": loop.config.threshold, "frames": loop.config.frames,
                                        "refractory": loop.config.refractory, "target": args.target},
                           "acted_on": loop.action_kind, "provisional_frames_received": provisional_seen}
    # ---- per-frame stages (every decoded frame: thousands of samples, so p99 means something)
    per_frame: dict[str, Any] = {}
    for kind in ("provisional", "final"):
        r = [x for x in rows if x[0] == kind]
        if not r:
            continue
        arr = np.array([x[1:8] + x[9:12] for x in r], np.float64)
        seq, t_acq, _, trig_seq, trig_pub, t_done, t_recv, dec_recv, queue, compute = arr.T
        trig_acq = t_acq + (trig_seq - seq) * PERIOD_NS
        per_frame[kind] = {
            "frames": len(r),
            "rig_publish_ms": _pct((trig_pub - trig_acq) / 1e6),  # trigger frame shown (acquired) -> published
            "decoder_ms": _pct((t_done - trig_pub) / 1e6),  # trigger published -> decoded frame published, of which
            "to_decoder_ms": _pct((dec_recv - trig_pub) / 1e6),  # wire + waiting in the decoder's socket
            "decoder_queue_ms": _pct(queue / 1e6),  # behind other frames read in the same batch
            "decoder_compute_ms": _pct(compute / 1e6),  # the optimiser steps run on the trigger frame
            "delivery_ms": _pct((t_recv - t_done) / 1e6),  # decoder -> client
            "shown_to_client_ms": _pct((t_recv - t_acq) / 1e6),  # includes the lag for final frames
        }
    out["per_frame"] = per_frame
    # ---- events: hits, false alarms, decision latency
    events = [e for e in loop.events if "on" in e]
    res: dict[str, Any] = {}
    for kind in ("final", "provisional"):
        if not any(x[0] == kind for x in rows):
            continue
        fires = loop.fires[kind]
        hits, fas, delays, decision_ms, scores = [], [], [], [], {"target": [], "catch": []}
        for e in events:
            lo = e["on"]["seq"]
            hi = e["off"]["seq"] if e["kind"] == "target" and "off" in e else lo + window_frames
            first = next((f for f in fires if lo <= f["seq"] < hi), None)
            s = [x[8] for x in rows if x[0] == kind and lo <= x[1] < hi]
            scores[e["kind"]].append(max(s) if s else float("nan"))
            if e["kind"] == "target":
                hits.append(first is not None)
                if first is not None:
                    delays.append(first["seq"] - lo)
                    decision_ms.append((first["t_decision_ns"] - e["on"]["t_shown_ns"]) / 1e6)
            else:
                fas.append(first is not None)
        res[kind] = {
            "targets": len(hits), "hits": int(sum(hits)), "hit_rate": round(float(np.mean(hits)), 3) if hits else None,
            "catch": len(fas), "false_alarms": int(sum(fas)),
            "false_alarm_rate": round(float(np.mean(fas)), 3) if fas else None,
            "detection_delay_frames": _pct(delays),  # biology + encoder context + detector averaging (+ nothing ours)
            "decision_after_shown_ms": _pct(decision_ms),  # the whole loop, lag and biology included
            "max_score_target": [round(v, 3) for v in scores["target"]],
            "max_score_catch": [round(v, 3) for v in scores["catch"]],
            **_background_fires(loop, kind, window_frames),
            "fired_at_seq": [f["seq"] for f in fires],
        }
    out["detection"] = res
    out["detector_sweep"] = sweep(loop, window_frames)
    # ---- closed events: our overhead on the deciding frame and the next change
    stages: dict[str, list[float]] = {k: [] for k in ("rig_publish_ms", "decoder_ms", "delivery_ms", "client_ms",
                                                      "command_ms", "frame_clock_ms", "ack_ms", "overhead_ms",
                                                      "overhead_with_frame_clock_ms", "onset_publish_ms")}
    for e in events:
        stages["onset_publish_ms"].append((e["on"]["t_pub_ns"] - e["on"]["t_shown_ns"]) / 1e6)
        d, off = e.get("decision"), e.get("off")
        if d is None or off is None or e.get("off_cmd") != "client":
            continue
        trig_acq = d["t_acq_ns"] + (d["trigger_seq"] - d["seq"]) * PERIOD_NS
        parts = {"rig_publish_ms": d["trigger_t_pub_ns"] - trig_acq,
                 "decoder_ms": d["t_done_ns"] - d["trigger_t_pub_ns"],
                 "delivery_ms": d["t_recv_ns"] - d["t_done_ns"], "client_ms": d["t_decision_ns"] - d["t_recv_ns"],
                 "command_ms": off["t_recv_ns"] - d["t_decision_ns"]}
        for k, v in parts.items():
            stages[k].append(v / 1e6)
        stages["frame_clock_ms"].append((off["t_shown_ns"] - off["t_recv_ns"]) / 1e6)
        stages["ack_ms"].append((off["t_reply_ns"] - off["t_pub_ns"]) / 1e6)
        overhead = sum(parts.values()) / 1e6
        stages["overhead_ms"].append(overhead)
        stages["overhead_with_frame_clock_ms"].append(overhead + (off["t_shown_ns"] - off["t_recv_ns"]) / 1e6)
    out["closed_events"] = {k: _pct(v) for k, v in stages.items()}
    out["closed_events"]["n"] = len(stages["overhead_ms"])
    # overhead on every frame (what a decision on any frame would cost): rig publish + decoder + delivery
    kind = loop.action_kind
    if kind in per_frame:
        arr = np.array([x[1:8] for x in rows if x[0] == kind], np.float64)
        seq, t_acq, _, trig_seq, trig_pub, _, t_recv = arr.T
        out["overhead_per_frame_ms"] = _pct((t_recv - (t_acq + (trig_seq - seq) * PERIOD_NS)) / 1e6)
    out["events"] = [{k: v for k, v in e.items()} for e in loop.events]
    return out


#: Frames after a target goes off during which the decoded movie may still show it (lag 16 + ~1 s of
#: responses); firings there are not counted as background false alarms.
TRAILING_FRAMES = 45


def _background_fires(loop: Loop, kind: str, window_frames: int) -> dict[str, Any]:
    """Firings during the movie between events (outside every target/catch window and the trailing frames
    after a target), per minute of such movie: false alarms the catch windows do not sample."""
    seqs = np.array(sorted({x[1] for x in loop.frames if x[0] == kind}))
    if seqs.size == 0:
        return {}
    busy = np.zeros(seqs.size, bool)
    for k, lo, hi in _windows(loop, window_frames):
        busy |= (seqs >= lo) & (seqs < hi + (TRAILING_FRAMES if k == "target" else 0))
    background = set(seqs[~busy].tolist())
    n = sum(1 for f in loop.fires[kind] if f["seq"] in background)
    minutes = len(background) / 30 / 60
    return {"background_fires": n, "background_minutes": round(minutes, 2),
            "background_fires_per_minute": round(n / minutes, 2) if minutes else None}


def _windows(loop: Loop, window_frames: int) -> list[tuple[str, int, int]]:
    return [(e["kind"], e["on"]["seq"], e["off"]["seq"] if e["kind"] == "target" and "off" in e
             else e["on"]["seq"] + window_frames) for e in loop.events if "on" in e]


def sweep(loop: Loop, window_frames: int) -> dict[str, Any]:
    """Hit and false-alarm rates the detector would have had at other settings, replayed from the per-frame
    correlations recorded in this run (action frames). Approximate: in closed loop a detection takes the
    target off early, so target windows are shorter than a stricter setting would have left them."""
    r = [x for x in loop.frames if x[0] == loop.action_kind]
    if not r:
        return {}
    seqs = np.array([x[1] for x in r])
    raw = np.array([x[12] for x in r])
    order = np.argsort(seqs, kind="stable")
    seqs, raw = seqs[order], raw[order]
    windows = _windows(loop, window_frames)
    out: dict[str, Any] = {}
    for n in (1, 2, 4, 8):
        mean = np.convolve(raw, np.ones(n) / n, mode="full")[: raw.size]  # causal mean of the last n frames
        mean[: n - 1] = -np.inf
        best = {}
        for kind in ("target", "catch"):
            best[kind] = np.array([mean[(seqs >= lo) & (seqs < hi)].max(initial=-np.inf)
                                   for k, lo, hi in windows if k == kind])
        rows = []
        for th in np.round(np.arange(0.15, 0.501, 0.025), 3):
            hit = float(np.mean(best["target"] >= th)) if best["target"].size else None
            fa = float(np.mean(best["catch"] >= th)) if best["catch"].size else None
            rows.append({"threshold": float(th), "hit_rate": hit, "false_alarm_rate": fa})
        out[f"frames_{n}"] = rows
    return out


def figure(loop: Loop, result: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7))
    kind = loop.action_kind
    r = [x for x in loop.frames if x[0] == kind]
    ax1.plot([x[1] for x in r], [x[8] for x in r], lw=0.7, label=f"detector mean score ({kind} frames)")
    ax1.axhline(loop.config.threshold, color="k", ls="--", lw=0.8, label="threshold")
    for e in loop.events:
        if "on" not in e:
            continue
        lo = e["on"]["seq"]
        hi = e["off"]["seq"] if "off" in e else lo + round(loop.args.window * 30)
        ax1.axvspan(lo, hi, color="tab:green" if e["kind"] == "target" else "tab:grey", alpha=0.25, lw=0)
    for f in loop.fires[kind]:
        ax1.axvline(f["seq"], color="tab:red", lw=0.8)
    ax1.set_xlabel("source frame (green: target shown, grey: catch window, red: detector fired)")
    ax1.set_ylabel("correlation with target")
    ax1.legend(loc="upper right", fontsize=8)
    ce = result["closed_events"]
    names = [k for k in ("rig_publish_ms", "decoder_ms", "delivery_ms", "client_ms", "command_ms",
                         "frame_clock_ms", "overhead_ms") if ce.get(k, {}).get("n")]
    ax2.bar(names, [ce[k]["p50"] for k in names], label="p50")
    ax2.scatter(names, [ce[k]["p99"] for k in names], color="k", zorder=3, label="p99")
    ax2.set_ylabel("ms per closed event")
    ax2.tick_params(axis="x", labelsize=8)
    ax2.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def run(args: argparse.Namespace) -> int:
    from neurocine.decoder.client import DecodedStream
    from neurocine.streams.commandline import emit_json
    from neurocine.streams.control import TARGETS, AsyncRigControl

    if args.target not in TARGETS:
        raise ValueError(f"--target {args.target!r}: built-in targets are {sorted(TARGETS)}")
    if args.events < 2:
        raise ValueError(f"--events must be >= 2, got {args.events}")
    if args.provisional and not decoder_has_provisional():
        log.error("this decode service has no --provisional option; run without --provisional "
                  "(final frames)")
        return 2
    rig_ep, out_ep, ctl_ep = (f"tcp://127.0.0.1:{args.port + i}" for i in range(3))
    decode_cmd = ["decode", "--connect", rig_ep, "--bind", out_ep, "--lag", str(args.lag), "--steps", str(args.steps),
                  "--threads", str(args.threads)]
    if args.provider:
        decode_cmd += ["--provider", args.provider]
    if args.provisional:
        decode_cmd.append("--provisional")
    load_start = os.getloadavg()
    procs = [subprocess.Popen(neurocine_argv(*decode_cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    procs.append(subprocess.Popen(neurocine_argv("rig", "--synthetic", "--neurons", str(args.neurons), "--bind", rig_ep,
                                       "--control", ctl_ep, "--wait-subscribers", "1"),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    try:
        with DecodedStream(out_ep, final=True, provisional=True) as stream:
            first = None
            deadline = time.monotonic() + 120
            while first is None and time.monotonic() < deadline:
                first = stream.recv(timeout_s=1.0)
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError("the rig or the decoder stopped: " + " | ".join(
                        (p.stderr.read() or "")[-500:] for p in procs if p.poll() is not None))
            if first is None:
                raise RuntimeError("no decoded frame within 120 s")
            ctl = AsyncRigControl(ctl_ep)
            loop = Loop(args, stream, ctl, TARGETS[args.target])
            loop.pump(time.time_ns() + int(args.warmup * 1e9))
            loop.frames.clear()
            log.info(f"{args.events} events, acting on {loop.action_kind} frames")
            loop.run()
            ctl.close()
            provisional_seen = stream.stats.provisional > 0
    finally:
        for p in procs:
            p.terminate()
        outs = [p.communicate(timeout=30) for p in procs]
    errs = [e for _, e in outs]
    result = summarise(loop, args, provisional_seen)
    result["machine"] = {"cpus": os.cpu_count(), "load_avg_1min_start": round(load_start[0], 2),
                         "load_avg_1min_end": round(os.getloadavg()[0], 2)}
    try:
        stats = json.loads(outs[0][0])["decode"]
        asked = stats["steps_run"] + stats["steps_shed"]
        result["decoder"] = {"steps_run": stats["steps_run"], "steps_asked": asked,
                             "steps_afforded_fraction": round(stats["steps_run"] / asked, 3) if asked else None,
                             "backlog_max": stats["backlog_max"], "provider": json.loads(outs[0][0]).get("provider")}
    except (ValueError, KeyError, TypeError):
        result["decoder"] = {"error": "no final stats from the decoder"}
    result["rig_log_tail"] = errs[1].strip().splitlines()[-1:] if errs[1] else []
    result["decoder_log_tail"] = errs[0].strip().splitlines()[-2:] if errs[0] else []
    emit_json(result, args.json)
    if args.figure:
        figure(loop, result, args.figure)
    return 0
