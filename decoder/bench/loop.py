"""`neurocine bench loop`: the whole closed loop, stimulus change -> decoded movie -> decision -> next change.

Three processes, as at the microscope: the steerable synthetic rig (`neurocine rig --synthetic --control`), the
decode service (`neurocine decode --provisional`, built-in model), wired by the pipeline declaration
(decoder/live/pipeline.py), and this process, which is the experimenter: the client API
(neurocine.decoder.client), the detector (neurocine.decoder.detect) and the rig's control socket.

Two blocks, as an experimenter would run them. *Calibration*: target and catch events at random times that
nothing acts on; from them a detector is fitted per kind of frame (provisional, final) for a stated false-alarm
rate per catch window (`--false-alarm-rate`): threshold and frame count, with the ROC, AUC and d'. *Test*: new
events (another stretch of movie, the same schedule seed family); the calibrated detector acts: on a detection
the client switches the rig back to a movie, closing the loop; a target not found within --window seconds is
taken off by the schedule (a miss). It acts on provisional frames by default (`--act-on final`: on final frames,
a lag later; `alternate`: target events alternate at random between the two, for a comparison in one run).

Reported: hits, catch-window false alarms and background firings a minute, per kind of frame; the decision's
delay after the target appeared on screen as a distribution (p10/p50/p90, values, histogram); and per frame and
per closed event the stages: shown -> published (rig), published -> decoded, decoded -> client, client decision,
decision -> the rig showing the next change and its acknowledgement. "Overhead" is what is ours: everything but
the decoder's designed lag, the biology (indicator rise, the encoder's temporal context) and the rig's frame
clock (a change waits for the next frame boundary), which are reported apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from neurocine.decoder.client import EventRunner
from neurocine.streams.commandline import get_logger
from neurocine.streams.summary import percentiles

log = get_logger("bench.loop")

PERIOD_NS = round(1e9 / 30)
KINDS = ("provisional", "final")


def register(bench_sub: Any) -> None:
    from neurocine.decoder.detect import DEFAULT_CALIBRATION as C
    from neurocine.streams.commandline import add_verb

    p = add_verb(bench_sub, "loop", "closed loop: calibrate a detector, then rig -> decode -> client -> rig (JSON)",
                 "neurocine bench loop --events 20 --json out/loop.json --figure out/loop.png\n"
                 "neurocine bench loop --act-on final       # decide on final frames (a lag later)\n"
                 "neurocine bench loop --act-on alternate   # both, target events alternating at random")
    p.add_argument("--events", type=int, default=20, help="test events, half target and half catch (default 20)")
    p.add_argument("--calibration-events", type=int, default=20,
                   help="calibration events before them, half target and half catch (default 20)")
    p.add_argument("--false-alarm-rate", type=float, default=C.false_alarm_rate,
                   help=f"detector firings allowed per catch window (default {C.false_alarm_rate:g})")
    p.add_argument("--act-on", choices=[*KINDS, "alternate"], default="provisional",
                   help="frames the client decides on (default provisional: at once; final: a lag later)")
    p.add_argument("--window", type=float, default=C.window_s,
                   help=f"seconds a target stays up if not found, and a catch window (default {C.window_s:g})")
    p.add_argument("--iti", type=float, nargs=2, default=(2.5, 3.5), metavar=("MIN", "MAX"),
                   help="seconds of movie between events, uniform (default 2.5 3.5)")
    p.add_argument("--target", default="bar", help="built-in target image (neurocine.streams.control.TARGETS)")
    p.add_argument("--threshold", type=float, default=None, help="override the calibrated threshold")
    p.add_argument("--detector-frames", type=int, default=None, help="override the calibrated frame count")
    p.add_argument("--lag", type=int, default=16, help="decoder lag in frames (default 16)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="decoder compute threads (default 1)")
    p.add_argument("--provider", choices=["cuda", "cpu"], default=None)
    p.add_argument("--neurons", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="schedule seed (event order, intervals, movies)")
    p.add_argument("--port", type=int, default=27650, help="first of three loopback ports to use")
    p.add_argument("--warmup", type=float, default=4.0, help="seconds of decoding before the first event")
    p.add_argument("--json", help="also write the result here")
    p.add_argument("--figure", help="write the detector traces, decision delays and stage latencies (PNG)")
    p.set_defaults(func=run)


def _pct(x: Any) -> dict[str, Any]:
    a = np.asarray(list(x), np.float64)
    return {"n": int(a.size), **percentiles(a, 2)}


def distribution(x: Any, bin_ms: float = 100.0) -> dict[str, Any]:
    """A delay's distribution: the usual percentiles, p10, p90 and min beside them, every value, and a histogram
    in `bin_ms` bins."""
    a = np.sort(np.asarray(list(x), np.float64))
    if a.size == 0:
        return {"n": 0}
    p10, p90 = np.percentile(a, [10, 90])
    edges = np.arange(0.0, a.max() + bin_ms, bin_ms)
    counts, edges = np.histogram(a, bins=edges if edges.size > 1 else [0.0, bin_ms])
    return {"n": int(a.size), **percentiles(a, 1), "p10": round(float(p10), 1), "p90": round(float(p90), 1),
            "min": round(float(a[0]), 1), "values": [round(float(v), 1) for v in a],
            "histogram": {"bin_ms": bin_ms, "edges_ms": [round(float(e), 1) for e in edges],
                          "counts": [int(c) for c in counts]}}


class Loop(EventRunner):
    """The test block: both calibrated detectors watch every frame; the kind a target event acts on takes it off."""

    def __init__(self, args: argparse.Namespace, stream: Any, ctl: Any, configs: dict[str, Any], movie: int) -> None:
        from neurocine.decoder.detect import TargetDetector
        from neurocine.streams.control import TARGETS

        super().__init__(stream, ctl, args.target, window_s=args.window, iti_s=tuple(args.iti), seed=args.seed + 1)
        self.args, self.configs, self.movie = args, configs, movie
        self.detectors = {k: TargetDetector(TARGETS[args.target], configs[k]) for k in configs}
        self.fires: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
        # (kind, seq, t_acq, t_pub, trigger_seq, trigger_t_pub, t_done, t_recv, mean score, decoder's t_recv,
        #  queue_ns, compute_ns, this frame's score) per decoded frame
        self.frames: list[tuple] = []

    def on_frame(self, f: Any) -> None:
        kind = "final" if f.final else "provisional"
        det = self.detectors.get(kind)
        if det is None:
            return
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
        if (ev is not None and ev["kind"] == "target" and ev.get("act_on") == kind and "on" in ev
                and "off_cmd" not in ev and f.seq >= ev["on"]["seq"]):
            ev["decision"] = fire
            self.take_off(ev, "client")

    def run(self) -> None:
        plan = self.plan(self.args.events)
        n_targets = plan.count("target")
        acts = [self.args.act_on] * n_targets if self.args.act_on != "alternate" else [  # half each, seeded order
            str(k) for k in self.rng.permutation([KINDS[i % 2] for i in range(n_targets)])]
        for kind in plan:
            if kind == "target":
                self.run_event(kind, act_on=acts.pop())
            else:
                self.run_event(kind)
        self.pump(time.time_ns() + int((self.args.lag / 30 + 1.5) * 1e9))  # the last final frames


def summarise(loop: Any, args: argparse.Namespace, calibration: dict[str, Any]) -> dict[str, Any]:
    """Everything measured in the test block, beside the calibration it ran with (JSON-able)."""
    from neurocine.decoder.detect import CalibrationConfig, evaluate

    window_frames = round(args.window * 30)
    rows = loop.frames
    out: dict[str, Any] = {"config": {k: v for k, v in vars(args).items() if k != "func"},
                           "acted_on": args.act_on, "calibration": calibration,
                           "detectors": {k: dataclasses.asdict(c) for k, c in loop.configs.items()}}
    out["per_frame"] = _per_frame(rows)
    events = [e for e in loop.events if "on" in e]
    windows = loop.windows(window_frames)
    cal_cfg = CalibrationConfig(window_s=args.window)
    res: dict[str, Any] = {}
    for kind in KINDS:
        if not any(x[0] == kind for x in rows):
            continue
        fires = loop.fires[kind]
        hits, fas, delays, decision_ms = [], [], [], []
        for e in events:
            lo = e["on"]["seq"]
            hi = e["off"]["seq"] if e["kind"] == "target" and "off" in e else lo + window_frames
            first = next((f for f in fires if lo <= f["seq"] < hi), None)
            if e["kind"] == "catch":
                fas.append(first is not None)
            elif e.get("act_on") == kind:  # a target another kind acted on went off early: not this kind's trial
                hits.append(first is not None)
                if first is not None:
                    delays.append(first["seq"] - lo)
                    decision_ms.append((first["t_decision_ns"] - e["on"]["t_shown_ns"]) / 1e6)
        r = [x for x in rows if x[0] == kind]
        res[kind] = {
            "targets_acted_on": len(hits), "hits": int(sum(hits)),
            "hit_rate": round(float(np.mean(hits)), 3) if hits else None,
            "catch": len(fas), "false_alarms": int(sum(fas)),
            "false_alarm_rate": round(float(np.mean(fas)), 3) if fas else None,
            **_background_fires(loop, kind, windows),
            "detection_delay_frames": _pct(delays),  # biology + encoder context + detector averaging
            "decision_after_shown_ms": distribution(decision_ms),  # the whole loop, the lag and the biology in it
            "windows": evaluate([x[1] for x in r], [x[12] for x in r], windows, loop.configs[kind], cal_cfg),
            "fired_at_seq": [f["seq"] for f in fires],
        }
    out["detection"] = res
    out["closed_events"] = _closed_events(events)
    out["events"] = [dict(e) for e in loop.events]
    return out


def _per_frame(rows: list[tuple]) -> dict[str, Any]:
    """Stage latencies of every decoded frame (thousands of samples, so p99 means something)."""
    per_frame: dict[str, Any] = {}
    for kind in KINDS:
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
            # what a decision on any frame would cost us: rig publish + decoder + delivery
            "overhead_ms": _pct((t_recv - trig_acq) / 1e6),
        }
    return per_frame


def _closed_events(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Our overhead on the deciding frame and the next change, per event the client closed."""
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
    out: dict[str, Any] = {k: _pct(v) for k, v in stages.items()}
    out["n"] = len(stages["overhead_ms"])
    return out


