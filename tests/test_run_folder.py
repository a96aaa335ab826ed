"""run_folder.py, the run folder (--out_dir): a fresh run refuses one that holds a run, its lock,
a kill -9 before the first save, the time-based save of last.pt, the log cut back to last.pt's
step on resume, a full disk. Tiny runs, in process where they can be; one real second process
for the lock and the kill -9."""
import errno
import itertools
import os
import shutil
import subprocess
import sys

import pytest
import torch

import checkpoint
import objectives
import run_folder
import train
import trainer
from checkpoint import load_model, read_checkpoint
from conftest import ROOT, TINY, assert_one_line_error, exit_message, read_log


def crash_at(monkeypatch, step):
    """A crash that saves nothing during training step `step` (a second Ctrl-C; as far as the
    folder is concerned, a kill -9 after the log was flushed)."""
    real, calls = trainer.get_batch, itertools.count(1)

    def get_batch(*args, **kwargs):
        if next(calls) == step:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(trainer, "get_batch", get_batch)


def train_rows(out_dir):
    return [(row["step"], row["train_loss"]) for row in read_log(str(out_dir)) if "train_loss" in row]


# dropout, Muon and an EMA: every RNG and state a save could disturb
EXACT = TINY + ["--max_steps", "30", "--eval_interval", "15", "--log_interval", "5", "--dropout", "0.1",
                "--optimizer", "muon", "--ema", "0.9"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, small_data):
    """EXACT's 30 steps straight through, no time-based save: what the other runs must match."""
    out = tmp_path_factory.mktemp("straight")
    train.main(EXACT + ["--data", small_data, "--out_dir", str(out), "--save_interval", "0"])
    return out


def same_state(a_dir, b_dir):
    a, b = read_checkpoint(str(a_dir / "last.pt")), read_checkpoint(str(b_dir / "last.pt"))
    assert a["step"] == b["step"]
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for name in a["ema"]:
        assert torch.equal(a["ema"][name], b["ema"][name]), "ema." + name


# -----------------------------------------------------------------------------
# The lock, and a kill -9 before the first save

