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

#: Trace series chosen without --series, in order: deconvolved activity (what the encoders predict; suite2p's
#: "Deconvolved", Allen's "event_detection"), then dF/F (a DfOverF container, or such a name); never neuropil.
_DECONVOLVED_WORDS = ("deconv", "spike", "event")
_DFF_WORDS = ("dff", "df_f", "dfof", "deltaf", "dfoverf")
_NEUROPIL_WORDS = ("neuropil", "fneu")


def _norm(name: str) -> str:
    """'Running Speed' / 'running-speed' -> 'running_speed', for matching names by convention."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _find_module(nwbfile: Any, names: tuple[str, ...]) -> Any:
    for key, module in nwbfile.processing.items():
        if _norm(key) in names:
            return module
    return None


def _shape(obj: Any) -> tuple[int, ...] | None:
    data = getattr(obj, "data", None)
    shape = getattr(data, "shape", None)
    return None if shape is None else tuple(int(d) for d in shape)


def describe_holdings(nwbfile: Any) -> str:
    """What a file holds, for an error: every time series (path, type, shape), at most 30."""
    from pynwb import TimeSeries

    found: list[str] = []

    def visit(where: str, items: Any) -> None:
        for name, item in items.items():
            if isinstance(item, TimeSeries):
                found.append(f"{where}/{name} ({type(item).__name__} {_shape(item)})")
            for child in getattr(item, "children", ()):
                if isinstance(child, TimeSeries):
                    found.append(f"{where}/{name}/{child.name} ({type(child).__name__} {_shape(child)})")

    for key, module in nwbfile.processing.items():
        visit(f"processing/{key}", module.data_interfaces)
    visit("acquisition", nwbfile.acquisition)
    visit("stimulus", nwbfile.stimulus)
    visit("stimulus_template", nwbfile.stimulus_template)
    if not found:
        return "no time series at all"
    more = f", and {len(found) - 30} more" if len(found) > 30 else ""
    return "; ".join(found[:30]) + more


def trace_candidates(ophys: Any) -> list[tuple[str, Any, str]]:
    """(name, series, container type) of every RoiResponseSeries in the ophys module: directly in it, or in a
    Fluorescence / DfOverF container ('Deconvolved/plane0', suite2p's way)."""
    from pynwb.ophys import DfOverF, Fluorescence, RoiResponseSeries

    found: list[tuple[str, Any, str]] = []
    for name, item in ophys.data_interfaces.items():
        if isinstance(item, RoiResponseSeries):
            found.append((name, item, ""))
        elif isinstance(item, (Fluorescence, DfOverF)):
            found.extend((f"{name}/{sub}", s, type(item).__name__) for sub, s in item.roi_response_series.items())
    return found


def _listing(found: list[tuple[str, Any, str]]) -> str:
    return ", ".join(f"'{n}' {_shape(s)}" for n, s, _ in found)


def _pick_roi_response_series(ophys: Any, path: Path, series: str | None = None, nwbfile: Any = None) -> Any:
    """The RoiResponseSeries to replay: the one named by `series` (its full name 'Container/series', its own
    name, or its container's when that holds one series), else the deconvolved one, else the dF/F one, else the
    only one; several at the chosen rank, or none, is an error listing the candidates and their shapes."""
    found = trace_candidates(ophys)
    if not found:
        holds = describe_holdings(nwbfile) if nwbfile is not None else sorted(ophys.data_interfaces)
        raise FormatError(f"{path}: no RoiResponseSeries in the ophys module (the file holds: {holds})")
    if series is not None:
        want = _norm(series)
        for rank in (lambda n: _norm(n), lambda n: _norm(n.split("/")[-1]), lambda n: _norm(n.split("/")[0])):
            hits = [f for f in found if rank(f[0]) == want]
            if len(hits) == 1:
                return hits[0][1]
            if len(hits) > 1:
                raise FormatError(f"{path}: --series {series!r} names {len(hits)} series ({_listing(hits)}); "
                                  "give the full name, e.g. --series " + repr(hits[0][0]))
        raise FormatError(f"{path}: no trace series {series!r}; the ophys module holds {_listing(found)}")
    usable = [f for f in found if not any(w in _norm(f[0]) for w in _NEUROPIL_WORDS)]
    ranks = (
        ("deconvolved", [f for f in usable if any(w in _norm(f[0]) for w in _DECONVOLVED_WORDS)]),
        ("dF/F", [f for f in usable if f[2] == "DfOverF" or any(w in _norm(f[0]) for w in _DFF_WORDS)]),
        ("trace", usable),
    )
    for kind, hits in ranks:
        if len(hits) == 1:
            if len(found) > 1:
                warnings.warn(f"{path}: {len(found)} RoiResponseSeries ({_listing(found)}); using the {kind} one, "
                              f"'{hits[0][0]}' (--series chooses another)", stacklevel=4)
            elif kind == "trace":
                warnings.warn(f"{path}: its one trace series '{hits[0][0]}' is not named as deconvolved or dF/F "
                              "activity; replaying it as it is", stacklevel=4)
            return hits[0][1]
        if len(hits) > 1:
            raise FormatError(f"{path}: {len(hits)} candidate {kind} series ({_listing(hits)}) and no --series to "
                              f"choose; e.g. --series {hits[0][0]!r}")
    raise FormatError(f"{path}: only neuropil traces ({_listing(found)}); name one with --series to replay it")


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
