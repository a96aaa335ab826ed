"""Issue 22: what a user who mistypes a flag at 2 a.m. expects of plot_curve.py and
tools/export_weights.py: one line on stderr saying what is wrong, a non-zero exit, nothing of
theirs written or overwritten (diffusion_process.py's: test_diffusion_process.py). CPU only,
a few seconds each."""

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from conftest import ROOT, assert_one_line_error, run_script


# -----------------------------------------------------------------------------
# plot_curve.py --out

def write_log(path):
    path.write_text('{"step": 0, "train_loss": 2.0, "time": 0}\n{"step": 10, "val": 1.9, "time": 60}\n')
    return path


def test_plot_curve_prints_the_path_it_wrote(tmp_path):
    log = write_log(tmp_path / "log.jsonl")
    folder = tmp_path / "plots"
    folder.mkdir()
    for out, written in ((folder, folder / "curve.png"), (tmp_path / "curve", tmp_path / "curve.png"),
                         (tmp_path / "c.svg", tmp_path / "c.svg")):
        r = run_script("plot_curve.py", log, "--out", out)
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"wrote {written}\n" and written.is_file()
    assert sorted(os.listdir(tmp_path)) == ["c.svg", "curve.png", "log.jsonl", "plots"]
    assert "curve.png" in " ".join(run_script("plot_curve.py", "--help").stdout.split())


def test_plot_curve_unknown_format_is_one_line_error(tmp_path):
    log = write_log(tmp_path / "log.jsonl")
    r = run_script("plot_curve.py", log, "--out", tmp_path / "curve.pgn")
    assert_one_line_error(r, "plot_curve.py: error: cannot write", "curve.pgn", "not supported")
    assert os.listdir(tmp_path) == ["log.jsonl"]


# -----------------------------------------------------------------------------
# tools/export_weights.py

@pytest.fixture
def keep(tmp_path):
    """A file the export must not touch."""
    path = tmp_path / "keep.pt"
    path.write_bytes(b"the user's")
    return path


def test_export_refuses_weights_that_are_not_finite(tmp_path, tiny_ckpt, keep):
    from checkpoint import read_checkpoint, write_checkpoint
    ckpt = read_checkpoint(tiny_ckpt)
    name = sorted(k for k, v in ckpt["model"].items() if v.is_floating_point())[-1]
    ckpt["model"][name].view(-1)[0] = float("nan")
    write_checkpoint(ckpt, str(tmp_path / "nan.pt"))  # a valid checksum: the file is not corrupt
    r = run_script("tools/export_weights.py", tmp_path / "nan.pt", keep)
    assert_one_line_error(r, "export_weights.py: error:", f"tensor {name}", "NaN/inf")
    assert keep.read_bytes() == b"the user's"


def test_export_into_a_folder_writes_there_under_the_source_name(tmp_path, tiny_ckpt):
    folder = tmp_path / "weights"
    folder.mkdir()
    r = run_script("tools/export_weights.py", tiny_ckpt, folder)
    assert r.returncode == 0, r.stderr
    assert os.listdir(folder) == ["best.pt"] and os.listdir(tmp_path) == ["weights"], "no weights.tmp<pid>"
    assert f"-> {folder / 'best.pt'}:" in r.stdout


def test_export_over_its_own_source_is_one_line_error(tmp_path, tiny_ckpt):
    src = tmp_path / "best.pt"
    shutil.copy(tiny_ckpt, src)
    before = src.read_bytes()
    for dst in (src, tmp_path):  # the file, and its folder (where the source's name is the source)
        r = run_script("tools/export_weights.py", src, dst)
        assert_one_line_error(r, "export_weights.py: error:", "is the source checkpoint itself")
    assert src.read_bytes() == before and os.listdir(tmp_path) == ["best.pt"]


def test_export_into_a_read_only_folder_is_a_plain_one_line_error(tiny_ckpt):
    """Run as another user where the tests run as root (root writes anywhere)."""
    as_user = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root, and no setpriv to drop to another user")
        as_user = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    work = tempfile.mkdtemp()  # not under pytest's tmp_path: the other user must reach it
    try:
        os.chmod(work, 0o755)
        src, folder = os.path.join(work, "best.pt"), os.path.join(work, "ro")
        shutil.copy(tiny_ckpt, src)
        os.chmod(src, 0o644)
        os.mkdir(folder, 0o555)
        r = subprocess.run([*as_user, sys.executable, os.path.join(ROOT, "tools", "export_weights.py"), src,
                            os.path.join(folder, "out.pt")], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert_one_line_error(r, "export_weights.py: error: cannot write", "Permission denied")
        assert "enforce fail" not in r.stderr and os.listdir(folder) == []
    finally:
        os.chmod(work, 0o700)
        shutil.rmtree(work)


def test_export_cleans_torch_save_errors(tmp_path, tiny_ckpt, monkeypatch, capsys):
    """A failure in torch.save itself (a full disk, say): no '[enforce fail at ...]', no temporary file."""
    import torch
    monkeypatch.syspath_prepend(os.path.join(ROOT, "tools"))
    import export_weights

    def full_disk(obj, f):  # a path or an open file
        (open(f, "wb") if isinstance(f, str) else f).write(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 512 vs 448")

    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(sys, "argv", ["export_weights.py", tiny_ckpt, str(tmp_path / "out.pt")])
    with pytest.raises(SystemExit) as e:
        export_weights.main()
    assert str(e.value) == f"export_weights.py: error: no space left on device writing {tmp_path / 'out.pt'}; " \
                           "there was no earlier copy"
    assert os.listdir(tmp_path) == []
