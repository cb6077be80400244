"""`neurocine simulate` (write a synthetic dataset) and `neurocine rig --synthetic` (live synthetic rig)."""

from __future__ import annotations

import argparse
from typing import Any

from neurocine.streams.commandline import get_logger

log = get_logger("rig")

SIMULATE_EXAMPLE = """\
neurocine simulate --out data/synthetic-0 --neurons 1000 --minutes 60
neurocine simulate --out data/new-movies --movie-seed 7 --trials 40 --format native"""
RIG_EXAMPLE = """\
neurocine rig --synthetic --neurons 8000 --bind tcp://127.0.0.1:5555
neurocine rig --synthetic --seconds 30   # then, elsewhere: neurocine record --out s.ncr
neurocine rig --synthetic --control tcp://127.0.0.1:5557   # steerable: see streams/control.py"""


def _add(sub: Any, name: str, help: str, example: str, description: str) -> argparse.ArgumentParser:
    from neurocine.streams.commandline import add_verb

    return add_verb(sub, name, help, example, description)


def _mouse_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--neurons", type=int, default=1000, metavar="N", help="number of neurons (default 1000)")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="which mouse (default 0, the built-in mouse)")
    p.add_argument("--movie-seed", type=int, default=0, metavar="S2",
                   help="which movies (and behaviour, noise); a new seed shows the same mouse new movies")


def register_simulate(subparsers: Any) -> None:
    p = _add(subparsers, "simulate", "write a synthetic mouse dataset (Sensorium layout by default)",
             SIMULATE_EXAMPLE,
             "Simulate the synthetic mouse watching naturalistic movies and write the recording: 300-frame "
             "trials; tiers train, oracle and final_test_main (held-out movies shown --repeats times each). "
             "The mouse's parameters are saved with the data (OUT/meta/mouse/ for Sensorium folders, "
             "OUT.mouse/ otherwise) so neurocine.decoder.encoder.oracle can rebuild the noise-free model.")
    p.add_argument("--out", required=True, help="output folder (sensorium) or file stem (nwb, native)")
    _mouse_args(p)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--minutes", type=float, help="recorded minutes (default 60)")
    size.add_argument("--trials", type=int, metavar="K", help="number of trials")
    p.add_argument("--repeats", type=int, default=10, help="repeats of each oracle/test movie (default 10)")
    p.add_argument("--format", choices=("sensorium", "nwb", "native"), default="sensorium")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run_simulate)


def run_simulate(args: argparse.Namespace) -> int:
    import json

    from neurocine.streams.synthetic.simulate import simulate_dataset

    path = simulate_dataset(args.out, n_neurons=args.neurons, n_trials=args.trials, minutes=args.minutes,
                            seed=args.seed, movie_seed=args.movie_seed, fmt=args.format,
                            repeats=args.repeats, overwrite=args.overwrite, progress=not args.quiet)
    print(json.dumps({"out": str(path), "format": args.format, "seed": args.seed,
                      "movie_seed": args.movie_seed, "neurons": args.neurons}))
    return 0


def register_rig(subparsers: Any) -> None:
    from neurocine.streams.commandline import DEFAULT_PUB

    p = _add(subparsers, "rig", "live synthetic rig: publish the simulated mouse in real time", RIG_EXAMPLE,
             "Publish frames at 30 Hz on absolute deadlines, generated on the fly: deconvolved traces, "
             "behaviour and the true stimulus frame (held-out test movies). Runs until Ctrl-C unless "
             "--frames or --seconds is given.")
    p.add_argument("--synthetic", action="store_true", help="simulate the mouse (the only source so far)")
    _mouse_args(p)
    p.add_argument("--bind", default=DEFAULT_PUB, help=f"ZeroMQ endpoint to publish on (default {DEFAULT_PUB})")
    p.add_argument("--wait-subscribers", type=int, default=0, metavar="K",
                   help="wait for K subscribers before the first frame (default: start at once)")
    p.add_argument("--control", metavar="ENDPOINT",
                   help="accept commands here (ZeroMQ REP, JSON): {\"cmd\": \"movie\", \"k\": K}, "
                        "{\"cmd\": \"target\", \"name\": \"bar\"|\"checker\"}, {\"cmd\": \"grey\"}, "
                        "{\"cmd\": \"status\"}; the reply says which frame showed the change and when")
    p.add_argument("--speed", type=float, default=1.0, metavar="X",
                   help="publish X times faster than real time (default 1: 30 Hz); the frames' times still say "
                        "30 Hz, so a recording of it is a normal one made in 1/X of the time (tests, calibration "
                        "dry runs)")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--frames", type=int, metavar="N", help="stop after N frames")
    stop.add_argument("--seconds", type=float, metavar="S", help="stop after S seconds of recording (at 30 Hz)")
    p.set_defaults(func=run_rig_verb)


def run_rig_verb(args: argparse.Namespace) -> int:

    if not args.synthetic:
        log.error("only the synthetic rig exists so far; pass --synthetic")
        return 2
    from neurocine.streams.commandline import stop_on_sigterm
    from neurocine.streams.synthetic.rig import run_rig

    stop_on_sigterm()
    frames = args.frames
    if args.seconds is not None:
        if args.seconds < 0:
            raise ValueError(f"--seconds must be >= 0, got {args.seconds}")
        frames = round(args.seconds * 30.0)
    if not args.speed > 0:
        raise ValueError(f"--speed must be > 0, got {args.speed}")
    run_rig(args.bind, n_neurons=args.neurons, seed=args.seed, movie_seed=args.movie_seed, max_frames=frames,
            wait_subscribers=args.wait_subscribers, control=args.control, speed=args.speed)
    return 0
