"""neurocine: decode the movie a mouse is watching from the activity of its visual cortex, live.

The repository root is this package's folder (``pyproject.toml`` maps ``neurocine`` to it), so the source
folders keep their names at the root and import as ``neurocine.streams`` (the rig's light side: wire protocol,
transport, files) and ``neurocine.decoder`` (models, reconstruction, the decode service, the viewer). This module
imports nothing heavy: a rig imports ``neurocine.streams`` without torch or onnxruntime.
"""

__version__ = "0.2.0"
__all__ = ["__version__"]
