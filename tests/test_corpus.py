"""corpus.py, the data file as the entry points read it: a missing, binary, short or special file,
or a folder, is one line saying which (in-process through main(argv))."""
import os

from conftest import assert_one_line_error, train_error


def test_a_missing_data_file_says_how_to_get_it(tmp_path, run_main):
    assert_one_line_error(run_main("train.py", "--data", tmp_path / "nope.txt"), "data file not found", "prepare.py")


def test_a_binary_data_file_is_not_utf8(tmp_path, run_main):
    binary = tmp_path / "binary.txt"
    binary.write_bytes(bytes(range(256)) * 100)
    assert_one_line_error(run_main("train.py", "--data", binary), "not UTF-8")


def test_a_data_file_shorter_than_a_batch_is_too_short(tmp_path, data_path, run_main):
    short = tmp_path / "short.txt"
    short.write_text(open(data_path).read()[:1000])
    assert_one_line_error(run_main("train.py", "--data", short, "--device", "cpu"), "data too short")


def test_a_folder_as_data_says_it_is_a_folder(tmp_path, tiny_ckpt, run_main):
    assert_one_line_error(run_main("evaluate.py", "--ckpt", tiny_ckpt, "--data", tmp_path), "is a folder")
    assert_one_line_error(run_main("train.py", "--data", tmp_path), "is a folder")


def test_a_fifo_as_data_says_what_it_is(capsys, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    message = train_error(capsys, ["--data", str(fifo), "--device", "cpu"])
    assert "is a FIFO (named pipe), not a file" in message and "not found" not in message
