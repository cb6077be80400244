"""neurocine.streams: move and store calcium-trace recordings (wire protocol, ZeroMQ transport, files).

Needs only numpy, pyzmq and msgpack, so that a rig machine installs it light; it never imports torch
or onnxruntime.
"""

from streams.protocol import BEHAVIOUR_CHANNELS
from streams.session import Session, SessionError, Trial

__all__ = ["BEHAVIOUR_CHANNELS", "Session", "SessionError", "Trial"]
__version__ = "0.1.0"
