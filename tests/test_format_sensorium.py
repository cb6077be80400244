"""Sensorium 2023 folders: round trips, trial selection, padding, statistics and every bad input."""

from __future__ import annotations

import dataclasses
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from neurocine.streams.formats import FormatError, load_session, save_session
from neurocine.streams.formats.sensorium import (
    SensoriumWriter,
    read_sensorium,
    read_sensorium_statistics,
    write_sensorium,
)
from neurocine.streams.formats.sensorium import writer as sensorium_writer
from neurocine.streams.session import Session, Trial, regular_timestamps

LENGTHS = (20, 13, 25, 9)
TIER_NAMES = ("train", "oracle", "train", "final_test_main")
FRAME = (36, 64)


def make_session(
    seed: int = 0,
    lengths: tuple[int, ...] = LENGTHS,
    tiers: tuple[str, ...] = TIER_NAMES,
    n_neurons: int = 7,
    with_stimulus: bool = True,
) -> Session:
    """A small random session: unequal trials, a few unreported (NaN) neurons, NaN behaviour here and there."""
    rng = np.random.default_rng(seed)
    total = sum(lengths)
    traces = rng.gamma(1.5, 2.0, size=(total, n_neurons)).astype(np.float32)
    traces[rng.random(traces.shape) < 0.05] = np.nan
    traces[:, 0] = np.where(rng.random(total) < 0.5, np.nan, traces[:, 0])
    traces[1::3, -1] = np.nan  # but never a whole frame: keep trims unambiguous
    traces[:, 1] = rng.random(total).astype(np.float32)  # neuron 1 always reported
    behaviour = rng.normal(size=(total, 4)).astype(np.float32)
    behaviour[rng.random(behaviour.shape) < 0.05] = np.nan
    stimulus = rng.integers(0, 256, size=(total, *FRAME), dtype=np.uint8) if with_stimulus else None
    trials, pos = [], 0
    for i, (n, tier) in enumerate(zip(lengths, tiers, strict=True)):
        trials.append(Trial(i, pos, pos + n, tier))
        pos += n
    return Session(
        traces=traces,
        behaviour=behaviour,
        timestamps_ns=regular_timestamps(total, 30.0),
        neuron_ids=rng.choice(10_000, size=n_neurons, replace=False),
        stimulus=stimulus,
        trials=trials,
    )


def assert_same_session(got: Session, want: Session) -> None:
    np.testing.assert_array_equal(got.traces, want.traces)
    np.testing.assert_array_equal(got.behaviour, want.behaviour)
    np.testing.assert_array_equal(got.neuron_ids, want.neuron_ids)
    np.testing.assert_array_equal(got.timestamps_ns, regular_timestamps(want.n_frames, 30.0))
    # A Sensorium folder's file order carries no time: every trial after the first follows a cut.
    assert got.trials == [dataclasses.replace(tr, cut=k > 0) for k, tr in enumerate(want.trials)]
    if want.stimulus is None:
        assert got.stimulus is None
    else:
        assert got.stimulus is not None and got.stimulus.dtype == np.uint8
        np.testing.assert_array_equal(got.stimulus, want.stimulus)


@pytest.fixture
def written(tmp_path: Path) -> tuple[Session, Path]:
    session = make_session()
    folder = tmp_path / "mouse_A"
    write_sensorium(session, folder, pad_to=30)
    return session, folder


# ---------------------------------------------------------------------------------------------- round trips
def test_round_trip_is_bit_identical_with_padding(written: tuple[Session, Path]) -> None:
    session, folder = written
    got = read_sensorium(folder)
    assert_same_session(got, session)
    assert got.mouse_id == "mouse_A" and got.source == "replay" and got.frame_rate == 30.0
    assert [tr.n_frames for tr in got.trials] == list(LENGTHS)

    # The files follow the Sensorium layout: padded to 30 columns, NaN after each trial's end.
    resp = np.load(folder / "data" / "responses" / "1.npy")
    video = np.load(folder / "data" / "videos" / "1.npy")
    behavior = np.load(folder / "data" / "behavior" / "1.npy")
    assert resp.shape == (7, 30) and resp.dtype == np.float32
    assert video.shape == (36, 64, 30) and video.dtype == np.float32
    assert behavior.shape == (2, 30) and np.load(folder / "data" / "pupil_center" / "1.npy").shape == (2, 30)
    assert np.isnan(resp[:, 13:]).all() and np.isnan(video[:, :, 13:]).all()
    tr = session.trials[1]
    np.testing.assert_array_equal(behavior[0, :13], session.behaviour[tr.start : tr.stop, 1])  # pupil dilation
    np.testing.assert_array_equal(behavior[1, :13], session.behaviour[tr.start : tr.stop, 0])  # running speed
    assert list(np.load(folder / "meta" / "trials" / "tiers.npy")) == list(TIER_NAMES)
    np.testing.assert_array_equal(np.load(folder / "meta" / "neurons" / "unit_ids.npy"), session.neuron_ids)
    assert np.load(folder / "meta" / "neurons" / "cell_motor_coordinates.npy").shape == (7, 3)
    assert not list(folder.rglob(".*.tmp")), "temporary files left behind"


