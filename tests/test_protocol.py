"""Wire protocol v1: round trips, every typed error, and fuzzing that only ProtocolError escapes."""

from __future__ import annotations

import contextlib
import dataclasses

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neurocine.streams import protocol as p
from neurocine.streams.protocol import (
    End,
    Frame,
    Heartbeat,
    MalformedHeader,
    NonFiniteValues,
    PayloadError,
    ProtocolError,
    SessionHeader,
    UnknownTopic,
    VersionMismatch,
    parse_message,
)
from neurocine.streams.tracker import StreamTracker

N = 16


def header() -> SessionHeader:
    return SessionHeader("s1", "rig", "m7", 30.0, np.arange(100, 100 + N, dtype=np.int64), stimulus_shape=(4, 5),
                         start_time_ns=123, trial_tiers={3: "oracle"})


def frame_parts(seq: int = 0, traces: np.ndarray | None = None) -> list:
    tr = np.linspace(0, 1, N, dtype=np.float32) if traces is None else traces
    stim = np.arange(20, dtype=np.uint8).reshape(4, 5)
    return p.encode_frame("s1", seq, 10 + seq, 20 + seq, tr, np.arange(4, dtype=np.float32), stim, trial=3)


def as_bytes(parts: list) -> list[bytes]:
    return [bytes(x) for x in parts]


def test_session_header_round_trip() -> None:
    h = parse_message(as_bytes(p.encode_session(header())))
    assert isinstance(h, SessionHeader) and h.same_as(header())
    assert h.trial_tiers == {3: "oracle"} and h.stimulus_shape == (4, 5)


def test_frame_round_trip_is_bit_identical_and_zero_copy() -> None:
    tr = np.random.default_rng(0).normal(size=N).astype(np.float32)
    tr[3] = np.nan
    parts = as_bytes(frame_parts(5, tr))
    f = parse_message(parts)
    assert isinstance(f, Frame)
    assert f.seq == 5 and f.t_acq_ns == 15 and f.t_pub_ns == 25 and f.trial == 3
    assert f.traces.tobytes() == tr.tobytes()
    assert f.stimulus is not None and f.stimulus.shape == (4, 5)
    assert not f.traces.flags.writeable  # a view of the received buffer, not a copy


def test_a_session_of_700_trials_keeps_its_tiers_in_a_header_every_v1_receiver_decodes() -> None:
    """A release mouse has ~700 trials: more than the 256 map entries a v1 receiver unpacks, so its tiers travel
    grouped by tier (`tier_trials`) and come back as trial_tiers; a short session still sends trial_tiers."""
    tiers = {i: ("train", "oracle", "live_test_main")[i % 3] for i in range(700)}
    long = dataclasses.replace(header(), trial_tiers=tiers)
    parts = as_bytes(p.encode_session(long))
    raw = msgpack.unpackb(parts[1], strict_map_key=False, **p._UNPACK_LIMITS)  # what an old receiver unpacks
    assert "trial_tiers" not in raw and sorted(raw["tier_trials"]) == ["live_test_main", "oracle", "train"]
    got = parse_message(parts)
    assert isinstance(got, SessionHeader) and got.trial_tiers == tiers
    assert "trial_tiers" in msgpack.unpackb(as_bytes(p.encode_session(header()))[1], strict_map_key=False)
    head = raw | {"tier_trials": {"train": [1, "2"]}}
    with pytest.raises(p.MalformedHeader, match="tier_trials must map str tier"):
        parse_message([parts[0], msgpack.packb(head), *parts[2:]])


def test_segment_round_trips_and_is_optional() -> None:
    """`segment` (a change marks a cut) travels only when given; a frame without it decodes as before."""
    tr, beh = np.zeros(N, np.float32), np.zeros(4, np.float32)
    with_it = parse_message(as_bytes(p.encode_frame("s1", 1, 2, 3, tr, beh, trial=3, segment=7)))
    assert isinstance(with_it, Frame) and with_it.segment == 7 and with_it.trial == 3
    without = as_bytes(p.encode_frame("s1", 1, 2, 3, tr, beh))
    assert b"segment" not in without[1] and parse_message(without).segment is None
    assert _same(parse_message(as_bytes(p.encode(with_it))), with_it)


