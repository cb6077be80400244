"""Where a Sensorium mouse's files live: a folder on disk, or the release's .zip read in place.

Why a store: the release ships one .zip per mouse (``<mouse>.zip`` holding ``<mouse>/data/...`` and
``<mouse>/meta/...``; some copies hold ``data/`` and ``meta/`` at the top). A folder's arrays are memory-mapped
(a trial costs only the pages read); a zip's members are read one at a time, decompressed as they stream, so
a replay of a zip holds one trial in memory as well. Both stores answer the same few questions (which trial
files exist, an array's header, an array) and turn every fault into a FormatError naming the file.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from pathlib import Path
from typing import Protocol

import numpy as np

from neurocine.streams.formats import FormatError

#: Folders the zip tools of other systems add beside a mouse's folder; never part of the data.
_ZIP_NOISE = ("__MACOSX/",)


@dataclasses.dataclass(frozen=True)
class NpyHeader:
    """What an .npy file's header says, and where: enough to check a trial without reading its data."""

    where: str
    shape: tuple[int, ...]
    dtype: np.dtype


class Store(Protocol):
    """A mouse's files, by path relative to the mouse folder ('data/responses/3.npy')."""

    #: the folder, or the .zip file, for messages
    location: str
    #: the mouse folder's name (the mouse id, see `mouse_id_of`)
    folder_name: str
    #: True when `load(mmap=True)` maps the file instead of reading it (random access is cheap)
    random_access: bool

    def where(self, rel: str) -> str: ...
    def is_dir(self, rel: str) -> bool: ...
    def exists(self, rel: str) -> bool: ...
    def npy_names(self, rel_dir: str) -> list[str]: ...
    def subdirs(self, rel_dir: str) -> list[str]: ...
    def header(self, rel: str) -> NpyHeader: ...
    def load(self, rel: str, *, mmap: bool = True) -> np.ndarray: ...


def open_store(path: str | Path) -> Store:
    """The store at `path`: a folder with data/responses/, or a .zip holding one."""
    p = Path(path)
    if p.is_dir():
        return FolderStore(p)
    if p.is_file() and p.suffix.lower() == ".zip":
        return ZipStore(p)
    raise FormatError(f"{p}: no such folder (expected a Sensorium 2023 mouse folder or its .zip)")


def unzip_command(path: str | Path) -> str:
    """The command that unpacks a release .zip next to itself (Python's own, so it works everywhere)."""
    p = Path(path)
    return f"python -m zipfile -e {p} {p.parent}"