def _background_fires(loop: Any, kind: str, windows: list[tuple[str, int, int]]) -> dict[str, Any]:
    """Firings during the movie between events (outside every target/catch window and the trailing frames
    after a target), per minute of such movie: false alarms the catch windows do not sample."""
    from neurocine.decoder.detect import CalibrationConfig

    trailing = CalibrationConfig().trailing_frames
    seqs = np.array(sorted({x[1] for x in loop.frames if x[0] == kind}))
    if seqs.size == 0:
        return {}
    busy = np.zeros(seqs.size, bool)
    for k, lo, hi in windows:
        busy |= (seqs >= lo) & (seqs < hi + (trailing if k == "target" else 0))
    background = set(seqs[~busy].tolist())
    n = sum(1 for f in loop.fires[kind] if f["seq"] in background)
    minutes = len(background) / 30 / 60
    return {"background_fires": n, "background_minutes": round(minutes, 2),
            "background_fires_per_minute": round(n / minutes, 2) if minutes else None}


def figure(loop: Any, result: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 10))
    ax1 = axes[0]
    for kind, colour in zip(KINDS, ("tab:blue", "tab:orange"), strict=True):
        r = [x for x in loop.frames if x[0] == kind]
        if r:
            ax1.plot([x[1] for x in r], [x[8] for x in r], lw=0.7, color=colour, label=f"{kind} frames")
            ax1.axhline(loop.configs[kind].threshold, color=colour, ls="--", lw=0.8)
    for e in loop.events:
        if "on" not in e:
            continue
        lo = e["on"]["seq"]
        hi = e["off"]["seq"] if "off" in e else lo + round(loop.args.window * 30)
        ax1.axvspan(lo, hi, color="tab:green" if e["kind"] == "target" else "tab:grey", alpha=0.25, lw=0)
    ax1.set_xlabel("source frame (green: target shown, grey: catch window; dashed: calibrated thresholds)")
    ax1.set_ylabel("detector statistic")
    ax1.legend(loc="upper right", fontsize=8)
    ax2 = axes[1]
    for kind in KINDS:
        d = result["detection"].get(kind, {}).get("decision_after_shown_ms", {})
        if d.get("n"):
            ax2.hist(d["values"], bins=d["histogram"]["edges_ms"], alpha=0.6, label=f"{kind} (p50 {d['p50']} ms)")
    ax2.set_xlabel("decision after the target appeared on screen (ms)")
    ax2.set_ylabel("target events")
    ax2.legend(fontsize=8)
    ce = result["closed_events"]
    names = [k for k in ("rig_publish_ms", "decoder_ms", "delivery_ms", "client_ms", "command_ms",
                         "frame_clock_ms", "overhead_ms") if ce.get(k, {}).get("n")]
    axes[2].bar(names, [ce[k]["p50"] for k in names], label="p50")
    axes[2].scatter(names, [ce[k]["p99"] for k in names], color="k", zorder=3, label="p99")
    axes[2].set_ylabel("ms per closed event")
    axes[2].tick_params(axis="x", labelsize=8)
    axes[2].legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _detectors(args: argparse.Namespace, calibrations: dict[str, Any]) -> dict[str, Any]:
    """The detector each kind acts with: its calibration, with any --threshold / --detector-frames override."""
    out = {}
    for kind, cal in calibrations.items():
        cfg = cal.config
        if args.threshold is not None:
            cfg = dataclasses.replace(cfg, threshold=args.threshold)
        if args.detector_frames is not None:
            cfg = dataclasses.replace(cfg, frames=args.detector_frames)
        out[kind] = cfg
    return out


