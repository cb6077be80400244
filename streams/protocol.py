"""Wire protocol v1: how sessions, frames and stream events travel over ZeroMQ (see docs/protocol.md).

Every message is multipart: ``[topic, msgpack header, raw payload frame, ...]``. The header is a map
that always holds ``"v"`` (the protocol version) and ``"arrays"``: one ``[name, dtype, shape]`` entry
per payload frame, in order. Arrays travel as raw little-endian buffers (``np.frombuffer`` on
receive, no copy). This module is pure (no sockets): encode messages to parts, parse parts into
messages (`parse_message`), and raise a :class:`ProtocolError` subclass naming what was wrong for anything else.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np

PROTOCOL_VERSION = 1

#: Behaviour channels, in the order they travel and are stored.
BEHAVIOUR_CHANNELS: tuple[str, ...] = ("running_speed", "pupil_dilation", "pupil_x", "pupil_y")

#: Where a session came from.
SOURCES: tuple[str, ...] = ("rig", "replay", "synthetic")

TOPIC_SESSION = b"session"
TOPIC_FRAME = b"frame"
TOPIC_END = b"end"
TOPIC_HEARTBEAT = b"heartbeat"
TOPIC_DECODED = b"decoded"  # reserved for the decoder's output; schema defined by the decoder
TOPICS: tuple[bytes, ...] = (TOPIC_SESSION, TOPIC_FRAME, TOPIC_END, TOPIC_HEARTBEAT, TOPIC_DECODED)
#: What a rig publishes (a decoder and a raw recording subscribe to these only).
RAW_TOPICS: tuple[bytes, ...] = (TOPIC_SESSION, TOPIC_FRAME, TOPIC_END, TOPIC_HEARTBEAT)

#: dtypes allowed on the wire, as numpy dtype strings (always explicit little-endian or byte-sized).
WIRE_DTYPES: frozenset[str] = frozenset({"<f4", "<f8", "<i8", "<i4", "|u1", "<u2"})

MAX_NEURONS = 1_000_000
#: A session's tiers travel as `trial_tiers` (index -> tier) up to this many trials: every v1 receiver unpacks maps
#: of at most 256 entries. A longer session (a release mouse has ~700 trials) sends `tier_trials` (tier -> [index]),
#: which old receivers ignore and new ones read back into trial_tiers.
MAX_TRIAL_TIERS_MAP = 256
MAX_STIMULUS_SIDE = 4096
MAX_HEADER_BYTES = 1 << 20
_UNPACK_LIMITS = dict(
    max_str_len=1 << 16, max_bin_len=1 << 16, max_array_len=1 << 16, max_map_len=256, max_ext_len=0
)


# ---------------------------------------------------------------------------------------------- errors
class ProtocolError(ValueError):
    """Something that arrived on the wire is not a valid v1 message. `kind` is a stable short name."""

    kind = "protocol"

    def __init__(self, detail: str, topic: bytes | None = None) -> None:
        self.topic = topic
        self.detail = detail
        where = f"[{topic.decode('ascii', 'replace')}] " if topic else ""
        super().__init__(f"{where}{detail}")


class UnknownTopic(ProtocolError):
    kind = "unknown_topic"


class VersionMismatch(ProtocolError):
    kind = "bad_version"


class MalformedHeader(ProtocolError):
    """Header is not msgpack, not a map, or misses/mistypes a field."""

    kind = "malformed_header"


class PayloadError(ProtocolError):
    """Payload frames do not match what the header describes (count, dtype, byte size, shape)."""

    kind = "bad_payload"


class NonFiniteValues(ProtocolError):
    """Traces or behaviour hold +-Inf (NaN is allowed: it means 'not reported')."""

    kind = "non_finite"


class FrameBeforeSession(ProtocolError):
    """A frame arrived before any session header (normal for a late joiner; it waits <= 1 s)."""

    kind = "frame_before_session"


class SessionMismatch(ProtocolError):
    """A message names a session other than the current one, or disagrees with its header."""

    kind = "session_mismatch"


# -------------------------------------------------------------------------------------------- messages
@dataclasses.dataclass(frozen=True)
class SessionHeader:
    """What a subscriber needs to interpret frames; re-sent by the publisher at least once a second."""

    session_id: str
    source: str
    mouse_id: str
    frame_rate: float
    neuron_ids: np.ndarray
    behaviour_channels: tuple[str, ...] = BEHAVIOUR_CHANNELS
    stimulus_shape: tuple[int, int] | None = None
    start_time_ns: int = 0
    trial_tiers: dict[int, str] = dataclasses.field(default_factory=dict)

    @property
    def n_neurons(self) -> int:
        return int(self.neuron_ids.shape[0])

    def same_as(self, other: SessionHeader) -> bool:
        """True when two headers describe the same session identically (re-sends must)."""
        return (
            self.session_id == other.session_id
            and self.source == other.source
            and self.mouse_id == other.mouse_id
            and self.frame_rate == other.frame_rate
            and self.behaviour_channels == other.behaviour_channels
            and self.stimulus_shape == other.stimulus_shape
            and self.start_time_ns == other.start_time_ns
            and np.array_equal(self.neuron_ids, other.neuron_ids)
        )


@dataclasses.dataclass(frozen=True)
class Frame:
    """One acquisition frame. Arrays are read-only views of the received buffers."""

    session_id: str
    seq: int
    t_acq_ns: int
    t_pub_ns: int
    traces: np.ndarray
    behaviour: np.ndarray
    stimulus: np.ndarray | None = None
    trial: int | None = None
    #: frames of one segment were recorded back to back; a different segment than the previous frame's marks
    #: a cut (a replay of trials cut from different parts of a recording). None: the publisher does not say.
    segment: int | None = None


@dataclasses.dataclass(frozen=True)
class End:
    """The publisher finished a session after `n_frames` frames (seq 0..n_frames-1)."""

    session_id: str
    n_frames: int
    reason: str = "complete"
    t_pub_ns: int = 0


@dataclasses.dataclass(frozen=True)
class Heartbeat:
    """Sent when idle; `last_seq` lets a subscriber notice frames it lost at the end of a burst."""

    session_id: str | None
    t_pub_ns: int
    last_seq: int = -1


@dataclasses.dataclass(frozen=True)
class Decoded:
    """A `decoded` message; the decoder defines its fields (protocol only checks the framing)."""

    session_id: str
    fields: dict[str, Any]
    arrays: dict[str, np.ndarray]


Message = SessionHeader | Frame | End | Heartbeat | Decoded


# -------------------------------------------------------------------------------------------- encoding
def _le(array: np.ndarray, dtype: str) -> np.ndarray:
    """C-contiguous little-endian array of `dtype` (no copy when it already is one)."""
    return np.ascontiguousarray(array, dtype=np.dtype(dtype))


def _pack(header: dict[str, Any], arrays: Sequence[tuple[str, np.ndarray]]) -> list[Any]:
    header["v"] = PROTOCOL_VERSION
    header["arrays"] = [[name, a.dtype.str, list(a.shape)] for name, a in arrays]
    return [msgpack.packb(header, use_bin_type=True)] + [memoryview(a).cast("B") for _, a in arrays]


def encode_session(h: SessionHeader) -> list[Any]:
    header = {
        "session_id": h.session_id,
        "source": h.source,
        "mouse_id": h.mouse_id,
        "frame_rate": float(h.frame_rate),
        "n_neurons": h.n_neurons,
        "behaviour_channels": list(h.behaviour_channels),
        "stimulus_shape": None if h.stimulus_shape is None else list(h.stimulus_shape),
        "start_time_ns": int(h.start_time_ns),
    }
    if len(h.trial_tiers) <= MAX_TRIAL_TIERS_MAP:
        header["trial_tiers"] = {int(k): str(v) for k, v in h.trial_tiers.items()}
    else:
        grouped: dict[str, list[int]] = {}
        for k, v in h.trial_tiers.items():
            grouped.setdefault(str(v), []).append(int(k))
        header["tier_trials"] = grouped
    return [TOPIC_SESSION, *_pack(header, [("neuron_ids", _le(h.neuron_ids, "<i8"))])]


def encode_frame(
    session_id: str,
    seq: int,
    t_acq_ns: int,
    t_pub_ns: int,
    traces: np.ndarray,
    behaviour: np.ndarray,
    stimulus: np.ndarray | None = None,
    trial: int | None = None,
    segment: int | None = None,
) -> list[Any]:
    header: dict[str, Any] = {
        "session_id": session_id,
        "seq": int(seq),
        "t_acq_ns": int(t_acq_ns),
        "t_pub_ns": int(t_pub_ns),
    }
    if trial is not None:
        header["trial"] = int(trial)
    if segment is not None:
        header["segment"] = int(segment)
    arrays = [("traces", _le(traces, "<f4")), ("behaviour", _le(behaviour, "<f4"))]
    if stimulus is not None:
        arrays.append(("stimulus", _le(stimulus, "|u1")))
    return [TOPIC_FRAME, *_pack(header, arrays)]


def encode_end(e: End) -> list[Any]:
    header = {"session_id": e.session_id, "n_frames": int(e.n_frames), "reason": e.reason,
              "t_pub_ns": int(e.t_pub_ns)}
    return [TOPIC_END, *_pack(header, [])]


def encode_heartbeat(hb: Heartbeat) -> list[Any]:
    header = {"session_id": hb.session_id, "t_pub_ns": int(hb.t_pub_ns), "last_seq": int(hb.last_seq)}
    return [TOPIC_HEARTBEAT, *_pack(header, [])]


def encode_decoded(session_id: str, fields: dict[str, Any], arrays: Sequence[tuple[str, np.ndarray]]) -> list[Any]:
    """Framing for the decoder's output; `fields` must be msgpack-able and not use reserved keys."""
    header = dict(fields)
    header["session_id"] = session_id
    return [TOPIC_DECODED, *_pack(header, [(n, np.ascontiguousarray(a)) for n, a in arrays])]