@pytest.mark.parametrize("bad", [True, -1, 1 << 63, "3", 1.5, [1]])
def test_a_malformed_segment_is_a_protocol_error_naming_the_field(bad: object) -> None:
    parts = as_bytes(frame_parts(4))
    head = msgpack.unpackb(parts[1])
    head["segment"] = bad
    parts[1] = msgpack.packb(head)
    with pytest.raises(p.MalformedHeader, match="frame 4: field 'segment'"):
        parse_message(parts)


def test_a_reader_that_knows_no_segment_field_ignores_it() -> None:
    """Old readers are unaffected: a v1 decoder reads only the fields it knows (extra header keys are ignored),
    which this checks on the frame decoder with an unknown key beside `segment`."""
    parts = as_bytes(frame_parts(4))
    head = msgpack.unpackb(parts[1])
    head.update(segment=2, some_future_field={"x": 1})
    parts[1] = msgpack.packb(head)
    f = parse_message(parts)
    assert isinstance(f, Frame) and f.seq == 4 and f.segment == 2


def test_end_and_heartbeat_round_trip() -> None:
    e = parse_message(as_bytes(p.encode_end(End("s1", 42, "complete", 7))))
    assert e == End("s1", 42, "complete", 7)
    hb = parse_message(as_bytes(p.encode_heartbeat(Heartbeat(None, 9, -1))))
    assert hb == Heartbeat(None, 9, -1)


def test_decoded_framing_round_trip() -> None:
    img = np.full((36, 64), 7, np.uint8)
    m = parse_message(as_bytes(p.encode_decoded("s1", {"seq": 4, "final": True}, [("frame", img)])))
    assert isinstance(m, p.Decoded) and m.fields == {"seq": 4, "final": True}
    assert np.array_equal(m.arrays["frame"], img)


def _with_header(parts: list, **changes) -> list[bytes]:
    h = msgpack.unpackb(bytes(parts[1]), raw=False, strict_map_key=False)
    for k, v in changes.items():
        if v is KeyError:
            h.pop(k)
        else:
            h[k] = v
    return [bytes(parts[0]), msgpack.packb(h), *as_bytes(parts[2:])]