def test_round_trip_unpadded_without_stimulus(tmp_path: Path) -> None:
    session = make_session(seed=1, with_stimulus=False)
    write_sensorium(session, tmp_path / "m", pad_to=None)
    assert not (tmp_path / "m" / "data" / "videos").exists()
    assert np.load(tmp_path / "m" / "data" / "responses" / "2.npy").shape == (7, 25)
    assert_same_session(read_sensorium(tmp_path / "m"), session)


def test_load_and_save_session_dispatch_to_sensorium(tmp_path: Path) -> None:
    session = make_session(seed=2)
    save_session(session, tmp_path / "mouse")
    assert_same_session(load_session(tmp_path / "mouse", tier="train"), session.select_trials(tier="train"))


def test_trial_whose_last_frames_report_nothing_survives_via_n_frames(tmp_path: Path) -> None:
    session = make_session(seed=3)
    session.traces[session.trials[0].stop - 2 : session.trials[0].stop] = np.nan
    write_sensorium(session, tmp_path / "m")
    assert_same_session(read_sensorium(tmp_path / "m"), session)
    # Without the neurocine length file a reader can only trim by the padding rule.
    (tmp_path / "m" / "meta" / "trials" / "n_frames.npy").unlink()
    assert read_sensorium(tmp_path / "m").trials[0].n_frames == LENGTHS[0] - 2


# ---------------------------------------------------------------------------------------------- selection
def test_selection_by_index_and_tier(written: tuple[Session, Path]) -> None:
    session, folder = written
    got = read_sensorium(folder, trials=[2, 0, 2])
    assert got.trial_indices() == [0, 2]
    assert_same_session(got, session.select_trials([0, 2]))
    assert read_sensorium(folder, tier="train").trial_indices() == [0, 2]
    assert read_sensorium(folder, tier="oracle").trial_indices() == [1]
    assert read_sensorium(folder, trials=[np.int64(3)], tier="final_test_main").trials == [
        Trial(3, 0, LENGTHS[3], "final_test_main")
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tier": "holdout"}, "unknown tier 'holdout'"),
        ({"tier": "live_test_bonus"}, "no trials in tier 'live_test_bonus'"),
        ({"trials": [1, 9]}, "no trial [9]"),
        ({"trials": [-1]}, "no trial [-1]"),
        ({"trials": [1.5]}, "not an integer"),
        ({"trials": []}, "no trials selected"),
        ({"trials": [0, 1], "tier": "oracle"}, "trial 0 is in tier 'train'"),
    ],
)
def test_bad_selection_is_a_format_error(written: tuple[Session, Path], kwargs: dict, message: str) -> None:
    _, folder = written
    with pytest.raises(FormatError) as err:
        read_sensorium(folder, **kwargs)
    assert message in str(err.value) and str(folder) in str(err.value)