def encode(msg: Message) -> list[Any]:
    """Parts for any message object (frames need their own timestamps filled in)."""
    if isinstance(msg, SessionHeader):
        return encode_session(msg)
    if isinstance(msg, Frame):
        return encode_frame(msg.session_id, msg.seq, msg.t_acq_ns, msg.t_pub_ns, msg.traces,
                            msg.behaviour, msg.stimulus, msg.trial, msg.segment)
    if isinstance(msg, End):
        return encode_end(msg)
    if isinstance(msg, Heartbeat):
        return encode_heartbeat(msg)
    if isinstance(msg, Decoded):
        return encode_decoded(msg.session_id, msg.fields, list(msg.arrays.items()))
    raise TypeError(f"not a protocol message: {type(msg).__name__}")


# -------------------------------------------------------------------------------------------- decoding
def _buffer(part: Any) -> memoryview:
    """A memoryview of one received part (bytes, bytearray, memoryview or zmq.Frame)."""
    buf = getattr(part, "buffer", part)
    try:
        return memoryview(buf).cast("B")
    except TypeError as e:
        raise ProtocolError(f"message part of type {type(part).__name__} is not a byte buffer") from e


def _field(h: dict[str, Any], key: str, types: type | tuple[type, ...], topic: bytes, *, optional: bool = False):
    if key not in h:
        if optional:
            return None
        raise MalformedHeader(f"header has no field {key!r}", topic)
    value = h[key]
    if optional and value is None:
        return None
    # bool is an int subclass: never accept it where a number is expected.
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise MalformedHeader(f"field {key!r} must be {_typename(types)}, got bool", topic)
    if not isinstance(value, types):
        raise MalformedHeader(f"field {key!r} must be {_typename(types)}, got {type(value).__name__}", topic)
    return value