def test_a_live_run_locks_its_folder_and_a_kill_9_before_the_first_save_is_no_dead_end(tmp_path, small_data,
                                                                                       capsys):
    out = tmp_path / "run"
    args = TINY + ["--data", small_data, "--out_dir", str(out)]
    proc = subprocess.Popen([sys.executable, "-u", os.path.join(ROOT, "train.py"), *args, "--max_steps", "100000",
                             "--eval_interval", "100000", "--save_interval", "0", "--log_interval", "5"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("step"):
                break
        assert proc.poll() is None, proc.stderr.read()
        for extra in ([], ["--resume"], ["--overwrite"]):  # two runs at once interleaved every log row
            message = exit_message(train.main, args + ["--max_steps", "10"] + extra)
            assert f"run folder {out} is in use by another process (pid {proc.pid})" in message
    finally:
        proc.kill()  # kill -9: nothing saved, a log and the lock's file left behind
        proc.communicate(timeout=60)
    assert not (out / "last.pt").exists() and (out / "log.jsonl").exists()
    message = exit_message(train.main, args + ["--resume"])
    assert "has no last.pt" in message and "start it afresh without --resume" in message
    capsys.readouterr()
    train.main(args + ["--max_steps", "10", "--eval_interval", "10", "--log_interval", "5"])  # what it said
    assert "the log of a run that saved no checkpoint, replaced" in capsys.readouterr().out
    assert [step for step, _ in train_rows(out)] == [5, 10], "the new run's rows only"
    assert sorted(os.listdir(out)) == ["best.pt", "last.pt", "log.jsonl"], "the lock's file goes with the run"


def test_a_folder_with_best_pt_but_no_last_pt_gets_the_same_answer_either_way(tmp_path, small_data, straight):
    shutil.copy(straight / "best.pt", tmp_path / "best.pt")
    args = TINY + ["--data", small_data, "--out_dir", str(tmp_path)]
    resumed, fresh = exit_message(train.main, args + ["--resume"]), exit_message(train.main, args)
    assert "best.pt but no last.pt" in resumed and "cannot be continued" in fresh
    assert "--overwrite" in resumed and "--overwrite" in fresh and "--resume" not in fresh
    assert sorted(os.listdir(tmp_path)) == ["best.pt"]


def test_resume_without_a_run_says_so_and_writes_nothing(tmp_path, small_data):
    message = exit_message(train.main, TINY + ["--data", small_data, "--out_dir", str(tmp_path / "none"), "--resume"])
    assert f"no run in {tmp_path / 'none'}" in message and "without --resume" in message
    assert not (tmp_path / "none").exists()


def test_a_fresh_run_refuses_a_folder_that_holds_a_run(tmp_path, small_data):
    args = TINY + ["--data", small_data, "--out_dir", str(tmp_path), "--max_steps", "20", "--eval_interval", "20",
                   "--log_interval", "10"]
    train.main(args)
    best = read_checkpoint(str(tmp_path / "best.pt"))
    log_before = open(tmp_path / "log.jsonl").read()
    message = exit_message(train.main, args)
    assert "holds a run" in message and "--resume" in message and "--overwrite" in message
    assert open(tmp_path / "log.jsonl").read() == log_before, "the log is untouched"
    assert torch.equal(read_checkpoint(str(tmp_path / "best.pt"))["model"]["wte.weight"], best["model"]["wte.weight"])
    train.main(args + ["--overwrite", "--seed", "1"])  # replaces the run: one run's rows in the log
    steps = [row["step"] for row in read_log(str(tmp_path)) if "train_loss" in row]
    assert steps == [10, 20]


def test_resume_on_a_folder_without_a_run_says_so(tmp_path, small_data, run_main):
    assert_one_line_error(run_main("train.py", "--resume", "--out_dir", tmp_path, "--data", small_data),
                          "no run in", "last.pt")


def test_an_out_dir_under_a_file_is_one_line(tmp_path, small_data, run_main):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert_one_line_error(run_main("train.py", "--data", small_data, "--device", "cpu", "--out_dir", a_file / "run",
                                   "--max_steps", "1", *TINY), "--out_dir")


def test_the_lock_refuses_a_second_holder_until_released(tmp_path):
    first, second = run_folder.RunLock(str(tmp_path)), run_folder.RunLock(str(tmp_path))
    first.acquire()
    assert (tmp_path / ".lock").read_text() == str(os.getpid())
    with pytest.raises(run_folder.UserError, match=f"in use by another process \\(pid {os.getpid()}\\)"):
        second.acquire()
    first.release()
    assert not (tmp_path / ".lock").exists()
    second.acquire()
    second.release()


def test_a_folder_that_cannot_be_locked_is_a_note_not_a_failure(tmp_path, monkeypatch):
    def no_locks(f, how):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(run_folder.fcntl, "flock", no_locks)
    lock = run_folder.RunLock(str(tmp_path))
    lock.acquire()
    assert "No locks available" in lock.note and "would not be refused" in lock.note
    monkeypatch.setattr(run_folder, "fcntl", None)  # Windows
    run_folder.RunLock(str(tmp_path)).acquire()


# -----------------------------------------------------------------------------
# The time-based save of last.pt

def test_last_pt_is_saved_on_a_time_interval_before_the_first_evaluation_and_resumes_bit_exact(
        tmp_path, small_data, monkeypatch, straight):
    args = EXACT + ["--data", small_data, "--out_dir", str(tmp_path)]
    crash_at(monkeypatch, 13)  # before the first evaluation (step 15)
    with pytest.raises(SystemExit):
        train.main(args + ["--save_interval", "1e-6"])  # after every step
    monkeypatch.undo()
    assert read_checkpoint(str(tmp_path / "last.pt"))["step"] == 12
    assert not (tmp_path / "best.pt").exists()
    train.main(args + ["--resume", "--save_interval", "0"])  # (12 saves already lie behind step 12's state)
    same_state(straight, tmp_path)  # the saves disturbed no generator and no state
    # every step logged once; the row at 15 averages steps 13..15 only (the resume's first)
    rows, rows_straight = train_rows(tmp_path), train_rows(straight)
    assert [step for step, _ in rows] == [step for step, _ in rows_straight] == [5, 10, 15, 20, 25, 30]
    assert [r for r in rows if r[0] != 15] == [r for r in rows_straight if r[0] != 15]


def test_the_time_based_save_never_saves_a_diverged_state(tmp_path, small_data, monkeypatch):
    real, calls = objectives.diffusion_loss, itertools.count(1)

    def diverging(*args, **kwargs):
        loss = real(*args, **kwargs)
        return loss * float("nan") if next(calls) >= 12 else loss
    monkeypatch.setattr(objectives, "diffusion_loss", diverging)
    message = exit_message(train.main, TINY + ["--data", small_data, "--out_dir", str(tmp_path), "--max_steps", "40",
                                   "--eval_interval", "100", "--log_interval", "5", "--save_interval", "1e-6"])
    assert "diverged" in message and f"{tmp_path}/last.pt holds step 11, the last saved" in message
    assert load_model(str(tmp_path / "last.pt"))[2]["step"] == 11  # finite weights


def test_save_interval_is_range_checked(tmp_path, small_data):
    assert "--save_interval must be in [0" in exit_message(train.main, TINY + ["--data", small_data, "--out_dir", str(tmp_path),
                                                                   "--save_interval", "-1"])


# -----------------------------------------------------------------------------
# log.jsonl on resume

def test_resume_cuts_the_log_back_to_the_checkpoints_step(tmp_path, small_data, monkeypatch, straight, capsys):
    args = EXACT + ["--data", small_data, "--out_dir", str(tmp_path), "--save_interval", "0"]
    crash_at(monkeypatch, 22)  # last.pt at step 15; rows up to 20 in the log
    with pytest.raises(SystemExit):
        train.main(args)
    monkeypatch.undo()
    assert read_checkpoint(str(tmp_path / "last.pt"))["step"] == 15
    with open(tmp_path / "log.jsonl", "a") as f:  # a row past it, and what a kill -9 mid-write leaves
        f.write('{"step": 21, "train_loss": 9.0, "time": 1}\n{"step": 2')
    capsys.readouterr()
    train.main(args + ["--resume"])
    assert "3 line(s) past step 15" in capsys.readouterr().out
    assert train_rows(tmp_path) == train_rows(straight), "each step once, as straight through"
    assert [row["step"] for row in read_log(str(tmp_path)) if "val" in row] == [15, 30]
    assert not [name for name in os.listdir(tmp_path) if ".tmp" in name]


def test_cut_log_keeps_what_is_not_a_row_and_drops_a_torn_last_line(tmp_path):
    log = tmp_path / "log.jsonl"
    rows = ['{"step": 5, "train_loss": 2.0}\n', 'a note\n', '{"step": 10, "val": 1.9}\n', '{"step": 15}\n']
    log.write_text("".join(rows) + '{"step": 2')
    assert run_folder.cut_log(str(log), 10) == 2
    assert log.read_text() == "".join(rows[:3]) and os.listdir(tmp_path) == ["log.jsonl"]
    assert run_folder.cut_log(str(log), 10) == 0 and run_folder.cut_log(str(tmp_path / "none"), 10) == 0


# -----------------------------------------------------------------------------
# A full disk

class FullDisk:
    """A file that takes `room` bytes, then fails as a full disk does (ENOSPC)."""

    def __init__(self, path, mode, room=4096):
        self.f, self.room = open(path, mode), room

    def write(self, data):
        if len(data) > self.room:
            self.f.write(data[:self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.mark.parametrize("disk", ["short_write", "dev_full"])
def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoints(tmp_path, small_data, monkeypatch, straight,
                                                                      disk):
    for name in ("last.pt", "best.pt", "log.jsonl"):
        shutil.copy(straight / name, tmp_path / name)
    before = {name: (tmp_path / name).read_bytes() for name in ("last.pt", "best.pt")}
    if disk == "dev_full":  # the kernel's own ENOSPC
        if not os.path.exists("/dev/full"):
            pytest.skip("no /dev/full")
        monkeypatch.setattr(checkpoint, "open", lambda path, mode: open("/dev/full", mode), raising=False)
    else:  # a write that falls short: torch's "unexpected pos ... vs ..."
        monkeypatch.setattr(checkpoint, "open", FullDisk, raising=False)
    message = exit_message(train.main, EXACT + ["--data", small_data, "--out_dir", str(tmp_path), "--resume",
                                    "--max_steps", "45", "--save_interval", "1e-6"])  # fails at step 31
    assert f"no space left on device writing {tmp_path}/last.pt" in message
    assert message.endswith("; the previous checkpoint is intact")
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert sorted(os.listdir(tmp_path)) == ["best.pt", "last.pt", "log.jsonl"], "no temp file, no lock left"


def test_a_full_disk_on_a_first_save_says_nothing_was_there(tmp_path, monkeypatch):
    from model import ModelConfig, Transformer
    monkeypatch.setattr(checkpoint, "open", FullDisk, raising=False)
    model = Transformer(ModelConfig(n_layer=1, n_embd=16, n_head=2))
    with pytest.raises(checkpoint.UserError) as e:
        checkpoint.save_checkpoint(str(tmp_path / "m.pt"), model, "ab" * 32 + "c")
    assert str(e.value) == f"no space left on device writing {tmp_path / 'm.pt'}; there was no earlier copy"
    assert os.listdir(tmp_path) == []


def test_a_full_disk_writing_the_log_is_one_line(tmp_path):
    log = run_folder.RunLog(str(tmp_path / "log.jsonl"))
    log.file.close()
    log.file = FullDisk(str(tmp_path / "log.jsonl"), "a", room=0)
    with pytest.raises(run_folder.UserError, match="cannot write .*log.jsonl: No space left on device"):
        log.write({"step": 1})

