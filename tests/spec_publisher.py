#!/usr/bin/env python3
"""A rig publisher written from docs/protocol.md alone: plain pyzmq + msgpack + numpy, no neurocine import.

It exists to prove the written spec is enough for a lab whose acquisition program is not neurocine
(tests/test_spec.py runs it as a subprocess and decodes its stream with the real `neurocine decode`).

usage: spec_publisher.py ENDPOINT IDS.npy TRACES.npy BEHAVIOUR.npy MOUSE_ID PACE_HZ
Prints the session id on stdout, then publishes every frame of TRACES (T, N) at PACE_HZ and ends.
"""

import sys
import time
import uuid

import msgpack
import numpy as np
import zmq

HEADER_EVERY_S = 0.5  # "re-sent every 0.5 s"


def message(topic: bytes, header: dict, arrays: list) -> list:
    """[topic, msgpack header with v and arrays, raw little-endian C-order buffers...]"""
    header = dict(header, v=1, arrays=[[name, a.dtype.str, list(a.shape)] for name, a in arrays])
    return [topic, msgpack.packb(header)] + [np.ascontiguousarray(a).tobytes() for _, a in arrays]


def main() -> int:
    endpoint, ids_path, traces_path, beh_path, mouse_id, pace = sys.argv[1:7]
    ids = np.load(ids_path).astype("<i8")
    traces = np.load(traces_path).astype("<f4")
    behaviour = np.load(beh_path).astype("<f4")
    session_id = uuid.uuid4().hex
    session = message(b"session", {
        "session_id": session_id, "source": "rig", "mouse_id": mouse_id, "frame_rate": 30.0,
        "n_neurons": int(ids.size),
        "behaviour_channels": ["running_speed", "pupil_dilation", "pupil_x", "pupil_y"],
        "stimulus_shape": None, "start_time_ns": time.time_ns(),
    }, [("neuron_ids", ids)])

    sock = zmq.Context.instance().socket(zmq.XPUB)  # "The publisher socket is an XPUB"
    sock.setsockopt(zmq.LINGER, 2000)
    sock.bind(endpoint)
    # Wait for one neurocine subscriber: it subscribes to "\x00hello:<uuid>" (XPUB shows b"\x01" + topic).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if sock.poll(100) and sock.recv().startswith(b"\x01\x00hello:"):
            break
    else:
        print("no subscriber", file=sys.stderr)
        return 1
    print(session_id, flush=True)

    sock.send_multipart(session)
    last_header = time.monotonic()
    period = 1.0 / float(pace)
    start = time.monotonic()
    for seq in range(traces.shape[0]):
        while time.monotonic() < start + seq * period:
            time.sleep(0.002)
        if time.monotonic() - last_header >= HEADER_EVERY_S:
            sock.send_multipart(session)
            last_header = time.monotonic()
        now = time.time_ns()
        sock.send_multipart(message(b"frame", {"session_id": session_id, "seq": seq, "t_acq_ns": now,
                                               "t_pub_ns": time.time_ns()},
                                    [("traces", traces[seq]), ("behaviour", behaviour[seq])]))
    sock.send_multipart(message(b"end", {"session_id": session_id, "n_frames": int(traces.shape[0]),
                                         "reason": "complete", "t_pub_ns": time.time_ns()}, []))
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
