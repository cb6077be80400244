"""`neurocine <verb>`: the one command line.

The rig-side verbs live in `streams`; the decoder registers its verbs through the
``neurocine.verbs`` / ``neurocine.benches`` entry-point groups, so `streams` never imports it and
a light rig install still gets a working CLI.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from neurocine.streams.commandline import (
    DEFAULT_PUB,
    add_log_level,
    add_verb,
    configure_logging,
    emit_json,
    get_logger,
    stop_on_sigterm,
)
from neurocine.streams.stall import add_stall_option, stall_config


def add_series_option(p: argparse.ArgumentParser) -> None:
    """--series, for every verb that reads a session path (an NWB file may hold several trace series)."""
    p.add_argument("--series", metavar="NAME", default=None,
                   help="NWB files: the trace series to read, e.g. Deconvolved/plane0 (suite2p) or dff (default: "
                   "the deconvolved one, else the dF/F one; two candidates without --series is an error listing both)")


def parse_trials(text: str) -> list[int]:
    """'0,3,5-8' -> [0, 3, 5, 6, 7, 8]."""
    out: list[int] = []
    try:
        for piece in text.split(","):
            if "-" in piece.strip()[1:]:
                lo, hi = piece.split("-", 1)
                out.extend(range(int(lo), int(hi) + 1))
            elif piece.strip():
                out.append(int(piece))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--trials {text!r}: expected e.g. 0,3,5-8") from e
    return out


# ---------------------------------------------------------------------------------------------- replay
def _register_replay(sub: Any) -> None:
    p = add_verb(
        sub, "replay", "publish a recorded session as a live stream",
        "neurocine replay streams/data/example.ncr --speed 1 --bind tcp://127.0.0.1:5555\n"
        "neurocine replay /data/mouse1 --tier oracle --speed 0 --wait-subscribers 1\n"
        "neurocine replay dynamic29515-10-12-Video-9b4f6a1a067fe51e15306b9628efea20.zip   # a release zip, as is\n"
        "neurocine replay suite2p/ophys.nwb --series Deconvolved/plane0",
    )
    p.add_argument("path", help="Sensorium folder or release .zip (read one trial at a time), .nwb or .ncr "
                   "recording (default: the built-in example)", nargs="?", default=None)
    p.add_argument("--trials", type=parse_trials, help="trial indices, e.g. 0,3,5-8 (default: all, but those of "
                   "tiers without responses)")
    p.add_argument("--tier", help="only trials of this tier (Sensorium folders), e.g. oracle; a tier whose "
                   "responses are all zero (the release's withheld test tiers) is refused")
    add_series_option(p)
    p.add_argument("--bind", default=DEFAULT_PUB, help=f"ZeroMQ endpoint to publish on (default {DEFAULT_PUB})")
    p.add_argument("--speed", type=float, default=1.0, help="1 = recorded rate, 2 = twice as fast, 0 = flat out")
    p.add_argument("--loop", action="store_true", help="start again at the end (same session continues)")
    p.add_argument("--wait-subscribers", type=int, default=0, metavar="N",
                   help="wait until N neurocine subscribers are connected before the first frame")
    p.add_argument("--sndhwm", type=int, default=None, help="publisher queue limit per subscriber (messages, "
                   "default 100: a replay waits for its slowest subscriber, so a deeper queue only adds what a "
                   "killed subscriber loses)")
    p.add_argument("--decoded", action="store_true",
                   help="replay the decoded stream a .ncr recording holds (automatic when it holds no traces)")
    p.add_argument("--json", help="also write the end-of-run report here")
    p.set_defaults(func=_run_replay)


def _run_replay(args: argparse.Namespace) -> int:
    from neurocine.streams.example import example_session_path
    from neurocine.streams.formats import open_session
    from neurocine.streams.replay import print_progress, replay, replay_publisher
    from neurocine.streams.session import Session, StreamedSession

    path = args.path or example_session_path()
    if args.decoded or _only_decoded(path):
        return _run_replay_decoded(args, path)
    session = open_session(path, trials=args.trials, tier=args.tier, series=args.series)
    frames = f"{session.n_frames} frames" if isinstance(session, Session) else "read one trial at a time"
    get_logger("replay").info(f"{path}: {len(session.trials)} trials x {session.n_neurons} neurons at "
                              f"{session.frame_rate} Hz ({frames}) on {args.bind}")
    stop_on_sigterm()
    with replay_publisher(args.bind, args.sndhwm) as pub:
        if args.wait_subscribers:
            get_logger("replay").info(f"waiting for {args.wait_subscribers} subscriber(s)...")
            try:
                pub.wait_subscribers(args.wait_subscribers)
            except KeyboardInterrupt:
                return 130
        total = session.n_frames if isinstance(session, Session) else None
        report = replay(session, pub, speed=args.speed, loop=args.loop,
                        progress=None if args.loop else print_progress(total))
    out: dict[str, Any] = {"replay": report.as_dict()}
    if isinstance(session, StreamedSession) and session.report is not None:
        out["read"] = session.report()
        get_logger("replay").info(f"{path}: read {out['read']['trials_read']} trials; video pixels rounded to 8 "
                                  f"bits: {out['read']['pixels_rounded']} of {out['read']['pixels']} (up to "
                                  f"{out['read']['max_pixel_offset']} off)")
    emit_json(out, args.json)
    return 130 if report.interrupted else 0


def _only_decoded(path: str | Path) -> bool:
    """A .ncr recording with decoded messages and no session header (what recording a decoder gives)."""
    if Path(path).suffix != ".ncr" or not Path(path).is_file():
        return False
    from neurocine.streams.formats.native import read_recording

    rec = read_recording(path)
    return not rec.headers and bool(rec.decoded)


def _run_replay_decoded(args: argparse.Namespace, path: str | Path) -> int:
    from neurocine.streams.replay import replay_decoded, replay_publisher

    get_logger("replay").info(f"{path}: its decoded stream on {args.bind}")
    stop_on_sigterm()
    with replay_publisher(args.bind, args.sndhwm) as pub:
        if args.wait_subscribers:
            pub.wait_subscribers(args.wait_subscribers)
        try:
            report = replay_decoded(path, pub, speed=args.speed)
        except ValueError as e:
            get_logger("replay").error(str(e))
            return 2
        except KeyboardInterrupt:
            return 130
    emit_json({"replay": report.as_dict()}, args.json)
    return 130 if report.interrupted else 0


# ---------------------------------------------------------------------------------------------- record
def _register_record(sub: Any) -> None:
    p = add_verb(
        sub, "record", "write a stream to disk (native .ncr, or .nwb)",
        "neurocine record --connect tcp://127.0.0.1:5555 --out session.ncr --seconds 60\n"
        "neurocine record --connect tcp://127.0.0.1:5555 --out session.nwb --until-end",
    )
    p.add_argument("--connect", default=DEFAULT_PUB, help=f"publisher endpoint(s), comma-separated "
                   f"(default {DEFAULT_PUB})")
    p.add_argument("--out", required=True, help="output path: .ncr (append-only, crash-safe) or .nwb")
    p.add_argument("--frames", type=int, help="stop after this many frames")
    p.add_argument("--seconds", type=float, help="stop after this many seconds")
    p.add_argument("--until-end", action="store_true", help="stop when the first session ends")
    p.add_argument("--decoded", action="store_true",
                   help="record a decoder's output (`decoded` messages); by default only the rig's raw topics "
                   "(session, frame, end) are kept, so nothing injected as `decoded` lands in a raw recording")
    add_stall_option(p, "when a live session sends no valid frame", "the summary counts the stalls")
    p.add_argument("--json", help="also write the summary here")
    p.set_defaults(func=_run_record)


def _run_record(args: argparse.Namespace) -> int:
    from neurocine.streams.protocol import RAW_TOPICS, TOPICS
    from neurocine.streams.record import RECORD_RCVBUF, RECORD_RCVHWM, record
    from neurocine.streams.transport import Subscriber

    if Path(args.out).suffix.lower() not in (".ncr", ".nwb"):
        get_logger("record").error(f"--out {args.out}: use a .ncr or .nwb file name")
        return 2
    stop_on_sigterm()
    endpoints = [e.strip() for e in args.connect.split(",") if e.strip()]
    get_logger("record").info(f"{endpoints} -> {args.out} (Ctrl-C stops)")
    topics = TOPICS if args.decoded else RAW_TOPICS
    stall = stall_config(args)
    with Subscriber(endpoints, topics=topics, rcvhwm=RECORD_RCVHWM, rcvbuf=RECORD_RCVBUF, stall=stall,
                    log_name="record") as sub:
        summary = record(sub, args.out, max_frames=args.frames, max_seconds=args.seconds,
                         until_end=args.until_end)
    emit_json({"record": summary.as_dict()}, args.json)
    return 0


# ---------------------------------------------------------------------------------------------- inspect
def _register_inspect(sub: Any) -> None:
    p = add_verb(sub, "inspect", "summarise a session file or folder (frames, neurons, trials, damage, holes); "
                 "exits 1 when a recording is damaged",
                 "neurocine inspect session.ncr\n"
                 "neurocine inspect /data/dynamic29156-11-10-Video-8744edeac3b4d1ce16b680916b5267ce   # reads every "
                 "trial once: tiers without responses, 8-bit rounding, trial ends, meta/neurons")
    p.add_argument("path")
    add_series_option(p)
    p.set_defaults(func=_run_inspect)


def _run_inspect(args: argparse.Namespace) -> int:
    import numpy as np

    from neurocine.streams.formats import detect_format, load_session

    info: dict[str, Any] = {"path": args.path, "format": detect_format(args.path)}
    if info["format"] == "sensorium":
        from neurocine.streams.commandline import Progress
        from neurocine.streams.formats.sensorium import SensoriumFolder

        mouse = SensoriumFolder(args.path)
        info.update(mouse.inspect(Progress("inspect", len(mouse.indices), unit="trial")))
        emit_json(info)
        return 0
    if info["format"] == "native":
        from neurocine.streams.formats.native import read_recording

        rec = read_recording(args.path)
        info["sessions"] = {sid: len(rec.frames[sid]) for sid in rec.session_ids}
        info["decoded_messages"] = {sid: len(v) for sid, v in rec.decoded.items()}
        info["damage"] = rec.report.as_dict()
        info["holes"] = {sid: {"missing": rec.report.missing[sid], "ranges": r} for sid, r in rec.report.holes.items()}
    s = load_session(args.path, series=args.series) if info.get("sessions", True) else None
    if s is not None:
        info.update(session_id=s.session_id, mouse_id=s.mouse_id, source=s.source, frames=s.n_frames,
                    neurons=s.n_neurons, frame_rate=s.frame_rate, stimulus_shape=s.stimulus_shape,
                    trials=len(s.trials), tiers=sorted({t.tier for t in s.trials}),
                    nan_traces=int(np.isnan(s.traces).sum()))
    emit_json(info)
    if info.get("damage", {}).get("damaged"):
        get_logger("inspect").error(f"{args.path} is damaged (see 'damage'); intact records were salvaged")
        return 1
    return 0


# ---------------------------------------------------------------------------------------------- bench
def _register_bench(sub: Any, bench_plugins: list[Callable[[Any], None]]) -> None:
    p = add_verb(sub, "bench", "benchmarks (JSON out): transport, rig, encoder, ...",
                 "neurocine bench transport --json out/transport.json")
    bench_sub = p.add_subparsers(dest="bench", metavar="WHAT", required=True)
    from neurocine.streams import bench_memory, bench_transport
    from neurocine.streams.synthetic import bench as bench_rig

    bench_transport.register(bench_sub)
    bench_memory.register(bench_sub)
    bench_rig.register(bench_sub)
    for register in bench_plugins:
        register(bench_sub)


# ---------------------------------------------------------------------------------------------- keys
def _register_keys(sub: Any) -> None:
    p = add_verb(sub, "keys", "make ZeroMQ CURVE certificates: server, client and the allow-list (see --keys)",
                 "neurocine keys --out /etc/neurocine/keys\n"
                 "neurocine decode --keys /etc/neurocine/keys --connect tcp://rig:5555 --bind tcp://0.0.0.0:5556")
    p.add_argument("--out", required=True, help="folder to create the keys in (refuses to overwrite keys)")
    p.set_defaults(func=_run_keys)


def _run_keys(args: argparse.Namespace) -> int:
    from neurocine.streams.security import AUTHORIZED, make_keys

    made = make_keys(args.out)
    emit_json({"keys": {"folder": str(Path(args.out).resolve()), **made,
                        "authorized": str(Path(args.out, AUTHORIZED).resolve())}})
    return 0


#: Verbs (and benches) that bind or connect ZeroMQ sockets: they take --keys and --insecure.
NETWORK_VERBS = ("replay", "record", "bridge", "rig", "decode", "demo", "view")
NETWORK_BENCHES = ("transport", "latency", "fuzz", "soak")


def _add_security_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keys", metavar="DIR", default=None,
                        help="CURVE key folder (`neurocine keys`): encrypt every stream and accept only "
                        "allow-listed clients (default: $NEUROCINE_KEYS; none = plaintext)")
    parser.add_argument("--insecure", action="store_true",
                        help="allow binding a non-loopback address without keys (plaintext on the network)")


def _security_parsers(sub: Any) -> list[argparse.ArgumentParser]:
    found = [sub.choices[v] for v in NETWORK_VERBS if v in sub.choices]
    bench = sub.choices.get("bench")
    if bench is not None:
        for action in bench._actions:
            if isinstance(action, argparse._SubParsersAction):
                found += [action.choices[b] for b in NETWORK_BENCHES if b in action.choices]
    return found


# ---------------------------------------------------------------------------------------------- main
def _builtin_registrations() -> list[Callable[[Any], None]]:
    from neurocine.streams import bridge

    regs: list[Callable[[Any], None]] = [_register_replay, _register_record, _register_inspect, bridge.register,
                                         _register_keys]
    try:
        from neurocine.streams.synthetic import cli as synthetic_cli
    except ImportError:  # pragma: no cover - the package always ships it
        return regs
    regs += [synthetic_cli.register_simulate, synthetic_cli.register_rig]
    return regs


def _plugins(group: str) -> list[Callable[[Any], None]]:
    """Registration functions from installed entry points (the decoder's verbs and benches)."""
    found: list[Callable[[Any], None]] = []
    for ep in sorted(metadata.entry_points(group=group), key=lambda e: e.name):
        try:
            found.append(ep.load())
        except ImportError as e:
            found.append(_unavailable(ep.name, e))
    return found


def _unavailable(name: str, err: ImportError) -> Callable[[Any], None]:
    def register(sub: Any) -> None:
        p = sub.add_parser(name, help=f"(unavailable: {err.name or err} is not installed)")
        p.set_defaults(func=lambda args: _fail(f"{name}: needs {err.name or err}; "
                                                "install the matching extra, e.g. pip install 'neurocine[all]'"))

    return register


def _fail(message: str) -> int:
    get_logger("cli").error(message)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neurocine",
        description="Real-time decoding of mouse visual cortex activity into the movie the mouse sees.",
        epilog="example:\n  neurocine replay --speed 1 &\n  neurocine record --out s.ncr --seconds 10",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from neurocine import __version__

    parser.add_argument("--version", action="version", version=f"neurocine {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for register in _builtin_registrations() + _plugins("neurocine.verbs"):
        register(sub)
    _register_bench(sub, _plugins("neurocine.benches"))
    for p in _security_parsers(sub):
        _add_security_options(p)
    add_log_level(parser, top=True)
    for p in _all_verb_parsers(sub):
        add_log_level(p)
    return parser


def _all_verb_parsers(sub: Any) -> list[argparse.ArgumentParser]:
    """Every verb's parser, the bench's nested ones included."""
    out = []
    for p in dict.fromkeys(sub.choices.values()):
        nested = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        out.extend(q for a in nested for q in dict.fromkeys(a.choices.values()))
        out.append(p)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        configure_logging(args.log_level)
    except ValueError as e:
        parser.error(str(e))
    from neurocine.streams.formats import FormatError
    from neurocine.streams.session import SessionError
    from neurocine.streams.transport import TransportError

    try:
        if hasattr(args, "keys"):
            from neurocine.streams.security import configure

            configure(args.keys, args.insecure)
        return int(args.func(args) or 0)
    except (FormatError, SessionError, TransportError, ValueError) as e:
        get_logger(args.verb).error(str(e))
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
