"""train.py's flags and their messages (issue 31): both spellings of every flag, and one line
naming the real cause for the mistakes that used to be misreported or tracebacks."""

import os
import shutil
from dataclasses import fields

import pytest

import train
from cli import ArgumentParser
from conftest import TINY
from model import ModelConfig
from train_config import HELP, TrainConfig, add_train_flags, check_config


def train_error(capsys, argv):
    """train.main(argv)'s exit message: it must stop with one line, no traceback."""
    with pytest.raises(SystemExit) as stop:
        train.main(argv)
    message = str(stop.value.code)
    assert stop.value.code not in (0, None) and message.startswith("train.py: error: "), message
    assert "\n" not in message and "Traceback" not in capsys.readouterr().err
    return message


def flag_fields():
    return [f for cls in (ModelConfig, TrainConfig) for f in fields(cls) if HELP.get(f.name) is not None]


@pytest.mark.parametrize("field", [f for f in flag_fields() if "_" in f.name], ids=lambda f: f.name)
def test_every_flag_takes_both_spellings(field):
    """The README says --n_layer 4 or --n-layer 4, for every field: the booleans too (--distill_ema)."""
    p = ArgumentParser()
    add_train_flags(p)
    for name in (field.name, field.name.replace("_", "-")):
        if field.type is bool:
            assert getattr(p.parse_args([f"--{name}"]), field.name) is True
            assert getattr(p.parse_args([f"--no-{name}"]), field.name) is False
        else:
            assert getattr(p.parse_args([f"--{name}", str(field.default)]), field.name) == field.default


def test_distill_ema_in_either_spelling_reaches_the_distillation_rules(capsys, tmp_path):
    for flag in ("--distill_ema", "--distill-ema"):
        message = train_error(capsys, ["--distill_from", str(tmp_path / "t.pt"), flag])
        assert "--distill_ema needs --ema > 0" in message


def test_distill_from_names_the_objective_that_was_given(capsys, tmp_path):
    message = train_error(capsys, ["--distill_from", str(tmp_path / "t.pt"), "--objective", "block"])
    assert "drop --objective block" in message and "--objective ar" not in message
    assert "--block_len" not in message, "the objective is refused: its own options are not judged"


def test_mixed_with_a_batch_of_one_is_refused_up_front(capsys):
    message = train_error(capsys, ["--objective", "mixed", "--batch_size", "1"])
    assert "--objective mixed needs --batch_size >= 2" in message and "--lr" not in message
    check_config(ModelConfig(objective="mixed"), TrainConfig(batch_size=2))  # one row of each kind


def test_a_context_of_one_character_is_out_of_range(capsys):
    assert "--block_size must be in [2, 8192], got 1" in train_error(capsys, ["--block_size", "1"])


def test_a_fifo_as_data_says_what_it_is(capsys, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    message = train_error(capsys, ["--data", str(fifo), "--device", "cpu"])
    assert "is a FIFO (named pipe), not a file" in message and "not found" not in message


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """The tiny run's last.pt in a folder of its own: a resume that went ahead would not touch the shared run."""
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(os.path.join(tiny_run, "last.pt"), out / "last.pt")
    return out


@pytest.mark.parametrize("flags, needle", [
    (["--objective", "ar"], "--objective ar (the run's is diffusion)"),
    (["--block_size", "16"], "--block_size 16 (the run's is 32)"),
    (["--n_head", "4"], "--n_head 4 (the run's is 2); drop it"),
])
def test_resume_with_another_shape_names_the_stored_value(capsys, run_copy, data_path, flags, needle):
    message = train_error(capsys, TINY + ["--data", data_path, "--out_dir", str(run_copy), "--resume", *flags])
    assert needle in message and str(run_copy / "last.pt") in message
    assert sorted(os.listdir(run_copy)) == ["last.pt"], "nothing was trained or written"