def _typename(types: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))


def _int(h: dict[str, Any], key: str, topic: bytes, lo: int = -(1 << 63), hi: int = (1 << 63) - 1) -> int:
    value = _field(h, key, int, topic)
    if not lo <= value <= hi:
        raise MalformedHeader(f"field {key!r}={value} out of range [{lo}, {hi}]", topic)
    return value


def _decode_header(topic: bytes, raw: memoryview) -> dict[str, Any]:
    if len(raw) > MAX_HEADER_BYTES:
        raise MalformedHeader(f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}", topic)
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=False, **_UNPACK_LIMITS)
    except Exception as e:  # msgpack raises many types (ExtraData, ValueError, StackError, ...)
        raise MalformedHeader(f"header is not valid msgpack ({type(e).__name__}: {e})", topic) from e
    if not isinstance(header, dict):
        raise MalformedHeader(f"header must be a msgpack map, got {type(header).__name__}", topic)
    if "v" not in header:
        raise MalformedHeader("header has no protocol version field 'v'", topic)
    if header["v"] != PROTOCOL_VERSION or isinstance(header["v"], bool):
        raise VersionMismatch(f"protocol version {header['v']!r}, this build speaks {PROTOCOL_VERSION}", topic)
    return header


def _decode_arrays(topic: bytes, header: dict[str, Any], payload: Sequence[Any]) -> dict[str, np.ndarray]:
    specs = _field(header, "arrays", list, topic)
    if len(specs) != len(payload):
        raise PayloadError(f"header describes {len(specs)} payload frames, message has {len(payload)}", topic)
    arrays: dict[str, np.ndarray] = {}
    for spec, part in zip(specs, payload, strict=False):
        if not (isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str)
                and isinstance(spec[1], str) and isinstance(spec[2], list)):
            raise MalformedHeader(f"array spec {spec!r} is not [name, dtype, shape]", topic)
        name, dtype, shape = spec
        if dtype not in WIRE_DTYPES:
            raise PayloadError(f"array {name!r} has dtype {dtype!r}, allowed: {sorted(WIRE_DTYPES)}", topic)
        if len(shape) > 4 or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 31
                                     for d in shape):
            raise PayloadError(f"array {name!r} has invalid shape {shape!r}", topic)
        if name in arrays:
            raise PayloadError(f"array {name!r} appears twice", topic)
        buf = _buffer(part)
        itemsize = np.dtype(dtype).itemsize
        expected = math.prod(shape) * itemsize
        if len(buf) != expected:
            raise PayloadError(
                f"array {name!r} {dtype}{tuple(shape)} needs {expected} bytes, payload has {len(buf)}", topic
            )
        arrays[name] = np.frombuffer(buf, dtype=dtype).reshape(shape)
    return arrays


