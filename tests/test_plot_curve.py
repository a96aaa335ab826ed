"""plot_curve.py, in-process: what it plots and where it writes it, and bad input as one line,
nothing of the user's overwritten."""
import errno
import json
import os

import pytest
from PIL import Image

import plot_curve
from conftest import assert_one_line_error


def write_log(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def curve_log(path, train, val):
    """A train.py log.jsonl: train rows, then val rows, one a minute."""
    with open(path, "w") as f:
        for i, loss in enumerate(train):
            f.write(json.dumps({"step": 10 * i, "train_loss": loss, "lr": 1e-3, "time": 60.0 * i}) + "\n")
        for i, v in enumerate(val):
            f.write(json.dumps({"step": 100 * i, "val": v, "val_se": 0.01, "time": 60.0 * i + 30}) + "\n")
    return str(path)


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


def test_an_unknown_format_is_one_line_error_and_writes_nothing(tmp_path, run_main):
    log = write_log(tmp_path / "log.jsonl", [{"time": 60, "val": 1.9}])
    r = run_main("plot_curve.py", log, "--out", tmp_path / "curve.pgn")
    assert_one_line_error(r, "plot_curve.py: error: cannot write", "curve.pgn", "not supported")
    assert os.listdir(tmp_path) == ["log.jsonl"]


def test_the_image_is_written_where_out_says(tmp_path, capsys):
    log = write_log(tmp_path / "log.jsonl", [{"time": 60, "train_loss": 2.0, "val": 1.9}])
    plot_curve.main([str(log), "--out", str(tmp_path / "c")])
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'c.png'}"


def test_plot_curve_prints_the_path_it_wrote(tmp_path, run_main):
    log = write_log(tmp_path / "log.jsonl", [{"step": 0, "train_loss": 2.0, "time": 0},
                                             {"step": 10, "val": 1.9, "time": 60}])
    folder = tmp_path / "plots"
    folder.mkdir()
    for out, written in ((folder, folder / "curve.png"), (tmp_path / "curve", tmp_path / "curve.png"),
                         (tmp_path / "c.svg", tmp_path / "c.svg")):
        r = run_main("plot_curve.py", log, "--out", out)
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"wrote {written}\n" and written.is_file()
    assert sorted(os.listdir(tmp_path)) == ["c.svg", "curve.png", "log.jsonl", "plots"]
    assert "curve.png" in " ".join(run_main("plot_curve.py", "--help").stdout.split())


def test_plot_curve_writes_a_png(tmp_path, run_main):
    log = curve_log(tmp_path / "log.jsonl", train=[2.0, 1.5, 1.2], val=[1.8, 1.4])
    out = tmp_path / "curve.png"
    r = run_main("plot_curve.py", log, "--out", out)
    assert r.returncode == 0, r.stderr
    assert Image.open(out).format == "PNG"


def test_plot_curve_y_range_shows_every_value_of_curves_with_different_ranges(tmp_path):
    import matplotlib.pyplot as plt
    low = curve_log(tmp_path / "low.jsonl", train=[1.3, 0.9, 0.7], val=[1.2, 1.0, 0.95])
    high = curve_log(tmp_path / "high.jsonl", train=[4.0, 3.0], val=[2.6, 5.5, 9.0])  # rising, like the AR curve
    fig, ax = plot_curve.plot([low, high], ["low", "high"])
    bottom, top = ax.get_ylim()
    assert bottom <= 0.7 and top >= 9.0, (bottom, top)
    plt.close(fig)


def test_plot_curve_missing_file_is_one_line_error(tmp_path, run_main):
    r = run_main("plot_curve.py", tmp_path / "nope.jsonl")
    assert_one_line_error(r, "plot_curve.py: error: cannot read", "nope.jsonl")


def test_plot_curve_bad_logs_are_user_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "train_loss": 2.0, "time": 1}\nnot json\n')
    with pytest.raises(plot_curve.UserError, match="line 2 is not a train.py log row"):
        plot_curve.read(str(bad))
    no_val = curve_log(tmp_path / "noval.jsonl", train=[2.0], val=[])
    with pytest.raises(plot_curve.UserError, match="no \\(finite\\) validation rows"):
        plot_curve.read(no_val)


def test_plot_curve_on_a_full_disk_keeps_the_previous_image(tmp_path, monkeypatch):
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"step": 10, "val": 1.9, "time": 60}) + "\n")
    (tmp_path / "curve.png").write_bytes(b"the previous image")
    import matplotlib.figure

    def full_disk(fig, path, **kwargs):
        with open(path, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full_disk)
    with pytest.raises(SystemExit) as stop:
        plot_curve.main([str(log), "--out", str(tmp_path / "curve.png")])
    assert str(stop.value.code) == f"plot_curve.py: error: cannot write {tmp_path / 'curve.png'}: " \
                                   "No space left on device"
    assert (tmp_path / "curve.png").read_bytes() == b"the previous image"
    assert sorted(os.listdir(tmp_path)) == ["curve.png", "log.jsonl"]
