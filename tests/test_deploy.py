"""The service definitions in deploy/ only use verbs and options that exist."""

from __future__ import annotations

import re
from pathlib import Path

from neurocine.streams.cli import build_parser
from tests.conftest import REPO


def test_every_unit_calls_a_real_verb_with_real_options() -> None:
    parser = build_parser()
    verbs = next(a for a in parser._actions if a.dest == "verb").choices
    units = sorted((REPO / "deploy" / "systemd").glob("*.service"))
    assert len(units) >= 4
    for unit in units:
        text = unit.read_text()
        calls = re.findall(r"bin/neurocine (\w+)([^\n']*)", text)
        assert calls, unit.name
        for verb, rest in calls:
            assert verb in verbs, f"{unit.name}: unknown verb {verb}"
            known = {s for a in verbs[verb]._actions for s in a.option_strings}
            for flag in re.findall(r"(--[\w-]+)", rest):
                assert flag in known, f"{unit.name}: {verb} has no option {flag}"
    env = (REPO / "deploy" / "neurocine.env.example").read_text()
    for var in set(re.findall(r"\$\{?(NEUROCINE_\w+)", "".join(u.read_text() for u in units))):
        assert f"{var}=" in env, f"{var} is used by a unit but not in neurocine.env.example"


def test_deploy_readme_names_every_unit() -> None:
    readme = (REPO / "deploy" / "README.md").read_text()
    for unit in (REPO / "deploy" / "systemd").glob("*.service"):
        assert unit.name in readme or unit.name.replace("@", "@.") in readme or unit.stem.split("@")[0] in readme
    assert Path(REPO / "deploy" / "neurocine.env.example").is_file()


def test_ray_scripts_call_real_verbs_with_real_options() -> None:
    """deploy/ray: every `neurocine VERB ...` (continuation lines joined) names a verb and its options."""
    parser = build_parser()
    verbs = next(a for a in parser._actions if a.dest == "verb").choices
    folder = REPO / "deploy" / "ray"
    scripts = sorted(p for p in folder.iterdir() if p.suffix in (".sh", ".sbatch"))
    readme = (folder / "README.md").read_text()
    assert len(scripts) >= 3
    seen = set()
    for script in scripts:
        assert script.name in readme, f"deploy/ray/README.md does not mention {script.name}"
        text = script.read_text().replace("\\\n", " ")
        for verb, rest in re.findall(r"bin/neurocine\"? (\w+)([^\n]*)", text):
            seen.add(verb)
            assert verb in verbs, f"{script.name}: unknown verb {verb}"
            known = {s for a in verbs[verb]._actions for s in a.option_strings}
            for flag in re.findall(r"\s(--[\w-]+)", rest):
                assert flag in known, f"{script.name}: {verb} has no option {flag}"
    assert "batch" in seen
    for verb, rest in re.findall(r"^neurocine (\w+)([^\n]*)", readme.replace("\\\n", " "), re.MULTILINE):
        known = {s for a in verbs[verb]._actions for s in a.option_strings}
        assert all(f in known for f in re.findall(r"\s(--[\w-]+)", rest)), f"README: {verb} {rest}"
