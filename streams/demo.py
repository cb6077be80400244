"""`neurocine demo`: the README's main command on built-in defaults.

Today it runs the streaming half of the pipeline for real: the built-in example session is replayed
over ZeroMQ (loopback TCP) into a recorder, and the recording is checked against the source.
The decoder and viewer join this pipeline when they land.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

DEMO_PORT = 5555


def register(sub: Any) -> None:
    from streams.cli import add_verb

    p = add_verb(sub, "demo", "run the pipeline on built-in defaults (replay of the example session -> recorder)",
                 "neurocine demo --seconds 10")
    p.add_argument("--seconds", type=float, default=10.0, help="stop after this long (default 10)")
    p.add_argument("--speed", type=float, default=1.0, help="replay speed (1 = real time, 0 = flat out)")
    p.add_argument("--port", type=int, default=DEMO_PORT, help=f"loopback TCP port (default {DEMO_PORT})")
    p.add_argument("--out", default="neurocine-demo.ncr", help="where the recording goes")
    p.add_argument("--json", help="also write the summary here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from streams.cli import emit_json, stop_on_sigterm
    from streams.example import example_session_path
    from streams.formats import load_session
    from streams.record import record
    from streams.replay import replay
    from streams.transport import Publisher, Subscriber

    source = load_session(example_session_path())
    out = Path(args.out)
    out.unlink(missing_ok=True)
    endpoint = f"tcp://127.0.0.1:{args.port}"
    print(f"demo: replaying the built-in example ({source.n_frames} frames, {source.n_neurons} neurons, "
          f"mouse {source.mouse_id}) on {endpoint} into {out} for {args.seconds:g} s; Ctrl-C stops",
          file=sys.stderr)
    stop_on_sigterm()
    stop = threading.Event()
    reports: list = []
    with Publisher(endpoint, nodrop=True) as pub, Subscriber(endpoint) as sub:

        def publish() -> None:
            pub.wait_subscribers(1, timeout_s=10)
            reports.append(replay(source, pub, speed=args.speed, loop=True, should_stop=stop.is_set))

        th = threading.Thread(target=publish, daemon=True)
        th.start()
        t0 = time.monotonic()
        try:
            summary = record(sub, out, max_seconds=args.seconds, should_stop=lambda: not th.is_alive())
        finally:
            stop.set()
            th.join(5)
    recorded = load_session(out)
    n = min(recorded.n_frames, source.n_frames)
    identical = recorded.traces[:n].tobytes() == source.traces[:n].tobytes()
    result = {
        "demo": "replay -> record",
        "recording": str(out.resolve()),
        "seconds": round(time.monotonic() - t0, 2),
        "frames_recorded": recorded.n_frames,
        "gaps": summary.gaps,
        "malformed": summary.malformed,
        "bit_identical_to_source": bool(identical and np.array_equal(recorded.neuron_ids, source.neuron_ids)),
        "replay": reports[0].as_dict() if reports else None,
    }
    emit_json(result, args.json)
    print(f"demo: recording written to {out.resolve()}", file=sys.stderr)
    return 0 if identical else 1
