"""Run `neurocine ARGS` with torch and onnxruntime made unimportable (as on a light rig install)."""

from __future__ import annotations

import importlib.abc
import sys

BLOCKED = ("torch", "onnxruntime", "onnx", "onnxscript", "ray")


class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: streams must work without it", name=name)
        return None


if __name__ == "__main__":
    sys.meta_path.insert(0, _Block())
    if sys.argv[1:2] == ["--try-import"]:  # self-check: is the module really unimportable here?
        try:
            __import__(sys.argv[2])
        except ImportError as e:
            print(e, file=sys.stderr)
            sys.exit(1)
        sys.exit(0)
    from neurocine.streams.cli import main

    code = main(sys.argv[1:])
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    if leaked:
        print(f"heavy modules imported: {leaked}", file=sys.stderr)
        sys.exit(3)
    sys.exit(code)
