"""What train.py does with bad settings, a diverging run, an occupied --out_dir and signals:
one line, a non-zero exit, and nothing of the user's lost."""
import itertools
import os

import pytest
import torch

import train
import objectives
from checkpoint import read_checkpoint
from conftest import TINY, read_log


def exit_message(argv):
    """train.main(argv)'s one-line error (it must exit with one)."""
    with pytest.raises(SystemExit) as stop:
        train.main(argv)
    message = str(stop.value.code)
    assert message.startswith("train.py: error:") and "\n" not in message, message
    return message


@pytest.mark.parametrize("flags, needle", [
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--muon_lr", "inf"], "--muon_lr must be a finite number"),
    (["--grad_clip", "nan"], "--grad_clip must be a finite number"),
    (["--grad_clip", "-1"], "--grad_clip must be in (0"),
    (["--weight_decay", "nan"], "--weight_decay"),
    (["--weight_decay", "inf"], "--weight_decay"),
    (["--min_lr_ratio", "nan"], "--min_lr_ratio"),
    (["--min_lr_ratio", "-5"], "--min_lr_ratio must be in [0, 1]"),
    (["--logit_softcap", "nan"], "--logit_softcap must be a finite number"),
    (["--beta2", "1.5"], "--beta2"),
    (["--beta2", "nan"], "--beta2"),
    (["--n_embd", "0"], "--n_embd must be in [2"),
    (["--n_embd", "-128"], "--n_embd"),
    (["--batch_size", "100000000"], "--batch_size"),
    (["--dropout", "1.0"], "--dropout"),
    (["--eval_mc", "0"], "--eval_mc"),
    (["--seed", "-1"], "--seed"),
])
def test_every_numeric_setting_is_range_checked(tmp_path, data_path, flags, needle):
    message = exit_message(TINY + ["--data", data_path, "--out_dir", str(tmp_path)] + flags)
    assert needle in message
    assert not os.listdir(tmp_path), "nothing is written"


@pytest.mark.parametrize("flags, needle", [
    (["--ar_fraction", "0.3"], "--ar_fraction applies to --objective mixed only"),
    (["--optimizer", "adamw", "--muon_lr", "0.1"], "--muon_lr applies to --optimizer muon only"),
    (["--schedule", "cosine", "--cooldown", "0.2"], "--cooldown applies to --schedule wsd only"),
    (["--resume", "--overwrite"], "--overwrite and --resume contradict each other"),
])
def test_a_flag_the_run_would_ignore_is_refused(tmp_path, data_path, flags, needle):
    message = exit_message(TINY + ["--data", data_path, "--out_dir", str(tmp_path)] + flags)
    assert needle in message
    assert not os.listdir(tmp_path), "nothing is written"


def test_distillation_refuses_a_shape_flag(tmp_path, data_path, tiny_ckpt):
    message = exit_message(["--distill_from", tiny_ckpt, "--data", data_path, "--out_dir", str(tmp_path),
                            "--device", "cpu", "--block_size", "16"])
    assert "--block_size does not apply with --distill_from" in message and not os.listdir(tmp_path)


def test_a_loss_that_becomes_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, data_path,
                                                                                 monkeypatch):
    real, calls = objectives.diffusion_loss, itertools.count(1)

    def diverging(*args, **kwargs):
        loss = real(*args, **kwargs)
        return loss * float("nan") if next(calls) >= 12 else loss
    monkeypatch.setattr(objectives, "diffusion_loss", diverging)
    message = exit_message(TINY + ["--data", data_path, "--out_dir", str(tmp_path), "--max_steps", "40",
                                   "--eval_interval", "10", "--log_interval", "5"])
    assert "nan between steps 11 and 15" in message and "diverged" in message
    assert read_checkpoint(str(tmp_path / "last.pt"))["step"] == 10
    assert read_checkpoint(str(tmp_path / "best.pt"))["step"] == 10


def test_a_fresh_run_refuses_a_folder_that_holds_a_run(tmp_path, data_path):
    args = TINY + ["--data", data_path, "--out_dir", str(tmp_path), "--max_steps", "20", "--eval_interval", "20",
                   "--log_interval", "10"]
    train.main(args)
    best = read_checkpoint(str(tmp_path / "best.pt"))
    log_before = open(tmp_path / "log.jsonl").read()
    message = exit_message(args)
    assert "holds a run" in message and "--resume" in message and "--overwrite" in message
    assert open(tmp_path / "log.jsonl").read() == log_before, "the log is untouched"
    assert torch.equal(read_checkpoint(str(tmp_path / "best.pt"))["model"]["wte.weight"], best["model"]["wte.weight"])
    train.main(args + ["--overwrite", "--seed", "1"])  # replaces the run: one run's rows in the log
    steps = [row["step"] for row in read_log(str(tmp_path)) if "train_loss" in row]
    assert steps == [10, 20]


def test_a_run_stopped_before_its_first_evaluation_writes_no_best_pt(tmp_path, data_path, monkeypatch):
    from test_training import _interrupt_at
    _interrupt_at(monkeypatch, 3)
    with pytest.raises(SystemExit):
        train.main(TINY + ["--data", data_path, "--out_dir", str(tmp_path), "--max_steps", "40",
                           "--eval_interval", "20"])
    assert read_checkpoint(str(tmp_path / "last.pt"))["step"] == 3
    assert not (tmp_path / "best.pt").exists()