# ---------------------------------------------------------------------------------------------- foreign folders
def test_hand_made_folder_trims_padding_and_keeps_nan_neurons(tmp_path: Path) -> None:
    """A folder as Sensorium ships it: float videos with NaN padding, no unit ids, no length file."""
    rng = np.random.default_rng(4)
    folder = tmp_path / "dynamic29156"
    lengths = {0: 300, 1: 250, 2: 120}
    for sub in ("videos", "responses", "behavior", "pupil_center"):
        (folder / "data" / sub).mkdir(parents=True)
    (folder / "meta" / "trials").mkdir(parents=True)
    expected_frames = {}
    for i, n in lengths.items():
        video = np.full((36, 64, 300), np.nan)  # float64, as np.save of a float array gives
        frames = rng.integers(0, 256, size=(36, 64, n))
        video[:, :, :n] = frames + rng.uniform(-1e-4, 1e-4, size=frames.shape)  # float noise is tolerated
        resp = np.full((5, 300), np.nan, dtype=np.float32)
        resp[:, :n] = rng.random((5, n))
        resp[3, : n // 2] = np.nan  # a neuron not reported for a while
        resp[:, n // 3] = np.nan  # a frame in which no neuron was reported: not padding, it is inside
        np.save(folder / "data" / "videos" / f"{i}.npy", video)
        np.save(folder / "data" / "responses" / f"{i}.npy", resp)
        np.save(folder / "data" / "behavior" / f"{i}.npy", rng.random((2, 300)).astype(np.float32))
        np.save(folder / "data" / "pupil_center" / f"{i}.npy", rng.random((2, 300)).astype(np.float32))
        expected_frames[i] = (frames, resp[:, :n])
    np.save(folder / "meta" / "trials" / "tiers.npy", np.array(["train", "oracle", "none"]))

    got = read_sensorium(folder)
    assert [tr.n_frames for tr in got.trials] == [300, 250, 120]
    assert [tr.tier for tr in got.trials] == ["train", "oracle", "none"]
    np.testing.assert_array_equal(got.neuron_ids, np.arange(5))
    assert got.mouse_id == "dynamic29156" and got.stimulus is not None
    for tr in got.trials:
        frames, resp = expected_frames[tr.index]
        np.testing.assert_array_equal(got.stimulus[tr.start : tr.stop], np.moveaxis(frames, 2, 0))
        np.testing.assert_array_equal(got.traces[tr.start : tr.stop], resp.T)
        assert np.isnan(got.traces[tr.start + tr.n_frames // 3]).all()


def test_uint8_stored_video_reads_back(written: tuple[Session, Path]) -> None:
    session, folder = written
    for path in (folder / "data" / "videos").glob("*.npy"):
        stored = np.load(path)
        np.save(path, np.nan_to_num(stored, nan=0).astype(np.uint8))
    assert_same_session(read_sensorium(folder), session)


def test_a_folder_mixing_float_and_integer_trials_is_an_error_naming_both(written: tuple[Session, Path]) -> None:
    _, folder = written
    path = folder / "data" / "videos" / "2.npy"
    np.save(path, np.nan_to_num(np.load(path), nan=0).astype(np.uint8))
    with pytest.raises(FormatError, match="must be float in every trial or in none") as err:
        read_sensorium(folder)
    assert str(path) in str(err.value) and str(folder / "data" / "videos" / "0.npy") in str(err.value)


def test_writer_temporary_files_are_ignored(written: tuple[Session, Path]) -> None:
    session, folder = written
    (folder / "data" / "responses" / ".9.npy.tmp").write_bytes(b"half a file")
    (folder / "data" / "videos" / "9.npy").write_bytes(b"orphan from a crash before responses/9.npy")
    assert_same_session(read_sensorium(folder), session)


def test_a_lost_responses_file_is_an_error_naming_it(written: tuple[Session, Path]) -> None:
    _, folder = written
    (folder / "data" / "responses" / "1.npy").unlink()  # trial 1 of 3: not a trial still being written
    with pytest.raises(FormatError, match=r"responses/1\.npy: missing, but .*behavior/1\.npy exists"):
        read_sensorium(folder)


# ---------------------------------------------------------------------------------------------- statistics
def test_statistics_match_numpy_on_valid_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sensorium_writer, "_MEDIAN_BLOCK_BYTES", 1)  # one neuron per block: exercises the blocking
    session = make_session(seed=5, lengths=(20, 13, 25, 10))  # even frame count: median between two values
    last = session.trials[-1]
    session.traces[: last.start, 2] = np.nan  # a neuron reported in the last trial only
    fully = session.traces[last.start : last.stop]
    fully[np.isnan(fully)] = 0.25  # a trial without any NaN takes the writer's fast path
    write_sensorium(session, tmp_path / "m", pad_to=40)
    stats = read_sensorium_statistics(tmp_path / "m")
    assert set(stats) == {"videos", "responses", "behavior", "pupil_center"}

    def check(got: dict[str, np.ndarray], values: np.ndarray, shape: tuple[int, ...]) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN neuron
            want = {
                "min": np.nanmin(values, axis=0),
                "max": np.nanmax(values, axis=0),
                "mean": np.nanmean(values, axis=0),
                "median": np.nanmedian(values, axis=0),
                "std": np.nanstd(values, axis=0),
            }
        for name, value in want.items():
            assert got[name].shape == shape, name
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=name)

    pixels = session.stimulus.reshape(-1, 1).astype(np.float64)
    check({k: v.reshape(1) for k, v in stats["videos"].items()}, pixels, (1,))
    assert stats["videos"]["mean"].shape == ()
    check(stats["responses"], session.traces.astype(np.float64), (7,))
    assert not np.isnan(session.traces[last.start : last.stop]).any()
    check(stats["behavior"], session.behaviour[:, [1, 0]].astype(np.float64), (2,))
    check(stats["pupil_center"], session.behaviour[:, [2, 3]].astype(np.float64), (2,))

    # A neuron never reported has NaN statistics; no videos written means no video statistics.
    with SensoriumWriter(tmp_path / "n", [5, 6]) as writer:
        resp = np.array([[1.0, np.nan], [4.0, np.nan]], np.float32)
        writer.add_trial(0, "train", None, resp, np.zeros((2, 4), np.float32))
    never = read_sensorium_statistics(tmp_path / "n")
    assert "videos" not in never
    assert all(np.isnan(value[1]) for value in never["responses"].values())
    assert never["responses"]["median"][0] == 2.5 and never["responses"]["std"][0] == 1.5


# ---------------------------------------------------------------------------------------------- writer input
def _trial(n: int = 10, n_neurons: int = 3, frame: tuple[int, int] = (4, 5)) -> dict:
    rng = np.random.default_rng(6)
    return {
        "video": rng.integers(0, 256, size=(n, *frame), dtype=np.uint8),
        "responses": rng.random((n, n_neurons)).astype(np.float32),
        "behaviour": rng.random((n, 4)).astype(np.float32),
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"responses": np.zeros((10, 4), np.float32)}, "responses must be (T, N=3)"),
        ({"responses": np.zeros(10, np.float32)}, "responses must be (T, N=3)"),
        ({"behaviour": np.zeros((10, 2), np.float32)}, "behaviour must be (T=10, 4)"),
        ({"behaviour": np.zeros((9, 4), np.float32)}, "behaviour must be (T=10, 4)"),
        ({"video": np.zeros((10, 36, 64), np.uint8)}, "video must be (T=10, 4, 5)"),
        ({"video": np.zeros((10, 4, 5), np.float32)}, "video must be uint8"),
        ({"tier": "test"}, "unknown tier 'test'"),
        ({"pad_to": 8}, "10 frames, longer than pad_to=8"),
        ({"index": -2}, "index must be >= 0"),
    ],
)
def test_writer_refuses_bad_trials(tmp_path: Path, change: dict, message: str) -> None:
    args = {"index": 0, "tier": "train", **_trial(), "pad_to": 300, **change}
    writer = SensoriumWriter(tmp_path / "m", [1, 2, 3], frame_shape=(4, 5))
    with pytest.raises(FormatError) as err:
        writer.add_trial(**args)
    assert message in str(err.value)
    assert not list((tmp_path / "m" / "data" / "responses").iterdir()), "a refused trial left files"


