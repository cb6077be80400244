"""Can this machine show the live viewer? Checked before a window is opened, so a broken Qt binding or a
missing system library gives a clear message naming the fix, instead of Qt's abort at start-up or a crash
seconds into a session.

Two faults seen in the field:
- PySide6/shiboken6 6.12.0 on Python < 3.12 drops one reference to ``None`` on every call of a C++
  method that returns void (measured: 1,000 ``QRectF.setX`` calls take ``sys.getrefcount(None)`` down
  by 1,000; 6.11.3 and 6.10.3: unchanged). On 3.11 ``None`` is not immortal, so after some thousands of
  paints its count reaches zero and the interpreter aborts ("none_dealloc: deallocating None"), 7-9 s
  into a live view. Python >= 3.12 makes ``None`` immortal, which hides it. pyproject's ``view`` extra
  excludes 6.12 there; `binding_problem` catches an environment that has it anyway.
- Qt's xcb platform plugin needs system libraries (since Qt 6.5 also libxcb-cursor0) that a minimal
  Linux install lacks; without them Qt aborts the process with its own message. `window_problem` tries
  to start Qt in a child process and, when it fails, names the missing libraries and their packages.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

#: Debian/Ubuntu packages of the shared libraries Qt's xcb plugin links (the ones minimal images lack).
DEBIAN_PACKAGES = {
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb.so.1": "libxcb1",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libX11.so.6": "libx11-6",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libEGL.so.1": "libegl1",
    "libGL.so.1": "libgl1",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libdbus-1.so.3": "libdbus-1-3",
}
#: What a desktop needs beyond a default install (the README says the same).
DESKTOP_PACKAGES = ["libxcb-cursor0", "libxcb-icccm4", "libxcb-keysyms1"]
PROBE_TIMEOUT_S = 30.0


def debian_package(soname: str) -> str:
    """The Debian package that ships `soname` (a guess from the name when it is not in the table)."""
    if soname in DEBIAN_PACKAGES:
        return DEBIAN_PACKAGES[soname]
    m = re.fullmatch(r"(lib[\w+-]+?)\.so\.(\d+)", soname)
    if not m:
        return soname
    stem, major = m.groups()
    return f"{stem.lower()}{'-' if stem[-1].isdigit() else ''}{major}"


def missing_libraries(ldd_output: str) -> list[str]:
    """Sonames that `ldd` reports as 'not found', in order, without repeats."""
    out: list[str] = []
    for line in ldd_output.splitlines():
        m = re.match(r"\s*(\S+)\s+=>\s+not found", line)
        if m and m.group(1) not in out:
            out.append(m.group(1))
    return out


def leaked_none_refs(call: Callable[[], object], n: int) -> int:
    """How many references to None `n` calls of `call` lose (0 for a sound binding)."""
    before = sys.getrefcount(None)
    for _ in range(n):
        call()
    return before - sys.getrefcount(None)


def binding_problem() -> str | None:
    """A message when the installed Qt binding leaks references to None (the 6.12.0 abort), else None."""
    if sys.version_info >= (3, 12):
        return None  # None is immortal there: a leaked decref cannot free it
    try:
        from PySide6 import QtCore, __version__
    except ImportError:
        return None  # pyqtgraph then uses another binding; nothing known against it
    rect = QtCore.QRectF(0, 0, 1, 1)
    lost = leaked_none_refs(lambda: rect.setX(0.0), 200)
    if lost < 100:
        return None
    return (f"PySide6 {__version__} on Python {sys.version_info.major}.{sys.version_info.minor} loses a reference to "
            f"None on every Qt call ({lost} in 200 calls); the viewer would abort within seconds "
            "('deallocating None'). Install a working version: pip install 'PySide6-Essentials>=6.5,<6.12' "
            "(or use Python >= 3.12).")


def _xcb_plugin_libraries() -> list[Path]:
    """Qt's xcb platform plugin and the Qt library that links the xcb system libraries."""
    try:
        import PySide6
    except ImportError:
        return []
    qt = Path(PySide6.__file__).parent / "Qt"
    return [p for p in (qt / "plugins" / "platforms" / "libqxcb.so", qt / "lib" / "libQt6XcbQpa.so.6") if p.is_file()]


def _ldd_missing() -> list[str]:
    missing: list[str] = []
    for lib in _xcb_plugin_libraries():
        try:
            r = subprocess.run(["ldd", str(lib)], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return missing
        missing += [s for s in missing_libraries(r.stdout) if s not in missing]
    return missing


def window_problem(platform: str | None = None) -> str | None:
    """Start Qt in a child process on this display; a message naming the cause and the fix if it cannot."""
    env = dict(os.environ)
    if platform:
        env["QT_QPA_PLATFORM"] = platform
    probe = "from PySide6.QtWidgets import QApplication; app = QApplication([]); print(app.platformName())"
    try:
        r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                           timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"Qt did not start a window within {PROBE_TIMEOUT_S:g} s on DISPLAY={env.get('DISPLAY')!r}"
    if r.returncode == 0:
        return None
    qt_said = " | ".join(line.strip() for line in r.stderr.strip().splitlines()[-4:])
    where = f"DISPLAY={env.get('DISPLAY')!r}" + (f", QT_QPA_PLATFORM={env['QT_QPA_PLATFORM']}"
                                                 if env.get("QT_QPA_PLATFORM") else "")
    msg = f"Qt cannot open a window ({where}; exit {r.returncode})."
    missing = _ldd_missing()
    if missing:
        pkgs = sorted({debian_package(s) for s in missing})
        msg += (f" Missing system libraries: {', '.join(missing)}. Install them, e.g. "
                f"`sudo apt-get install {' '.join(pkgs)}`.")
    elif "xcb" in r.stderr:
        msg += f" A desktop needs: `sudo apt-get install {' '.join(DESKTOP_PACKAGES)}`."
    return msg + f" Qt said: {qt_said}"