def run(args: argparse.Namespace) -> int:
    from neurocine.decoder.client import CalibrationBlock, DecodedStream
    from neurocine.decoder.detect import CalibrationConfig
    from neurocine.decoder.live.pipeline import LivePipeline
    from neurocine.streams.commandline import emit_json
    from neurocine.streams.control import TARGETS, AsyncRigControl

    if args.target not in TARGETS:
        raise ValueError(f"--target {args.target!r}: built-in targets are {sorted(TARGETS)}")
    if args.events < 2 or args.calibration_events < 2:
        raise ValueError(f"--events and --calibration-events must be >= 2, got {args.events}, "
                         f"{args.calibration_events}")
    ctl_ep = f"tcp://127.0.0.1:{args.port + 2}"
    decode_args = ["--lag", str(args.lag), "--steps", str(args.steps), "--threads", str(args.threads),
                   "--provisional"]
    if args.provider:
        decode_args += ["--provider", args.provider]
    source = ["rig", "--synthetic", "--neurons", str(args.neurons), "--control", ctl_ep]
    load_start = os.getloadavg()
    pipe = LivePipeline(source, decode_args, args.port, keep_decoder_log=True, watch_source=False,
                        watch_decoded=False)
    with pipe, DecodedStream(pipe.decoded_ep, final=True, provisional=True) as stream:
        first, deadline = None, time.monotonic() + 120
        while first is None and time.monotonic() < deadline:
            first = stream.recv(timeout_s=1.0)
            if pipe.exited():
                raise RuntimeError(f"a pipeline process stopped: {pipe.exited()}: "
                                   + " | ".join(list(pipe.decoder_log)[-5:]))
        if first is None:
            raise RuntimeError("no decoded frame within 120 s")
        ctl = AsyncRigControl(ctl_ep)
        EventRunner(stream, ctl, args.target, window_s=args.window).pump(time.time_ns() + int(args.warmup * 1e9))
        cal_cfg = CalibrationConfig(false_alarm_rate=args.false_alarm_rate, window_s=args.window)
        block = CalibrationBlock(stream, ctl, args.target, config=cal_cfg, iti_s=tuple(args.iti), seed=args.seed)
        log.info(f"calibration: {args.calibration_events} events, nothing acted on")
        block.run(args.calibration_events, settle_s=args.lag / 30 + 1.5)
        calibrations = block.fit()
        for kind, cal in calibrations.items():
            log.info(f"calibrated {kind}: threshold {cal.config.threshold}, {cal.config.frames} frames "
                     f"(hits {cal.hit_rate}, AUC {cal.auc}, d' {cal.d_prime})")
        loop = Loop(args, stream, ctl, _detectors(args, calibrations), block.movie)
        log.info(f"test: {args.events} events, acting on {args.act_on} frames")
        loop.run()
        ctl.close()
        client = {"stalls": stream.stats.stalls, "malformed": stream.stats.malformed}
        pipe.close(wait_s=30)
    result = summarise(loop, args, {k: c.as_dict() for k, c in calibrations.items()})
    result["client"] = client
    result["machine"] = {"cpus": os.cpu_count(), "load_avg_1min_start": round(load_start[0], 2),
                         "load_avg_1min_end": round(os.getloadavg()[0], 2)}
    stats = (pipe.decoder_result or {}).get("decode")
    if stats:
        asked = stats["steps_run"] + stats["steps_shed"]
        result["decoder"] = {"steps_run": stats["steps_run"], "steps_asked": asked,
                             "steps_afforded_fraction": round(stats["steps_run"] / asked, 3) if asked else None,
                             "backlog_max": stats["backlog_max"], "stalls": stats["wire"].get("stalls"),
                             "provider": (pipe.decoder_result or {}).get("provider")}
    else:
        result["decoder"] = {"error": "no final stats from the decoder"}
    result["decoder_log_tail"] = list(pipe.decoder_log)[-2:]
    emit_json(result, args.json)
    if args.figure:
        figure(loop, result, args.figure)
    return 0
