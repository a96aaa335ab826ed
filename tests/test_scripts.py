"""The helper scripts: plot_curve.py, data/prepare.py, tools/export_weights.py
(diffusion_process.py: test_diffusion_process.py). CPU only, a few seconds each."""

import json
import os

import pytest
from PIL import Image

from conftest import assert_one_line_error, run_script


def write_log(path, train, val):
    """A train.py log.jsonl: train rows, then val rows, one a minute."""
    with open(path, "w") as f:
        for i, loss in enumerate(train):
            f.write(json.dumps({"step": 10 * i, "train_loss": loss, "lr": 1e-3, "time": 60.0 * i}) + "\n")
        for i, v in enumerate(val):
            f.write(json.dumps({"step": 100 * i, "val": v, "val_se": 0.01, "time": 60.0 * i + 30}) + "\n")
    return str(path)


# -----------------------------------------------------------------------------
# plot_curve.py

def test_plot_curve_y_range_shows_every_value_of_curves_with_different_ranges(tmp_path):
    import plot_curve
    import matplotlib.pyplot as plt
    low = write_log(tmp_path / "low.jsonl", train=[1.3, 0.9, 0.7], val=[1.2, 1.0, 0.95])
    high = write_log(tmp_path / "high.jsonl", train=[4.0, 3.0], val=[2.6, 5.5, 9.0])  # rising, like the AR curve
    fig, ax = plot_curve.plot([low, high], ["low", "high"])
    bottom, top = ax.get_ylim()
    assert bottom <= 0.7 and top >= 9.0, (bottom, top)
    plt.close(fig)


def test_plot_curve_writes_a_png(tmp_path):
    log = write_log(tmp_path / "log.jsonl", train=[2.0, 1.5, 1.2], val=[1.8, 1.4])
    out = tmp_path / "curve.png"
    r = run_script("plot_curve.py", log, "--out", out)
    assert r.returncode == 0, r.stderr
    assert Image.open(out).format == "PNG"


def test_plot_curve_missing_file_is_one_line_error(tmp_path):
    r = run_script("plot_curve.py", tmp_path / "nope.jsonl")
    assert_one_line_error(r, "plot_curve.py: error: cannot read", "nope.jsonl")


def test_plot_curve_bad_logs_are_user_errors(tmp_path):
    import plot_curve
    from cli import UserError
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "train_loss": 2.0, "time": 1}\nnot json\n')
    with pytest.raises(UserError, match="line 2 is not a train.py log row"):
        plot_curve.read(str(bad))
    no_val = write_log(tmp_path / "noval.jsonl", train=[2.0], val=[])
    with pytest.raises(UserError, match="no \\(finite\\) validation rows"):
        plot_curve.read(no_val)


# -----------------------------------------------------------------------------
# data/prepare.py

def test_prepare_creates_a_missing_out_folder(tmp_path, data_path):
    out = tmp_path / "new" / "nested" / "ts.txt"
    r = run_script("data/prepare.py", "--from", data_path, "--out", out)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == open(data_path, "rb").read()


def test_prepare_out_under_a_file_is_one_line_error(tmp_path, data_path):
    (tmp_path / "file.txt").write_text("x")  # tests run as root: a file, not chmod, stops the write
    r = run_script("data/prepare.py", "--from", data_path, "--out", tmp_path / "file.txt" / "out.txt")
    assert_one_line_error(r, "prepare.py: error: cannot write", "is a file")
    assert os.listdir(tmp_path) == ["file.txt"]


# -----------------------------------------------------------------------------
# every script

def test_export_weights_missing_file_is_one_line_error(tmp_path):
    r = run_script("tools/export_weights.py", tmp_path / "none.pt", tmp_path / "out.pt")
    assert_one_line_error(r, "export_weights.py: error:", "not found")
    assert not (tmp_path / "out.pt").exists()


def test_bench_sample_and_quality_run_on_a_tiny_model(tiny_ckpt, tiny_ar_ckpt, data_path):
    r = run_script("bench.py", "--sample", "--ckpt", tiny_ckpt, "--device", "cpu", "--batch-sizes", "1,2",
                   "--runs", "1", "--warmup", "0", "--length", "32", "--steps", "4")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("new chars x") == 2 and "4 full forward passes alone" in r.stdout and "device cpu" in r.stdout
    r = run_script("quality.py", "--ckpt", tiny_ckpt, "--ar", tiny_ar_ckpt, "--data", data_path, "--prompts", "4",
                   "--prompt-chars", "8", "--device", "cpu", "--settings", "default", "block=8,cache=dual")
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 4 and rows[1].startswith("| real validation text") and "| block=8,cache=dual |" in rows[3]


def test_bench_training_times_the_trainers_step(data_path):
    r = run_script("bench.py", "--steps", "2", "--paths", "plain", "--data", data_path, "--device", "cpu",
                   "--n_layer", "1", "--n_embd", "32", "--n_head", "2", "--block_size", "16", "--batch_size", "4")
    assert r.returncode == 0, r.stderr
    assert "plain: fp32 eager" in r.stdout and "tokens/s" in r.stdout


@pytest.mark.parametrize("script, args, delay", [
    ("sample.py", ["--device", "cpu", "--length", "3000"], 0.3),   # while torch is imported
    ("evaluate.py", ["--device", "cpu"], 0.3),
    ("quality.py", ["--device", "cpu", "--prompts", "8"], 0.3),
    ("bench.py", ["--sample", "--device", "cpu", "--batch-sizes", "4"], 0.3),
    ("bench.py", ["--sample", "--device", "cpu", "--batch-sizes", "4"], 4.0),  # while it times
    ("plot_curve.py", ["assets/runs/i_reg.jsonl", "--out", "OUT"], 0.3),
])
def test_ctrl_c_at_any_time_exits_130_without_a_traceback(script, args, delay, tmp_path, data_path):
    import signal
    import subprocess
    import sys
    import time
    from conftest import ROOT
    args = [str(tmp_path / "x.png") if a == "OUT" else a for a in args]
    env = dict(os.environ, TINY_SHAKESPEARE=data_path)
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
