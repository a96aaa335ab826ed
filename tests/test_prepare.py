"""data/prepare.py: the data file copied from --from (or downloaded) only when its sha256 is right,
into a folder it creates; bad input is one line. In-process through main(argv)."""
import os

from conftest import assert_one_line_error


def test_prepare_verifies_the_checksum(tmp_path, data_path, run_main):
    out = tmp_path / "ts.txt"
    r = run_main("data/prepare.py", "--from", data_path, "--out", out)
    assert r.returncode == 0 and out.read_text() == open(data_path).read()
    bad = tmp_path / "bad.txt"
    bad.write_text("To be or not to be\n")
    assert_one_line_error(run_main("data/prepare.py", "--from", bad, "--out", tmp_path / "x.txt"), "sha256")
    assert not (tmp_path / "x.txt").exists()
    assert_one_line_error(run_main("data/prepare.py", "--from", tmp_path / "none.txt"), "cannot read")


def test_prepare_creates_a_missing_out_folder(tmp_path, data_path, run_main):
    out = tmp_path / "new" / "nested" / "ts.txt"
    r = run_main("data/prepare.py", "--from", data_path, "--out", out)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == open(data_path, "rb").read()


def test_prepare_out_under_a_file_is_one_line_error(tmp_path, data_path, run_main):
    (tmp_path / "file.txt").write_text("x")  # tests run as root: a file, not chmod, stops the write
    r = run_main("data/prepare.py", "--from", data_path, "--out", tmp_path / "file.txt" / "out.txt")
    assert_one_line_error(r, "prepare.py: error: cannot write", "is a file")
    assert os.listdir(tmp_path) == ["file.txt"]


def test_ctrl_c_while_downloading_or_writing_exits_130_and_leaves_no_file(tmp_path, data_path, run_main,
                                                                          monkeypatch):
    from conftest import entry_point
    prepare = entry_point("data/prepare.py")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(prepare, "fetch", interrupted)  # Ctrl-C during the download
    r = run_main("data/prepare.py", "--out", tmp_path / "ts.txt")
    assert r.returncode == 130 and "Traceback" not in r.stderr and os.listdir(tmp_path) == []
    monkeypatch.setattr(prepare.os, "replace", interrupted)  # during the write: its temp file is removed
    r = run_main("data/prepare.py", "--from", data_path, "--out", tmp_path / "ts.txt")
    assert r.returncode == 130 and "Traceback" not in r.stderr and os.listdir(tmp_path) == []
