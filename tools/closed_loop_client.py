#!/usr/bin/env python3
"""An example closed-loop client: watch the decoded movie for a target image and act when it appears.

It subscribes to a decode service (neurocine.decoder.client.DecodedStream), scores each decoded frame against the
target (neurocine.decoder.detect.TargetDetector: mean correlation over a few frames, optional region of interest),
and when the detector fires it sends one command to the rig's control socket (neurocine.streams.control), by
default "back to a movie" so the target is taken off screen: the loop closes. Each decision is printed
as one JSON line (seq, kind of frame, latencies, the rig's acknowledgement); a summary at the end.
Replace `act()` with what your experiment does (an optogenetic trigger, a reward, a log entry).

example:
  neurocine rig --synthetic --control tcp://127.0.0.1:5557 &
  neurocine decode --connect tcp://127.0.0.1:5555 --bind tcp://127.0.0.1:5556 --lag 16 &
  python tools/closed_loop_client.py --connect tcp://127.0.0.1:5556 --rig tcp://127.0.0.1:5557 --target bar
  # elsewhere, show the target:  python -c "from neurocine.streams.control import RigControl as R; \\
  #     print(R('tcp://127.0.0.1:5557').send('target', name='bar'))"
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from neurocine.decoder.client import DecodedStream, LiveFrame
from neurocine.decoder.detect import DetectorConfig, TargetDetector
from neurocine.streams.commandline import get_logger
from neurocine.streams.control import TARGETS, RigControl

log = get_logger("client")


def act(rig: RigControl | None, movie: int) -> dict:
    """What the experiment does on a detection: here, take the target off (switch the rig to a movie)."""
    return {"ok": True, "note": "no rig given"} if rig is None else rig.send("movie", k=movie)


def main(argv: list[str] | None = None) -> int:
    defaults = DetectorConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="example:\n" + __doc__.split("example:\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connect", default="tcp://127.0.0.1:5556", help="the decode service's endpoint")
    p.add_argument("--rig", help="the rig's control endpoint (omit to only report detections)")
    p.add_argument("--target", default="bar", choices=sorted(TARGETS), help="built-in target image")
    p.add_argument("--frames-kind", choices=["final", "provisional", "both"], default="final",
                   help="act on final frames, on provisional ones (decode --provisional), or on whichever first")
    p.add_argument("--threshold", type=float, default=defaults.threshold)
    p.add_argument("--average", type=int, default=defaults.frames, help="frames the detector averages")
    p.add_argument("--roi", type=int, nargs=4, metavar=("Y0", "Y1", "X0", "X1"), help="region of interest")
    p.add_argument("--max-decisions", type=int, default=None, help="stop after this many detections")
    p.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    args = p.parse_args(argv)

    cfg = DetectorConfig(threshold=args.threshold, frames=args.average, refractory=defaults.refractory,
                         roi=tuple(args.roi) if args.roi else None)
    want_final = args.frames_kind in ("final", "both")
    want_prov = args.frames_kind in ("provisional", "both")
    detectors = {True: TargetDetector(TARGETS[args.target], cfg), False: TargetDetector(TARGETS[args.target], cfg)}
    rig = RigControl(args.rig) if args.rig else None
    decisions = 0
    stop_at = None if args.seconds is None else time.monotonic() + args.seconds
    log.info(f"{args.connect} -> detector ({args.target}, threshold {cfg.threshold}, {cfg.frames} frames)"
             f" -> {args.rig or 'no rig'}")
    with DecodedStream(args.connect, final=want_final, provisional=want_prov) as stream:
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
                                  "provisional_frames": stats.provisional, "malformed": stats.malformed}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
