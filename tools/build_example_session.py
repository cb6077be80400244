"""Build the shipped example session streams/data/example.ncr (4 x 300 frames of the default synthetic
mouse, 1000 neurons, watching held-out movies), written as `neurocine record` writes: its session header
repeated at least once a second of frames (streams/formats/native.py), so one damaged byte loses at most a
second, never the session. Run from the repository root:

    python tools/build_example_session.py
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from neurocine.streams.formats import save_session
from neurocine.streams.synthetic import build_example_session

ROOT = Path(__file__).resolve().parents[1]
#: The example's session id since it was first built: a rebuild of the same data is the same session.
SESSION_ID = "eeef6c7175474ee2"


def main() -> int:
    out = ROOT / "streams" / "data" / "example.ncr"
    out.parent.mkdir(parents=True, exist_ok=True)
    session = dataclasses.replace(build_example_session(), session_id=SESSION_ID)
    if out.exists():
        out.unlink()
    save_session(session, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {session.n_frames} frames, "
          f"{session.n_neurons} neurons)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
