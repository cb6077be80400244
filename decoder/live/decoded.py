"""The `decoded` message: what the decode service publishes for each reconstructed frame.

Framing is wire protocol v1 (docs/protocol.md, topic `decoded`); this module fixes its fields so the
service, the viewer, the recorder and the latency benchmark agree. No torch or onnxruntime here: a
viewer machine imports it light.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from neurocine.streams.protocol import Decoded, PayloadError, ProtocolError, encode_decoded
from neurocine.streams.stall import StallWatch

FRAME_SHAPE = (36, 64)
#: Why a final frame came out before its lag was up: "" not early; "end" the source session ended; "switch"
#: another session began. Nothing else is ever published: a gap's frames (never received) are not.
FLUSH_CAUSES = ("", "end", "switch")


@dataclasses.dataclass(frozen=True)
class DecodedFrame:
    """One reconstructed frame, aligned with source frame `seq` (the stimulus shown at that frame)."""

    session_id: str  # the source session (rig or replay) this frame was decoded from
    seq: int  # source frame sequence number
    t_acq_ns: int  # the source frame's acquisition time (rig clock)
    t_pub_ns: int  # when the source frame was published
    t_recv_ns: int  # when the decoder received the frame that finalised this one
    t_done_ns: int  # when the decoder published this frame
    lag: int  # frames between this frame and the newest frame the decoder had seen
    final: bool  # False for provisional frames that will still be refined
    frame: np.ndarray  # (36, 64) uint8
    trigger_seq: int = -1  # the source frame whose arrival finalised this one (seq + lag)
    trigger_t_pub_ns: int = 0  # when that frame was published: end-to-end latency starts here
    queue_ns: int = 0  # how long the trigger frame waited in the decoder before its optimiser steps
    compute_ns: int = 0  # optimiser time spent on the trigger frame
    steps: int = 0  # optimiser steps run for the trigger frame (fewer than asked = shed)
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)  # running service stats
    #: "" for a frame refined for the whole lag; "end" / "switch" for one finalised early because the source
    #: session ended or another began (its `lag` then says how many newer frames refined it)
    flushed: str = ""


def encode_decoded_frame(d: DecodedFrame) -> list[Any]:
    fields = {
        "seq": int(d.seq),
        "t_acq_ns": int(d.t_acq_ns),
        "t_pub_ns": int(d.t_pub_ns),
        "t_recv_ns": int(d.t_recv_ns),
        "t_done_ns": int(d.t_done_ns),
        "lag": int(d.lag),
        "final": bool(d.final),
        "trigger_seq": int(d.trigger_seq),
        "trigger_t_pub_ns": int(d.trigger_t_pub_ns),
        "queue_ns": int(d.queue_ns),
        "compute_ns": int(d.compute_ns),
        "steps": int(d.steps),
        "stats": d.stats,
        "flushed": str(d.flushed),
    }
    return encode_decoded(d.session_id, fields, [("frame", np.ascontiguousarray(d.frame, dtype=np.uint8))])


def _int(fields: dict[str, Any], key: str) -> int:
    v = fields.get(key)
    if not isinstance(v, int) or isinstance(v, bool):
        raise PayloadError(f"decoded message field {key!r} must be int, got {type(v).__name__}", b"decoded")
    return v


def as_decoded_frame(msg: Decoded) -> DecodedFrame:
    """Interpret a generic `decoded` message; raises ProtocolError if it is not a decoded frame."""
    frame = msg.arrays.get("frame")
    if frame is None or frame.dtype != np.uint8 or frame.ndim != 2:
        raise PayloadError("decoded message needs a 2-D uint8 array 'frame'", b"decoded")
    final = msg.fields.get("final")
    if not isinstance(final, bool):
        raise ProtocolError("decoded message field 'final' must be bool", b"decoded")
    stats = msg.fields.get("stats") or {}
    if not isinstance(stats, dict):
        raise ProtocolError("decoded message field 'stats' must be a map", b"decoded")
    flushed = msg.fields.get("flushed", "")  # absent in recordings made before it existed
    if flushed not in FLUSH_CAUSES:
        raise PayloadError(f"decoded message field 'flushed' must be one of {FLUSH_CAUSES}, got {flushed!r}",
                           b"decoded")
    return DecodedFrame(
        session_id=msg.session_id,
        seq=_int(msg.fields, "seq"),
        t_acq_ns=_int(msg.fields, "t_acq_ns"),
        t_pub_ns=_int(msg.fields, "t_pub_ns"),
        t_recv_ns=_int(msg.fields, "t_recv_ns"),
        t_done_ns=_int(msg.fields, "t_done_ns"),
        lag=_int(msg.fields, "lag"),
        final=final,
        frame=frame,
        trigger_seq=_int(msg.fields, "trigger_seq"),
        trigger_t_pub_ns=_int(msg.fields, "trigger_t_pub_ns"),
        queue_ns=_int(msg.fields, "queue_ns"),
        compute_ns=_int(msg.fields, "compute_ns"),
        steps=_int(msg.fields, "steps"),
        stats=stats,
        flushed=flushed,
    )


def follow(watch: StallWatch, d: DecodedFrame, now: float) -> None:
    """Feed a consumer's stall watch one decoded frame (any kind, before the consumer filters them).

    A decoded stream carries no session headers or ends: a new source session id starts one, and the frames the
    decoder flushes because the source ended end it, so the silence after a session is not taken for a stall."""
    if d.session_id != watch.session_id:
        watch.session(d.session_id, now)
    if d.flushed == "end":
        watch.ended(now)
    else:
        watch.frame(d.seq, now)
