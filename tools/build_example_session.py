"""Build the shipped example session streams/data/example.ncr (4 x 300 frames of the default synthetic
mouse, 1000 neurons, watching held-out movies). Run from the repository root:

    python tools/build_example_session.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from neurocine.streams.formats import save_session
from neurocine.streams.synthetic import build_example_session

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    out = ROOT / "streams" / "data" / "example.ncr"
    out.parent.mkdir(parents=True, exist_ok=True)
    session = build_example_session()
    if out.exists():
        out.unlink()
    save_session(session, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {session.n_frames} frames, "
          f"{session.n_neurons} neurons)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
