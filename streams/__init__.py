"""neurocine.streams: move and store calcium-trace recordings (wire protocol, ZeroMQ transport, files).

Needs only numpy, pyzmq and msgpack, so that a rig machine installs it light; it never imports torch
or onnxruntime.
"""

if __name__ != "neurocine.streams":  # the repository root on sys.path would otherwise import it a second time
    raise ImportError(f"this folder is the package neurocine.streams: import neurocine.streams, not {__name__}")

from neurocine.streams.protocol import BEHAVIOUR_CHANNELS
from neurocine.streams.session import Session, SessionError, Trial

__all__ = ["BEHAVIOUR_CHANNELS", "Session", "SessionError", "Trial"]
