"""Session files: pick the reader or writer from the path.

- a folder in the Sensorium 2023 per-mouse layout (``data/responses/*.npy``), or the release's ``.zip`` of one
                                                                       -> neurocine.streams.formats.sensorium
- ``*.nwb``                                                            -> neurocine.streams.formats.nwb (needs pynwb)
- ``*.ncr`` (neurocine recording, the recorder's own append-only format) -> neurocine.streams.formats.native

`open_session` is what a replay reads: a Sensorium mouse streamed one trial at a time (memory bounded by a
trial, whatever the folder's size); `load_session` holds every chosen frame in memory (what reconstruction and
fitting need).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from neurocine.streams.session import Session, StreamedSession


class FormatError(ValueError):
    """A file or folder could not be read as a session; the message names the path and the fault."""


def detect_format(path: str | Path) -> str:
    """'sensorium', 'nwb' or 'native', from what is at `path` (or its suffix when it does not exist yet)."""
    p = Path(path)
    if p.is_dir():
        if (p / "data" / "responses").is_dir():
            return "sensorium"
        raise FormatError(f"{p}: a folder, but not in the Sensorium layout (no data/responses/)")
    suffix = p.suffix.lower()
    if suffix == ".zip":
        return "sensorium"
    if suffix == ".nwb":
        return "nwb"
    if suffix == ".ncr":
        return "native"
    raise FormatError(f"{p}: unknown session format (expected a Sensorium folder or .zip, .nwb or .ncr)")


def open_session(
    path: str | Path, trials: Sequence[int] | None = None, tier: str | None = None, series: str | None = None
) -> Session | StreamedSession:
    """A session to replay: a Sensorium mouse as a StreamedSession (read one trial at a time), other formats
    as a Session. `trials`/`tier` select trials (played back to back); `series` names an NWB file's trace
    series (ignored elsewhere)."""
    fmt = detect_format(path)
    if not Path(path).exists():
        raise FormatError(f"{path}: no such file or folder")
    if fmt == "sensorium":
        from neurocine.streams.formats.sensorium import open_sensorium

        return open_sensorium(path, trials=trials, tier=tier)
    if fmt == "nwb":
        from neurocine.streams.formats.nwb import read_nwb

        session = read_nwb(path, series=series)
    else:
        from neurocine.streams.formats.native import read_native

        session = read_native(path)
    if trials is not None or tier is not None:
        session = session.select_trials(trials, tier)
    return session


def load_session(
    path: str | Path, trials: Sequence[int] | None = None, tier: str | None = None, series: str | None = None
) -> Session:
    """Read a session from any supported format, every chosen frame in memory (see open_session)."""
    session = open_session(path, trials, tier, series)
    return session.load() if isinstance(session, StreamedSession) else session


def save_session(session: Session, path: str | Path) -> None:
    """Write a session in the format its path names (a folder path without suffix means Sensorium)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".nwb":
        from neurocine.streams.formats.nwb import write_nwb

        write_nwb(session, p)
    elif suffix == ".ncr":
        from neurocine.streams.formats.native import write_native

        write_native(session, p)
    elif suffix == "":
        from neurocine.streams.formats.sensorium import write_sensorium

        # Sensorium numbers trials 0..K-1 by file name; other sources may not, so renumber then.
        in_order = [tr.index for tr in session.trials] == list(range(len(session.trials)))
        write_sensorium(session, p, renumber=not in_order)
    else:
        raise FormatError(f"{p}: cannot tell the format to write (use a folder, .nwb or .ncr)")