def _expect_arrays(topic: bytes, arrays: dict[str, np.ndarray], required: dict[str, str],
                   optional: dict[str, str] | None = None) -> None:
    optional = optional or {}
    for name, _dtype in required.items():
        if name not in arrays:
            raise PayloadError(f"missing array {name!r}", topic)
    for name, a in arrays.items():
        want = required.get(name) or optional.get(name)
        if want is None:
            raise PayloadError(f"unexpected array {name!r}", topic)
        if a.dtype.str != want:
            raise PayloadError(f"array {name!r} must be {want}, got {a.dtype.str}", topic)


def _decode_session(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> SessionHeader:
    t = TOPIC_SESSION
    _expect_arrays(t, arrays, {"neuron_ids": "<i8"})
    n = _int(header, "n_neurons", t, 0, MAX_NEURONS)
    ids = arrays["neuron_ids"]
    if ids.shape != (n,):
        raise PayloadError(f"neuron_ids has shape {ids.shape}, header says n_neurons={n}", t)
    if np.unique(ids).size != n:
        raise PayloadError("neuron_ids are not unique", t)
    rate = _field(header, "frame_rate", (float, int), t)
    if not (math.isfinite(rate) and 0 < rate <= 10_000):
        raise MalformedHeader(f"frame_rate={rate} is not a positive finite rate", t)
    source = _field(header, "source", str, t)
    if source not in SOURCES:
        raise MalformedHeader(f"source {source!r} is not one of {SOURCES}", t)
    channels = _field(header, "behaviour_channels", list, t)
    if len(channels) != len(BEHAVIOUR_CHANNELS) or not all(isinstance(c, str) for c in channels):
        raise MalformedHeader(f"behaviour_channels must be {len(BEHAVIOUR_CHANNELS)} names, got {channels!r}", t)
    shape = _field(header, "stimulus_shape", list, t, optional=True)
    if shape is not None:
        if len(shape) != 2 or not all(isinstance(d, int) and not isinstance(d, bool)
                                      and 0 < d <= MAX_STIMULUS_SIDE for d in shape):
            raise MalformedHeader(f"stimulus_shape {shape!r} is not [H, W] with 0 < side <= {MAX_STIMULUS_SIDE}", t)
        shape = (shape[0], shape[1])
    tiers_raw = _field(header, "trial_tiers", dict, t, optional=True) or {}
    if not all(isinstance(k, int) and not isinstance(k, bool) and isinstance(v, str) for k, v in tiers_raw.items()):
        raise MalformedHeader("trial_tiers must map int trial index -> str tier", t)
    grouped = _field(header, "tier_trials", dict, t, optional=True) or {}
    if not all(isinstance(k, str) and isinstance(v, list)
               and all(isinstance(i, int) and not isinstance(i, bool) for i in v) for k, v in grouped.items()):
        raise MalformedHeader("tier_trials must map str tier -> list of int trial indices", t)
    tiers_raw = {**{i: tier for tier, indices in grouped.items() for i in indices}, **tiers_raw}
    return SessionHeader(
        session_id=_field(header, "session_id", str, t),
        source=source,
        mouse_id=_field(header, "mouse_id", str, t),
        frame_rate=float(rate),
        neuron_ids=ids,
        behaviour_channels=tuple(channels),
        stimulus_shape=shape,
        start_time_ns=_int(header, "start_time_ns", t),
        trial_tiers=dict(tiers_raw),
    )


def _decode_frame(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> Frame:
    t = TOPIC_FRAME
    _expect_arrays(t, arrays, {"traces": "<f4", "behaviour": "<f4"}, {"stimulus": "|u1"})
    traces, behaviour, stim = arrays["traces"], arrays["behaviour"], arrays.get("stimulus")
    seq = _int(header, "seq", t, 0)
    if traces.ndim != 1:
        raise PayloadError(f"frame {seq}: traces must be 1-D [N], got shape {traces.shape}", t)
    if behaviour.shape != (len(BEHAVIOUR_CHANNELS),):
        raise PayloadError(f"frame {seq}: behaviour must be [{len(BEHAVIOUR_CHANNELS)}], got {behaviour.shape}", t)
    if stim is not None and stim.ndim != 2:
        raise PayloadError(f"frame {seq}: stimulus must be [H, W], got shape {stim.shape}", t)
    if np.isinf(traces).any():
        raise NonFiniteValues(f"frame {seq}: traces hold {int(np.isinf(traces).sum())} infinite values", t)
    if np.isinf(behaviour).any():
        raise NonFiniteValues(f"frame {seq}: behaviour holds infinite values", t)
    trial = header.get("trial")
    if trial is not None and (not isinstance(trial, int) or isinstance(trial, bool)):
        raise MalformedHeader(f"frame {seq}: field 'trial' must be int", t)
    segment = header.get("segment")
    if segment is not None and (not isinstance(segment, int) or isinstance(segment, bool)
                                or not 0 <= segment < 1 << 63):
        raise MalformedHeader(f"frame {seq}: field 'segment' must be an int in [0, 2**63), got {segment!r}", t)
    return Frame(
        session_id=_field(header, "session_id", str, t),
        seq=seq,
        t_acq_ns=_int(header, "t_acq_ns", t),
        t_pub_ns=_int(header, "t_pub_ns", t),
        traces=traces,
        behaviour=behaviour,
        stimulus=stim,
        trial=trial,
        segment=segment,
    )


def parse_message(parts: Sequence[Any]) -> Message:
    """The message one multipart message holds; raises a ProtocolError subclass (and nothing else) if invalid.
    (Named for what it does to bytes, so that "decode" keeps its one meaning here: activity to movie.)"""
    if len(parts) < 2:
        raise ProtocolError(f"message has {len(parts)} parts, needs at least [topic, header]")
    topic = bytes(_buffer(parts[0]))
    if topic not in TOPICS:
        raise UnknownTopic(f"unknown topic {topic[:32]!r}; known: {[x.decode() for x in TOPICS]}")
    header = _decode_header(topic, _buffer(parts[1]))
    arrays = _decode_arrays(topic, header, parts[2:])
    if topic == TOPIC_FRAME:
        return _decode_frame(header, arrays)
    if topic == TOPIC_SESSION:
        return _decode_session(header, arrays)
    if topic == TOPIC_END:
        _expect_arrays(topic, arrays, {})
        return End(
            session_id=_field(header, "session_id", str, topic),
            n_frames=_int(header, "n_frames", topic, 0),
            reason=_field(header, "reason", str, topic),
            t_pub_ns=_int(header, "t_pub_ns", topic),
        )
    if topic == TOPIC_HEARTBEAT:
        _expect_arrays(topic, arrays, {})
        return Heartbeat(
            session_id=_field(header, "session_id", str, topic, optional=True),
            t_pub_ns=_int(header, "t_pub_ns", topic),
            last_seq=_int(header, "last_seq", topic, -1),
        )
    fields = {k: v for k, v in header.items() if k not in ("v", "arrays", "session_id")}
    return Decoded(session_id=_field(header, "session_id", str, topic), fields=fields, arrays=arrays)