@pytest.mark.parametrize(
    ("parts", "error", "words"),
    [
        ([b"bogus", msgpack.packb({"v": 1})], UnknownTopic, "unknown topic"),
        ([b"frame"], ProtocolError, "at least"),
        ([b"frame", b"\xc1\xff garbage"], MalformedHeader, "not valid msgpack"),
        ([b"frame", msgpack.packb([1, 2])], MalformedHeader, "must be a msgpack map"),
        ([b"frame", msgpack.packb({"x": 1})], MalformedHeader, "no protocol version"),
    ],
)
def test_broken_framing_is_named(parts: list, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        parse_message(parts)


def test_bad_version_named() -> None:
    with pytest.raises(VersionMismatch, match="protocol version 2"):
        parse_message(_with_header(frame_parts(), v=2))


def test_missing_field_named() -> None:
    with pytest.raises(MalformedHeader, match="'seq'"):
        parse_message(_with_header(frame_parts(), seq=KeyError))


def test_wrong_type_named() -> None:
    with pytest.raises(MalformedHeader, match="'seq' must be int"):
        parse_message(_with_header(frame_parts(), seq="three"))


def test_payload_size_not_n_times_4_named() -> None:
    parts = as_bytes(frame_parts())
    parts[2] = parts[2][:-2]
    with pytest.raises(PayloadError, match=r"'traces' <f4\(16,\) needs 64 bytes, payload has 62"):
        parse_message(parts)


def test_truncated_msgpack_named() -> None:
    parts = as_bytes(frame_parts())
    parts[1] = parts[1][: len(parts[1]) // 2]
    with pytest.raises(MalformedHeader, match="not valid msgpack"):
        parse_message(parts)


def test_missing_payload_frame_named() -> None:
    parts = as_bytes(frame_parts())[:-1]
    with pytest.raises(PayloadError, match="describes 3 payload frames, message has 2"):
        parse_message(parts)


def test_inf_rejected_nan_allowed() -> None:
    tr = np.zeros(N, np.float32)
    tr[2] = np.inf
    with pytest.raises(NonFiniteValues, match="frame 0: traces hold 1 infinite"):
        parse_message(as_bytes(frame_parts(0, tr)))
    tr[2] = np.nan
    assert np.isnan(parse_message(as_bytes(frame_parts(0, tr))).traces[2])


def test_wrong_neuron_count_against_header() -> None:
    t = StreamTracker()
    t.accept_parts(as_bytes(p.encode_session(header())))
    bad = p.encode_frame("s1", 0, 0, 0, np.zeros(N + 1, np.float32), np.zeros(4, np.float32))
    with pytest.raises(PayloadError, match="17 traces, session s1 has 16 neurons"):
        t.accept_parts(as_bytes(bad))
    assert t.stats.malformed == 1 and t.stats.errors_by_kind == {"bad_payload": 1}


# ------------------------------------------------------------------------------------------------ fuzz
def _valid_messages() -> list[list[bytes]]:
    return [
        as_bytes(p.encode_session(header())),
        as_bytes(frame_parts(0)),
        as_bytes(frame_parts(1)),
        as_bytes(p.encode_end(End("s1", 2))),
        as_bytes(p.encode_heartbeat(Heartbeat("s1", 5, 1))),
        as_bytes(p.encode_decoded("s1", {"seq": 1}, [("frame", np.zeros((2, 2), np.uint8))])),
    ]


def _feed(tracker: StreamTracker, parts: list[bytes]) -> None:
    with contextlib.suppress(ProtocolError):  # the only exception allowed to escape
        tracker.accept_parts(parts)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=6))
def test_fuzz_random_bytes_only_protocol_errors(parts: list[bytes]) -> None:
    tracker = StreamTracker()
    _feed(tracker, as_bytes(p.encode_session(header())))
    for topic in (b"frame", b"session", b"end", b"heartbeat", b"decoded"):
        _feed(tracker, [topic, *parts])
    _feed(tracker, parts)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, 5),
    st.integers(0, 5),
    st.integers(0, 10_000),
    st.integers(0, 255),
    st.sampled_from(["flip", "truncate", "extend", "drop_part", "dup_part", "swap"]),
)
def test_fuzz_mutated_valid_messages_only_protocol_errors(which: int, part: int, pos: int, byte: int,
                                                          how: str) -> None:
    msgs = _valid_messages()
    parts = msgs[which]
    k = part % len(parts)
    b = bytearray(parts[k])
    if how == "flip" and b:
        b[pos % len(b)] = byte
    elif how == "truncate":
        b = b[: pos % (len(b) + 1)]
    elif how == "extend":
        b += bytes([byte]) * (pos % 9 + 1)
    parts = list(parts)
    parts[k] = bytes(b)
    if how == "drop_part":
        parts.pop(k)
    elif how == "dup_part":
        parts.insert(k, parts[k])
    elif how == "swap" and len(parts) > 1:
        parts[0], parts[-1] = parts[-1], parts[0]
    tracker = StreamTracker()
    _feed(tracker, msgs[0])
    _feed(tracker, parts)
    # after any garbage, a valid frame is still accepted (the tracker is not corrupted)
    if tracker.session is not None and tracker.session.session_id == "s1" and tracker.session.n_neurons == N:
        nxt = tracker.last_seq + 1 if tracker.stats.received else 1000  # (a jump of > 300 would be held)
        out = tracker.accept_parts(as_bytes(frame_parts(nxt)))
        assert isinstance(out, Frame) and out.seq == nxt


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "arrays", "session_id", "seq", "t_acq_ns", "t_pub_ns", "n_neurons",
                                        "source", "frame_rate", "behaviour_channels", "stimulus_shape",
                                        "start_time_ns", "mouse_id", "trial_tiers", "n_frames", "reason",
                                        "last_seq", "trial", "segment", "tier_trials"]),
                       st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(),
                                 st.text(max_size=5), st.lists(st.integers(-3, 40), max_size=4),
                                 st.dictionaries(st.integers(-2, 2), st.text(max_size=2), max_size=2))))
