"""An example closed-loop client: calibrate the detector at the start of a session, then watch the decoded movie
for a target image and act when it appears.

It subscribes to a decode service (neurocine.decoder.client.DecodedStream). First a calibration block
(neurocine.decoder.client.calibrate_detector, --calibrate N events): the rig shows the target and switches movies
at random times, nothing is acted on, and the detector's threshold and frame count are chosen for
--false-alarm-rate per catch window (neurocine.decoder.detect.calibrate); the calibration (ROC, AUC, d',
predicted firings a minute) is printed as one JSON line and can be saved (--save-calibration) and reused
(--calibration FILE). Then each decoded frame is scored against the target (TargetDetector: mean correlation
over the calibrated frame count) and when the detector fires one command goes to the rig's control socket
(neurocine.streams.control), by default "back to a movie" so the target is taken off screen: the loop closes.
Each decision is printed as one JSON line (seq, kind of frame, latencies, the rig's acknowledgement); a summary
at the end. Replace `act()` with what your experiment does (an optogenetic trigger, a reward, a log entry): copy
this file (`python -c "import neurocine.decoder.examples.closed_loop as m; print(m.__file__)"` says where it is)
and run your copy.

example:
  neurocine rig --synthetic --control tcp://127.0.0.1:5557 &
  neurocine decode --connect tcp://127.0.0.1:5555 --bind tcp://127.0.0.1:5556 --lag 16 --provisional &
  python -m neurocine.decoder.examples.closed_loop --connect tcp://127.0.0.1:5556 --rig tcp://127.0.0.1:5557 \\
      --target bar --frames-kind provisional --calibrate 20 --save-calibration cal.json
  # a later session of the same mouse and decoder: --calibration cal.json (or --threshold T --average N)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from neurocine.decoder.client import EVENT_ITI_S, DecodedStream, LiveFrame, calibrate_detector
from neurocine.decoder.detect import DEFAULT_CALIBRATION, CalibrationConfig, DetectorConfig, TargetDetector
from neurocine.streams.commandline import get_logger
from neurocine.streams.control import TARGETS, AsyncRigControl, RigControl

log = get_logger("client")


def act(rig: RigControl | None, movie: int) -> dict:
    """What the experiment does on a detection: here, take the target off (switch the rig to a movie)."""
    return {"ok": True, "note": "no rig given"} if rig is None else rig.send("movie", k=movie)


def main(argv: list[str] | None = None) -> int:
    defaults = DetectorConfig()
    p = argparse.ArgumentParser(prog="python -m neurocine.decoder.examples.closed_loop",
                                description=__doc__.split("\n\n")[0],
                                epilog="example:\n" + __doc__.split("example:\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connect", default="tcp://127.0.0.1:5556", help="the decode service's endpoint")
    p.add_argument("--rig", help="the rig's control endpoint (omit to only report detections)")
    p.add_argument("--target", default="bar", choices=sorted(TARGETS), help="built-in target image")
    p.add_argument("--frames-kind", choices=["final", "provisional", "both"], default="final",
                   help="act on final frames, on provisional ones (decode --provisional), or on whichever first")
    p.add_argument("--calibrate", type=int, default=0, metavar="N",
                   help="first run a calibration block of N events on the rig (needs --rig; ~6 s an event)")
    p.add_argument("--false-alarm-rate", type=float, default=DEFAULT_CALIBRATION.false_alarm_rate,
                   help="detector firings allowed per catch window of --window s, for --calibrate (default "
                   f"{DEFAULT_CALIBRATION.false_alarm_rate:g})")
    p.add_argument("--window", type=float, default=DEFAULT_CALIBRATION.window_s,
                   help=f"a catch window in seconds (default {DEFAULT_CALIBRATION.window_s:g})")
    p.add_argument("--iti", type=float, nargs=2, default=EVENT_ITI_S, metavar=("MIN", "MAX"),
                   help="seconds of movie between calibration events (default %(default)s)")
    p.add_argument("--calibration", help="a calibration saved by --save-calibration (threshold and frame count "
                   "per kind of frame)")
    p.add_argument("--save-calibration", help="write the calibration here (JSON)")
    p.add_argument("--threshold", type=float, default=None,
                   help=f"fixed threshold instead of a calibration (uncalibrated default {defaults.threshold})")
    p.add_argument("--average", type=int, default=None,
                   help=f"frames the detector averages (uncalibrated default {defaults.frames})")
    p.add_argument("--roi", type=int, nargs=4, metavar=("Y0", "Y1", "X0", "X1"), help="region of interest")
    p.add_argument("--max-decisions", type=int, default=None, help="stop after this many detections")
    p.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    args = p.parse_args(argv)
    if args.calibrate and not args.rig:
        p.error("--calibrate needs --rig (the calibration block shows the target on the rig)")

    roi = tuple(args.roi) if args.roi else None
    want_final = args.frames_kind in ("final", "both")
    want_prov = args.frames_kind in ("provisional", "both")
    rig = RigControl(args.rig) if args.rig else None
    decisions = 0
    with DecodedStream(args.connect, final=want_final, provisional=want_prov) as stream:
        configs = {kind: defaults for kind in ("final", "provisional")}
        if args.calibration:
            saved = json.loads(Path(args.calibration).read_text())
            configs.update({k: DetectorConfig(**v["config"]) for k, v in saved.items()})
        if args.calibrate:
            configs.update(calibrate_session(stream, args, roi))
        elif not args.calibration and args.threshold is None:
            log.warning("the detector is not calibrated (its threshold is a guess): --calibrate N runs a "
                        "calibration block first, --calibration FILE reuses one")
        configs = {k: DetectorConfig(threshold=c.threshold if args.threshold is None else args.threshold,
                                     frames=c.frames if args.average is None else args.average,
                                     refractory=c.refractory, roi=roi) for k, c in configs.items()}
        detectors = {True: TargetDetector(TARGETS[args.target], configs["final"]),
                     False: TargetDetector(TARGETS[args.target], configs["provisional"])}
        stop_at = None if args.seconds is None else time.monotonic() + args.seconds
        log.info(f"{args.connect} -> detector ({args.target}; " + ", ".join(
            f"{k}: threshold {c.threshold}, {c.frames} frames" for k, c in configs.items()) +
            f") -> {args.rig or 'no rig'}")
        try:
            while (args.max_decisions is None or decisions < args.max_decisions) and (
                    stop_at is None or time.monotonic() < stop_at):
                f: LiveFrame | None = stream.recv(timeout_s=0.2)
                if f is None:
                    continue
                det = detectors[f.final]
                if f.new_session:
                    det.reset()
                if not det.update(f.seq, f.frame):
                    continue
                t_decision = time.time_ns()
                decisions += 1
                reply = act(rig, movie=decisions)
                print(json.dumps({"decision": decisions, "seq": f.seq, "final": f.final,
                                  "score": round(det.last_mean, 3), "latency_ms": round(f.latency_ms, 2),
                                  "overhead_ms": round(f.overhead_ms, 2),
                                  "decide_ms": round((t_decision - f.t_recv_ns) / 1e6, 3), "rig": reply}), flush=True)
        except KeyboardInterrupt:
            pass
        stats = stream.stats
    if rig is not None:
        rig.close()
    print(json.dumps({"summary": {"decisions": decisions, "final_frames": stats.final,
                                  "provisional_frames": stats.provisional, "malformed": stats.malformed,
                                  "stalls": stats.stalls}}))
    return 0


def calibrate_session(stream: DecodedStream, args: argparse.Namespace, roi: tuple | None) -> dict[str, DetectorConfig]:
    """The start of a session: a calibration block on the rig, a detector per kind of frame (printed, saved)."""
    cfg = CalibrationConfig(false_alarm_rate=args.false_alarm_rate, window_s=args.window)
    log.info(f"calibrating: {args.calibrate} events (~{args.calibrate * 6} s), nothing acted on")
    rig = AsyncRigControl(args.rig)
    try:
        cals = calibrate_detector(stream, rig, args.target, events=args.calibrate, config=cfg, roi=roi,
                                  iti_s=tuple(args.iti))
    finally:
        rig.close()
    summary = {k: c.as_dict() for k, c in cals.items()}
    for c in summary.values():
        c.pop("roc")
    print(json.dumps({"calibration": summary}), flush=True)
    if args.save_calibration:
        Path(args.save_calibration).write_text(json.dumps({k: c.as_dict() for k, c in cals.items()}, indent=2))
    return {k: c.config for k, c in cals.items()}


if __name__ == "__main__":
    sys.exit(main())
