"""plot_curve.py, in-process: what it plots, and bad input as one line."""
import json

import pytest

import plot_curve


def write_log(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_nan_and_inf_values_are_left_out_of_the_curve_and_the_best(tmp_path, capsys):
    log = write_log(tmp_path / "log.jsonl", [{"time": 60, "train_loss": 2.0, "val": 1.9},
                                             {"time": 120, "train_loss": float("nan"), "val": float("inf")},
                                             {"time": 180, "val": 1.7}])
    train, val = plot_curve.read(str(log))
    assert train == [(1.0, 2.0)] and val == [(1.0, 1.9), (3.0, 1.7)]
    assert "2 NaN/inf value(s) left out" in capsys.readouterr().err


def test_a_log_whose_validation_is_all_nan_is_an_error(tmp_path):
    log = write_log(tmp_path / "log.jsonl", [{"time": 60, "val": float("nan")}])
    with pytest.raises(plot_curve.UserError, match="no \\(finite\\) validation rows"):
        plot_curve.read(str(log))


def test_empty_out_is_a_one_line_error(tmp_path):
    log = write_log(tmp_path / "log.jsonl", [{"time": 60, "val": 1.9}])
    with pytest.raises(SystemExit, match="--out is empty"):
        plot_curve.main([str(log), "--out", ""])


def test_a_failed_write_leaves_no_file_behind(tmp_path):
    log = write_log(tmp_path / "log.jsonl", [{"time": 60, "val": 1.9}])
    with pytest.raises(SystemExit, match="cannot write"):
        plot_curve.main([str(log), "--out", str(tmp_path / "curve.pgn")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl"]


def test_the_image_is_written_where_out_says(tmp_path, capsys):
    log = write_log(tmp_path / "log.jsonl", [{"time": 60, "train_loss": 2.0, "val": 1.9}])
    plot_curve.main([str(log), "--out", str(tmp_path / "c")])
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'c.png'}"
