"""`neurocine bench fuzz` for real (small N): hostile traffic costs neither process a crash nor a valid frame."""

from __future__ import annotations

from neurocine.decoder.bench.fuzz import KINDS, fuzz


def test_small_fuzz_run_loses_no_valid_frame_and_crashes_nothing() -> None:
    r = fuzz(n_hostile=240, seconds=4.0, seed=3)
    assert set(r["hostile_by_kind"]) == set(KINDS) and sum(r["hostile_by_kind"].values()) == 240
    for proc in ("decode", "record"):
        assert not r[proc]["crashed"], r[proc]
        assert r[proc]["valid_frames_lost"] == 0, r[proc]
    assert r["decode"]["wire"]["malformed"] > 0 and r["decode"]["wire"]["held_sessions"] > 0