def test_writer_refuses_duplicates_mixing_and_gaps(tmp_path: Path) -> None:
    writer = SensoriumWriter(tmp_path / "m", [1, 2, 3], frame_shape=(4, 5))
    writer.add_trial(0, "train", **_trial())
    with pytest.raises(FormatError, match="already written"):
        writer.add_trial(0, "train", **_trial())
    with pytest.raises(FormatError, match="lacks a video"):
        writer.add_trial(1, "train", **{**_trial(), "video": None})
    writer.add_trial(2, "oracle", **_trial())
    with pytest.raises(FormatError, match=r"missing \[1\]"):
        writer.close()
    writer.add_trial(1, "train", **_trial(n=4))  # filling the gap makes the folder complete
    writer.close()
    assert read_sensorium(tmp_path / "m").trial_indices() == [0, 1, 2]


def test_writer_constructor_checks(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="not unique"):
        SensoriumWriter(tmp_path / "a", [1, 1])
    with pytest.raises(FormatError, match="1-D integer"):
        SensoriumWriter(tmp_path / "a", [0.5, 1.5])
    with pytest.raises(FormatError, match=r"cell_coordinates must be \(N=2, 3\)"):
        SensoriumWriter(tmp_path / "a", [1, 2], cell_coordinates=np.zeros((2, 2)))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("x")
    with pytest.raises(FormatError, match="not empty"):
        SensoriumWriter(tmp_path / "full", [1])
    with pytest.raises(FormatError, match="no trials were added"):
        SensoriumWriter(tmp_path / "empty", [1]).close()


