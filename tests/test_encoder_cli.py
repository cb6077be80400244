"""`neurocine export` and `neurocine train` argument handling, run in-process."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from neurocine.decoder.bench import encoder as bench_encoder
from neurocine.decoder.encoder import cli
from neurocine.decoder.encoder.checkpoint import load_encoder, save_checkpoint
from neurocine.decoder.encoder.export import onnx_session
from neurocine.decoder.encoder.model import build_encoder
from neurocine.decoder.encoder.presets import get_preset


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neurocine")
    sub = parser.add_subparsers(dest="verb", required=True)
    cli.register_train(sub)
    cli.register_export(sub)
    bench = sub.add_parser("bench").add_subparsers(dest="bench", required=True)
    bench_encoder.register(bench)
    return parser


@pytest.mark.slow  # an export at another window
def test_export_cli_writes_graphs_for_another_window(tmp_path, capsys) -> None:
    torch.set_num_threads(1)
    enc = build_encoder(get_preset("tiny"), {"a": 6, "b": 4}, seed=0)
    enc.stats["a"].response_std.copy_(torch.linspace(1, 2, 6))
    save_checkpoint(tmp_path / "model", enc, {"a": np.arange(6), "b": np.arange(10, 14)}, {"validation": None})
    reloaded, config = load_encoder(tmp_path / "model")
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in enc.state_dict().items())
    assert config["neuron_ids"]["b"] == [10, 11, 12, 13]

    args = _parser().parse_args(
        [
            "export",
            str(tmp_path / "model"),
            "--out",
            str(tmp_path / "onnx"),
            "--mouse",
            "a",
            "--window",
            "16",
            "--graphs",
            "forward",
        ]
    )
    assert args.func(args) == 0
    written = json.loads(capsys.readouterr().out)
    assert list(written) == ["a"]
    meta = json.loads((tmp_path / "onnx" / "a" / "graph.json").read_text())
    assert meta["window"] == 16 and meta["neuron_ids"] == list(range(6))
    session = onnx_session(tmp_path / "onnx" / "a" / "forward.onnx")
    video = np.full((1, 16, 36, 64), 100.0, dtype=np.float32)
    (pred,) = session.run(None, {"video": video, "behaviour": np.zeros((1, 16, 4), dtype=np.float32)})
    short, _ = load_encoder(tmp_path / "model", frames=8)
    with torch.no_grad():
        ref = short(torch.from_numpy(video), torch.zeros(1, 16, 4), "a") * enc.stats["a"].response_std[:, None]
    assert np.abs(pred - ref.numpy()).max() < 1e-4 * np.abs(ref.numpy()).max()


def test_cli_reports_bad_arguments(tmp_path, capsys) -> None:
    parser = _parser()
    args = parser.parse_args(["export", str(tmp_path), "--out", str(tmp_path / "o")])
    assert args.func(args) == 2
    assert "not a neurocine model folder" in capsys.readouterr().err
    args = parser.parse_args(["export", str(tmp_path), "--out", str(tmp_path / "o"), "--window", "31"])
    assert args.func(args) == 2
    args = parser.parse_args(
        ["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "m"), "--preset", "tiny", "--no-progress"]
    )
    assert args.func(args) == 2
    assert "cannot read the train tier" in capsys.readouterr().err
    args = parser.parse_args(["bench", "encoder", "--presets", "huge"])
    assert args.func(args) == 2
    assert "unknown presets ['huge']" in capsys.readouterr().err


def test_export_refuses_a_mouse_name_that_is_a_path(tmp_path, capsys) -> None:
    torch.set_num_threads(1)
    evil = str(tmp_path / "escaped")  # an absolute path as a mouse name: Path(out) / name would be it
    assert "." not in evil  # (the encoder itself refuses dots in mouse names)
    enc = build_encoder(get_preset("tiny"), {evil: 4}, seed=0)
    save_checkpoint(tmp_path / "model", enc, {evil: np.arange(4)}, {"validation": None})
    args = _parser().parse_args(["export", str(tmp_path / "model"), "--out", str(tmp_path / "a" / "b" / "onnx"),
                                 "--graphs", "forward"])
    assert args.func(args) == 2
    assert "cannot be folder names" in capsys.readouterr().err
    assert not (tmp_path / "escaped").exists()
