"""`neurocine view`: a live pyqtgraph window of the decoded movie beside the true stimulus.

It is its own process and only consumes streams, so the GUI can never block the decoder. A Qt
timer at twice the frame rate drains the sockets without waiting and draws the latest frame when a new one
has arrived (a timer at exactly the frame rate beats against the stream's own clock and skips frames), with
fixed 0..255 levels (no auto-levelling, which would make the movie flicker and costs time). Before a window
opens, `neurocine.decoder.view.qt_checks` makes sure Qt can open one and that the Qt binding is sound.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from typing import Any

from neurocine.streams.commandline import get_logger
from neurocine.streams.stall import add_stall_option, stall_config

log = get_logger("view")


def register(sub: Any) -> None:
    from neurocine.streams.commandline import add_verb

    p = add_verb(sub, "view", "live viewer of a decoded stream (pyqtgraph), with the true stimulus beside it",
                 "neurocine view --connect tcp://127.0.0.1:5556 --truth tcp://127.0.0.1:5555\n"
                 "neurocine view --connect tcp://127.0.0.1:5556 --screenshot out/view.png --frames 60")
    p.add_argument("--connect", default="tcp://127.0.0.1:5556", help="the decode service's endpoint")
    p.add_argument("--truth", help="the rig/replay endpoint whose frames carry the true stimulus")
    p.add_argument("--rate", type=float, default=30.0,
                   help="the stream's frame rate in Hz (default 30); the window checks for new frames at twice it")
    p.add_argument("--scale", type=int, default=6, help="screen pixels per movie pixel")
    p.add_argument("--screenshot", help="render offscreen, save a PNG after --frames decoded frames, and exit")
    p.add_argument("--frames", type=int, default=30, help="decoded frames to wait for before --screenshot")
    p.add_argument("--timeout", type=float, default=60.0, help="give up on --screenshot after this many seconds")
    p.add_argument("--provisional", action="store_true",
                   help="show each frame's provisional estimate as it arrives (decode --provisional), not the final "
                   "frames a lag later: the newest picture a closed loop would act on")
    add_stall_option(p, "(log, readout, summary) when a live session's decoded frames stop")
    p.add_argument("--seconds", type=float, default=None,
                   help="close the window by itself after this many seconds and print the summary (default: "
                   "run until closed or Ctrl-C)")
    p.add_argument("--raw-contrast", action="store_true",
                   help="show decoded frames at their raw grey levels (default: stretched between the 1st and 99th "
                   "percentiles of the last 3 s for display, labelled as such; messages and files are never changed)")
    p.set_defaults(func=run)


def has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def viewer_problem(offscreen: bool) -> str | None:
    """Why the viewer cannot run here (missing packages, a broken Qt binding, no window), or None."""
    try:
        import pyqtgraph  # noqa: F401
    except ImportError as e:
        return f"the viewer needs pyqtgraph and PySide6-Essentials: pip install 'neurocine[view]' ({e})"
    from neurocine.decoder.view.qt_checks import binding_problem, window_problem

    return binding_problem() or (None if offscreen else window_problem())


def run(args: argparse.Namespace) -> int:
    if args.screenshot or not has_display():
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        if not args.screenshot:
            log.info("no display found; rendering offscreen (use --screenshot to save what it draws)")
    problem = viewer_problem(offscreen=os.environ.get("QT_QPA_PLATFORM") == "offscreen")
    if problem:
        log.error(f"{problem}")
        return 2
    from neurocine.decoder.view.window import ViewerWindow

    stall = stall_config(args)
    from neurocine.decoder.view.contrast import StretchConfig

    window = ViewerWindow(args.connect, args.truth, rate_hz=args.rate, scale=args.scale, provisional=args.provisional,
                          stall=stall, stretch=None if args.raw_contrast else StretchConfig())
    if args.screenshot:
        ok = window.run_until(args.frames, args.timeout)
        window.save_png(args.screenshot)
        summary = window.summary()
        summary["screenshot"] = args.screenshot
        print(json.dumps(summary))
        window.close_streams()
        if not ok:
            log.error(f"only {summary['decoded_frames']} decoded frames arrived within {args.timeout:g} s "
                      f"from {args.connect}")
            return 1
        return 0
    t0 = time.monotonic()
    with contextlib.suppress(KeyboardInterrupt):
        window.exec(seconds=args.seconds)
    window.close_streams()
    print(json.dumps({**window.summary(), "seconds": round(time.monotonic() - t0, 1)}))
    return 0