def test_fuzz_structured_headers_only_protocol_errors(h: dict) -> None:
    """Any msgpack map as a header (integers up to msgpack's own 64-bit range, so every example is sent): the
    tracker raises nothing but ProtocolError, and counts every message it refuses."""
    packed = msgpack.packb(h)
    tracker = StreamTracker()
    tracker.accept_parts(as_bytes(p.encode_session(header())))
    refused = 0
    for topic in (b"frame", b"session", b"end", b"heartbeat", b"decoded"):
        try:
            tracker.accept_parts([topic, packed, b"\x00" * 64, b"\x00" * 16])
        except ProtocolError as e:
            refused += 1
            assert tracker.errors[-1] is e
    assert sum(tracker.stats.errors_by_kind.values()) == refused


# ------------------------------------------------------------------------ round-trip property
_i64 = st.integers(-(1 << 63), (1 << 63) - 1)
_text = st.text(max_size=20)
_f32 = st.floats(width=32, allow_infinity=False)  # NaN allowed: "not reported"


@st.composite
def _arrays(draw, dtype: str, shape: tuple[int, ...], elements) -> np.ndarray:
    n = int(np.prod(shape))
    return np.array(draw(st.lists(elements, min_size=n, max_size=n)), dtype=dtype).reshape(shape)


@st.composite
def _headers(draw) -> SessionHeader:
    from neurocine.streams.protocol import SOURCES

    ids = draw(st.lists(st.integers(-(1 << 40), 1 << 40), max_size=12, unique=True))
    shape = draw(st.none() | st.tuples(st.integers(1, 4096), st.integers(1, 4096)))
    return SessionHeader(draw(_text), draw(st.sampled_from(SOURCES)), draw(_text),
                         draw(st.floats(1e-3, 10_000)), np.array(ids, np.int64),
                         tuple(draw(st.lists(_text, min_size=4, max_size=4))), shape, draw(_i64),
                         draw(st.dictionaries(st.integers(0, 1 << 20), _text, max_size=4)))


@st.composite
def _frames(draw) -> Frame:
    n = draw(st.integers(0, 12))
    stim = draw(st.none() | st.tuples(st.integers(1, 5), st.integers(1, 5)).flatmap(
        lambda s: _arrays("|u1", s, st.integers(0, 255))))
    return Frame(draw(_text), draw(st.integers(0, (1 << 63) - 1)), draw(_i64), draw(_i64),
                 draw(_arrays("<f4", (n,), _f32)), draw(_arrays("<f4", (4,), _f32)), stim,
                 draw(st.none() | st.integers(-(1 << 63), (1 << 63) - 1)))


_values = st.none() | st.booleans() | _i64 | st.floats(allow_nan=False) | _text
_fields = st.dictionaries(_text.filter(lambda k: k not in ("v", "arrays", "session_id")),
                          _values | st.lists(_values, max_size=3), max_size=5)
_decoded = st.builds(
    p.Decoded, _text, _fields,
    st.dictionaries(_text, st.sampled_from(sorted(p.WIRE_DTYPES)).flatmap(
        lambda d: _arrays(d, (3,), st.integers(0, 200))), max_size=3))
_messages = (_headers() | _frames() | st.builds(End, _text, st.integers(0, (1 << 63) - 1), _text, _i64)
             | st.builds(Heartbeat, st.none() | _text, _i64, st.integers(-1, (1 << 63) - 1)) | _decoded)


def _same(a: object, b: object) -> bool:
    """Dataclass equality with arrays compared bit for bit (NaN payloads included) and dtype-exact."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if dataclasses.is_dataclass(a):
        return all(_same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    return a == b


@settings(max_examples=300, deadline=None)
@given(_messages)
def test_every_message_type_round_trips(msg) -> None:
    assert _same(parse_message(as_bytes(p.encode(msg))), msg)
