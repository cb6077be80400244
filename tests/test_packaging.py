"""One import name: the wheel installs `neurocine` (streams/ and decoder/ inside it) and nothing else."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

from tests.conftest import REPO


def test_package_list_matches_the_folders() -> None:
    """pyproject.toml lists the packages by hand (the root is mapped to `neurocine`); a new sub-package
    folder that is not listed would be missing from every non-editable install."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {"neurocine"} | {
        "neurocine." + ".".join(p.parent.relative_to(REPO).parts)
        for top in ("streams", "decoder") for p in (REPO / top).rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert listed == on_disk


def test_source_folders_refuse_their_bare_names() -> None:
    """From the repository root the folders are on sys.path; imported bare they would be a second copy."""
    for name in ("streams", "decoder"):
        r = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=REPO, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 1
        assert f"import neurocine.{name}, not {name}" in r.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(out), str(REPO)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (found,) = out.glob("neurocine-*.whl")
    return found


def test_wheel_holds_one_top_level_package_with_its_data(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"neurocine"}
    for needed in ("neurocine/__init__.py", "neurocine/__main__.py", "neurocine/streams/protocol.py",
                   "neurocine/streams/data/example.ncr", "neurocine/decoder/models/default/gradient.onnx",
                   "neurocine/decoder/models/default/inverse.onnx"):
        assert needed in names, needed
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not [n for n in names if n.startswith(("neurocine/tests/", "neurocine/tools/", "neurocine/.venv"))]


def test_installed_wheel_imports_as_neurocine_only(wheel: Path, tmp_path: Path) -> None:
    """Unpacked first on sys.path, from a folder that is not the checkout: a fresh environment's view."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import sys, importlib.util as u\n"
        "import neurocine, neurocine.streams, neurocine.streams.publish\n"
        f"assert neurocine.__file__.startswith({str(site)!r}), neurocine.__file__\n"
        "assert u.find_spec('streams') is None and u.find_spec('decoder') is None\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxruntime', 'ray'))\n"
        "assert not heavy, heavy\n"
        "import neurocine.decoder\n"
        "print(neurocine.__version__)\n"
    )
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    from neurocine import __version__

    assert r.stdout.strip() == __version__
    v = subprocess.run([sys.executable, "-m", "neurocine", "--version"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert v.returncode == 0 and v.stdout.strip() == f"neurocine {__version__}", v.stderr