def test_writer_context_manager(tmp_path: Path) -> None:
    coords = np.arange(9, dtype=np.float32).reshape(3, 3)
    with SensoriumWriter(tmp_path / "ok", [7, 8, 9], cell_coordinates=coords, frame_shape=(4, 5)) as writer:
        writer.add_trial(0, "train", **_trial())
    np.testing.assert_array_equal(np.load(tmp_path / "ok" / "meta" / "neurons" / "cell_motor_coordinates.npy"), coords)
    with pytest.raises(RuntimeError), SensoriumWriter(tmp_path / "bad", [7, 8, 9], frame_shape=(4, 5)) as writer:
        writer.add_trial(0, "train", **_trial())
        raise RuntimeError("simulator crashed")
    assert not (tmp_path / "bad" / "meta").exists(), "an interrupted folder must look unfinished"


def test_write_sensorium_checks_before_writing(tmp_path: Path) -> None:
    session = make_session(seed=7).select_trials([1, 3])
    with pytest.raises(FormatError, match=r"not 0\.\.1; pass renumber=True"):
        write_sensorium(session, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    with pytest.raises(FormatError, match="longer than pad_to=10"):
        write_sensorium(session, tmp_path / "b", pad_to=10, renumber=True)
    slow = Session(**{**session.__dict__, "frame_rate": 15.0})
    with pytest.raises(FormatError, match="30 Hz"):
        write_sensorium(slow, tmp_path / "c", renumber=True)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
    write_sensorium(session, tmp_path / "d", renumber=True)
    assert [(tr.index, tr.tier) for tr in read_sensorium(tmp_path / "d").trials] == [
        (0, "oracle"),
        (1, "final_test_main"),
    ]
    write_sensorium(make_session(seed=8, lengths=(3,), tiers=("none",)), tmp_path / "d", overwrite=True)
    assert read_sensorium(tmp_path / "d").trial_indices() == [0]


# ---------------------------------------------------------------------------------------------- bad folders
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _padded_ones(n_neurons: int, n_valid: int, width: int) -> np.ndarray:
    out = np.full((n_neurons, width), np.nan, np.float32)
    out[:, :n_valid] = 1.0
    return out


def _padded_video(value: float, n_valid: int, width: int) -> np.ndarray:
    out = np.full((36, 64, width), np.nan)
    out[:, :, :n_valid] = value
    return out


Mutation = Callable[[Path], None]

BAD_FOLDERS: list[tuple[str, Mutation, str, str]] = [
    ("truncated responses", lambda f: _truncate(f / "data/responses/1.npy"), "data/responses/1.npy", "truncated"),
    ("truncated video", lambda f: _truncate(f / "data/videos/2.npy"), "data/videos/2.npy", "truncated"),
    (
        "garbage bytes",
        lambda f: (f / "data/behavior/0.npy").write_bytes(b"\x00" * 64),
        "data/behavior/0.npy",
        "not a readable .npy",
    ),
    ("missing behaviour file", lambda f: (f / "data/behavior/3.npy").unlink(), "data/behavior/3.npy", "missing file"),
    ("missing folder", lambda f: shutil.rmtree(f / "data/pupil_center"), "data/pupil_center", "missing folder"),
    (
        "T mismatch",
        lambda f: np.save(f / "data/behavior/1.npy", np.zeros((2, 29), np.float32)),
        "data/behavior/1.npy",
        "29 frames",
    ),
    (
        "behaviour channels",
        lambda f: np.save(f / "data/pupil_center/1.npy", np.zeros((3, 30), np.float32)),
        "data/pupil_center/1.npy",
        "expected shape (2, T)",
    ),
    (
        "wrong ndim",
        lambda f: np.save(f / "data/responses/2.npy", np.zeros(30, np.float32)),
        "data/responses/2.npy",
        "expected 2 dimensions",
    ),
    (
        "video ndim",
        lambda f: np.save(f / "data/videos/2.npy", np.zeros((36, 30), np.float32)),
        "data/videos/2.npy",
        "expected 3 dimensions",
    ),
    (
        "N between trials",
        lambda f: np.save(f / "data/responses/2.npy", _padded_ones(8, 25, 30)),
        "data/responses/2.npy",
        "8 neurons",
    ),
    (
        "N vs unit ids",
        lambda f: np.save(f / "meta/neurons/unit_ids.npy", np.arange(6)),
        "meta/neurons/unit_ids.npy",
        "lists 6 neurons",
    ),
    (
        "duplicate unit ids",
        lambda f: np.save(f / "meta/neurons/unit_ids.npy", np.zeros(7, np.int64)),
        "meta/neurons/unit_ids.npy",
        "not unique",
    ),
    (
        "coordinates",
        lambda f: np.save(f / "meta/neurons/cell_motor_coordinates.npy", np.zeros((7, 2))),
        "meta/neurons/cell_motor_coordinates.npy",
        "expected shape (N=7, 3)",
    ),
    ("missing tiers", lambda f: (f / "meta/trials/tiers.npy").unlink(), "meta/trials/tiers.npy", "missing file"),
    (
        "short tiers",
        lambda f: np.save(f / "meta/trials/tiers.npy", np.array(["train", "oracle"])),
        "meta/trials/tiers.npy",
        "holds trial 3",
    ),
    (
        "unknown tier in file",
        lambda f: np.save(f / "meta/trials/tiers.npy", np.array(["train", "x", "a", "b"])),
        "meta/trials/tiers.npy",
        "entry 1 is 'x'",
    ),
    (
        "pickled tiers",
        lambda f: np.save(f / "meta/trials/tiers.npy", np.array(["train"] * 4, dtype=object)),
        "meta/trials/tiers.npy",
        "not a readable .npy",
    ),
    (
        "stray file",
        lambda f: np.save(f / "data/responses/extra.npy", np.zeros(1)),
        "data/responses/extra.npy",
        "unexpected file name",
    ),
    (
        "no trials",
        lambda f: [p.unlink() for p in (f / "data/responses").glob("*.npy")],
        "data/responses",
        "no trial files",
    ),
    (
        "pixels out of range",
        lambda f: np.save(f / "data/videos/1.npy", _padded_video(300.0, 13, 30)),
        "data/videos/1.npy",
        "not an 8-bit value",
    ),
    (
        "pixels on a 0..1 scale below zero",
        lambda f: np.save(f / "data/videos/1.npy", _padded_video(-1.5, 13, 30)),
        "data/videos/1.npy",
        "frame 0 pixel (y=0, x=0) is -1.5",
    ),
    (
        "infinite response",
        lambda f: np.save(f / "data/responses/1.npy", _padded_ones(7, 13, 30) * np.inf),
        "data/responses/1.npy",
        "infinite values are not measurements",
    ),
    (
        "a video going on after n_frames",
        lambda f: np.save(f / "data/videos/1.npy", _padded_video(3.0, 30, 30)),
        "data/videos/1.npy",
        "column 13 holds values, but meta/trials/n_frames.npy ends trial 1 after 13 frames",
    ),
    (
        "pickled video",
        lambda f: np.save(f / "data/videos/1.npy", np.array([None] * 30, dtype=object).reshape(1, 1, 30)),
        "data/videos/1.npy",
        "refusing to unpickle",
    ),
    (
        "Fortran-ordered responses",
        lambda f: np.save(f / "data/responses/1.npy", np.asfortranarray(_padded_ones(7, 13, 30))),
        "data/responses/1.npy",
        "Fortran order",
    ),
    (
        "NaN inside a trial's video",
        lambda f: np.save(f / "data/videos/0.npy", np.full((36, 64, 30), np.nan)),
        "data/videos/0.npy",
        "frame 0 pixel",
    ),
    (
        "length file beyond storage",
        lambda f: np.save(f / "meta/trials/n_frames.npy", np.array([20, 13, 99, 9])),
        "meta/trials/n_frames.npy",
        "stores only 30",
    ),
    (
        "length file too short",
        lambda f: np.save(f / "meta/trials/n_frames.npy", np.array([20, 13, 5, 9])),
        "data/responses/2.npy",
        "column 5 holds responses",
    ),
]


@pytest.mark.parametrize(("mutate", "where", "fault"), [b[1:] for b in BAD_FOLDERS], ids=[b[0] for b in BAD_FOLDERS])
def test_bad_folder_is_a_format_error_naming_the_file(
    written: tuple[Session, Path], mutate: Mutation, where: str, fault: str
) -> None:
    _, folder = written
    mutate(folder)
    with pytest.raises(FormatError) as err:
        read_sensorium(folder)
    assert str(folder / where) in str(err.value)
    assert fault in str(err.value)


def test_missing_mouse_folder(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="no such folder"):
        read_sensorium(tmp_path / "nowhere")