# ---------------------------------------------------------------------------------------------- headers
def _read_header(fh, where: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header bytes) of an open .npy stream; FormatError when it is not one."""
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unknown .npy version {version}")
    except Exception as exc:
        raise FormatError(f"{where}: not a readable .npy file (truncated or corrupt?): {exc}") from exc
    if dtype.hasobject:
        raise FormatError(f"{where}: holds Python objects (a pickle); refusing to unpickle a data file")
    if fortran and len(shape) > 1:
        raise FormatError(f"{where}: stored in Fortran order; expected C order as numpy.save writes it")
    return tuple(int(d) for d in shape), dtype, int(fh.tell())


def _expected_bytes(shape: tuple[int, ...], dtype: np.dtype, header_bytes: int) -> int:
    return header_bytes + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


# ---------------------------------------------------------------------------------------------- a folder
class FolderStore:
    """A mouse folder on disk; arrays are memory-mapped."""

    random_access = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)
        self.folder_name = Path(os.path.abspath(root)).name

    def where(self, rel: str) -> str:
        return str(self.root / rel)

    def is_dir(self, rel: str) -> bool:
        return (self.root / rel).is_dir()

    def exists(self, rel: str) -> bool:
        return (self.root / rel).exists()

    def npy_names(self, rel_dir: str) -> list[str]:
        return sorted(p.name for p in (self.root / rel_dir).glob("*.npy"))

    def subdirs(self, rel_dir: str) -> list[str]:
        base = self.root / rel_dir
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []

    def header(self, rel: str) -> NpyHeader:
        path = self.root / rel
        if not path.is_file():
            raise FormatError(f"{path}: missing file")
        with open(path, "rb") as fh:
            shape, dtype, head = _read_header(fh, str(path))
        size, want = path.stat().st_size, _expected_bytes(shape, dtype, head)
        if size < want:
            raise FormatError(f"{path}: not a readable .npy file (truncated or corrupt?): {size} bytes, its header "
                              f"promises {want}")
        return NpyHeader(str(path), shape, dtype)

    def load(self, rel: str, *, mmap: bool = True) -> np.ndarray:
        from neurocine.streams.formats.sensorium.layout import _load_npy

        return _load_npy(self.root / rel, mmap=mmap)


# ---------------------------------------------------------------------------------------------- a zip
class ZipStore:
    """A release .zip read in place: members are decompressed as they are read, one array at a time."""

    random_access = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = str(path)
        try:
            self._zip = zipfile.ZipFile(path)
            names = [n for n in self._zip.namelist() if not n.startswith(_ZIP_NOISE)]
        except (zipfile.BadZipFile, OSError) as exc:
            raise FormatError(f"{path}: not a readable .zip file (truncated or corrupt?): {exc}") from exc
        self._names = set(names)
        self._prefix = self._find_prefix(names)
        self.folder_name = self._prefix.rstrip("/") or path.stem

    def _find_prefix(self, names: list[str]) -> str:
        """'' when data/ is at the top, '<mouse>/' when the zip holds one mouse folder (the release's way)."""
        if any(n.startswith("data/responses/") for n in names):
            return ""
        tops = {n.split("/", 1)[0] + "/" for n in names if "/" in n}
        found = sorted(t for t in tops if any(n.startswith(t + "data/responses/") for n in names))
        if len(found) == 1:
            return found[0]
        if not found:
            raise FormatError(f"{self.path}: a .zip, but no data/responses/ inside (not a Sensorium mouse); "
                              f"it holds {sorted(tops)[:5] or sorted(names)[:5]}")
        raise FormatError(f"{self.path}: holds several mouse folders {found}; unpack it and name one: "
                          f"{unzip_command(self.path)}")

    def where(self, rel: str) -> str:
        return f"{self.path}:{self._prefix}{rel}"

    def is_dir(self, rel: str) -> bool:
        want = self._prefix + rel.rstrip("/") + "/"
        return any(n.startswith(want) for n in self._names)

    def exists(self, rel: str) -> bool:
        return self._prefix + rel in self._names or self.is_dir(rel)

    def npy_names(self, rel_dir: str) -> list[str]:
        want = self._prefix + rel_dir.rstrip("/") + "/"
        return sorted(n[len(want):] for n in self._names
                      if n.startswith(want) and n.endswith(".npy") and "/" not in n[len(want):])

    def subdirs(self, rel_dir: str) -> list[str]:
        want = self._prefix + rel_dir.rstrip("/") + "/"
        return sorted({n[len(want):].split("/", 1)[0] for n in self._names
                       if n.startswith(want) and "/" in n[len(want):]})

    def _member(self, rel: str) -> zipfile.ZipInfo:
        try:
            return self._zip.getinfo(self._prefix + rel)
        except KeyError:
            raise FormatError(f"{self.where(rel)}: missing file") from None

    def header(self, rel: str) -> NpyHeader:
        info = self._member(rel)
        try:
            with self._zip.open(info) as fh:
                shape, dtype, head = _read_header(fh, self.where(rel))
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise FormatError(f"{self.where(rel)}: not readable from the .zip (truncated or corrupt?): {exc}") from exc
        want = _expected_bytes(shape, dtype, head)
        if info.file_size < want:
            raise FormatError(f"{self.where(rel)}: not a readable .npy file (truncated or corrupt?): "
                              f"{info.file_size} bytes, its header promises {want}")
        return NpyHeader(self.where(rel), shape, dtype)

    def load(self, rel: str, *, mmap: bool = True) -> np.ndarray:
        info = self._member(rel)
        try:
            with self._zip.open(info) as fh:
                arr = np.lib.format.read_array(fh, allow_pickle=False)
        except Exception as exc:  # zlib, CRC (BadZipFile), short reads (ValueError), pickles refused
            raise FormatError(f"{self.where(rel)}: not readable from the .zip (truncated or corrupt?): "
                              f"{type(exc).__name__}: {exc}") from exc
        return arr
