"""Name-guessing for NWB files written by other tools, where module and series names vary.

Which processing module is the ophys one, which RoiResponseSeries holds the traces to replay, and which plain
TimeSeries hold running speed, pupil size and pupil centre are found by normalised name, then by container
convention. These guesses live apart from the reader so the conventions are in one place and the reader keeps
only the reading.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

from neurocine.streams.formats import FormatError

_PREFERRED_TRACE_WORDS = ("deconv", "spike", "event")


def _norm(name: str) -> str:
    """'Running Speed' / 'running-speed' -> 'running_speed', for matching names by convention."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _find_module(nwbfile: Any, names: tuple[str, ...]) -> Any:
    for key, module in nwbfile.processing.items():
        if _norm(key) in names:
            return module
    return None


def _pick_roi_response_series(ophys: Any, path: Path) -> Any:
    """The RoiResponseSeries to replay: deconvolved/spikes/events if several, else the first."""
    from pynwb.ophys import DfOverF, Fluorescence, RoiResponseSeries

    found: list[tuple[str, Any]] = []
    for name, item in ophys.data_interfaces.items():
        if isinstance(item, RoiResponseSeries):
            found.append((name, item))
        elif isinstance(item, (Fluorescence, DfOverF)):
            found.extend((f"{name}/{sub}", s) for sub, s in item.roi_response_series.items())
    if not found:
        raise FormatError(
            f"{path}: no RoiResponseSeries in the ophys module (it holds: {sorted(ophys.data_interfaces)})"
        )
    chosen = next((f for f in found if any(w in _norm(f[0]) for w in _PREFERRED_TRACE_WORDS)), found[0])
    if len(found) > 1:
        warnings.warn(
            f"{path}: {len(found)} RoiResponseSeries ({', '.join(n for n, _ in found)}); using '{chosen[0]}'",
            stacklevel=4,
        )
    return chosen[1]


def _behaviour_series(nwbfile: Any, ophys: Any) -> list[tuple[str, str, Any]]:
    """(path, container type, series) of every plain TimeSeries that could hold behaviour.

    Behaviour modules come first, then the other processing modules, then acquisition; traces,
    images and the ophys module are skipped.
    """
    from pynwb import TimeSeries
    from pynwb.image import ImageSeries
    from pynwb.ophys import RoiResponseSeries

    def usable(obj: Any) -> bool:
        return isinstance(obj, TimeSeries) and not isinstance(obj, (RoiResponseSeries, ImageSeries))

    groups: list[tuple[str, Any]] = []
    modules = [(k, m) for k, m in nwbfile.processing.items() if m is not ophys]
    modules.sort(key=lambda km: _norm(km[0]) not in ("behavior", "behaviour"))
    groups.extend((f"processing/{k}", m.data_interfaces) for k, m in modules)
    groups.append(("acquisition", nwbfile.acquisition))

    out: list[tuple[str, str, Any]] = []
    for where, items in groups:
        for name, item in items.items():
            if usable(item):
                out.append((f"{where}/{name}", "", item))
                continue
            for child in getattr(item, "children", ()):
                if usable(child):
                    out.append((f"{where}/{name}/{child.name}", type(item).__name__, child))
    return out


def _is_running(name: str) -> bool:
    n = _norm(name)
    return "running" in n or "treadmill" in n or "wheel" in n or n in ("speed", "run_speed", "velocity")


def _is_pupil_size(name: str) -> bool:
    n = _norm(name)
    return "pupil" in n and any(k in n for k in ("size", "area", "diameter", "dilation", "radius"))


def _is_pupil_centre(name: str) -> bool:
    n = _norm(name)
    return "pupil" in n and any(k in n for k in ("center", "centre", "position", "pos", "xy", "location"))


#: channel -> (name matcher, container type that holds it by convention, columns)
_BEHAVIOUR_RULES = {
    "running_speed": (_is_running, "BehavioralTimeSeries", 1),
    "pupil_dilation": (_is_pupil_size, "PupilTracking", 1),
    "pupil_center": (_is_pupil_centre, "EyeTracking", 2),
}
