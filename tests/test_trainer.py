"""trainer.py, the training loop: the loss falls for every objective, best.pt holds the EMA's
evaluated weights, Ctrl-C or SIGTERM saves a state that resumes bit for bit, a time budget, a
diverging loss, resume's rules, DDP. Tiny runs in-process through train.main(argv); real
processes for the signals of a real run and for torchrun."""
import itertools
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

import diffusion
import objectives
import train
import train_config
import trainer
from checkpoint import load_model, read_checkpoint
from conftest import ROOT, SIGNAL_POINTS, TINY, exit_message, interrupt_at, read_log, train_error
from corpus import split_text


def test_tiny_model_loss_falls(tiny_run):
    log = read_log(tiny_run)
    losses = [r["train_loss"] for r in log if "train_loss" in r]
    vals = [r["val"] for r in log if "val" in r]
    assert losses[0] > 3.0, "a fresh model should be near ln(65) = 4.17"
    assert losses[-1] < losses[0] - 0.5
    assert vals[-1] < 2.8 and vals[-1] < vals[0]


def test_ar_objective_trains_and_evaluates(tmp_path, small_data):
    out = tmp_path / "ar"
    train.main(TINY + ["--data", small_data, "--out_dir", str(out), "--objective", "ar", "--max_steps", "100",
                       "--eval_interval", "100", "--log_interval", "25", "--attn_dropout", "0.1",
                       "--embd_dropout", "0.1"])
    log = read_log(str(out))
    losses = [r["train_loss"] for r in log if "train_loss" in r]
    assert losses[-1] < losses[0] - 0.6
    model, chars, ckpt = load_model(str(out / "best.pt"))
    assert model.config.causal and model.config.attn_dropout == 0.1
    text = open(small_data).read()
    ids = torch.tensor([chars.index(c) for c in split_text(text)[1]])
    with torch.no_grad():  # what training logged is the sliding-window estimator on the whole split
        mean, se = diffusion.summarize(*diffusion.block_scores(model, ids, context=0))
    assert ckpt["val"] == pytest.approx(mean, abs=1e-4) and ckpt["val_se"] == pytest.approx(se, rel=1e-3)
    assert ckpt["val_se"] > 0


def test_a_tiny_mixed_run_trains_and_evaluates_as_diffusion_and_as_ar(tmp_path, small_data, run_main):
    out = tmp_path / "mixed"
    train.main(TINY + ["--data", small_data, "--out_dir", str(out), "--objective", "mixed", "--ar_fraction", "0.5",
                       "--t_dist", "bell", "--max_steps", "100", "--eval_interval", "100", "--log_interval", "25"])
    losses = [r["train_loss"] for r in read_log(str(out)) if "train_loss" in r]
    assert losses[-1] < losses[0] - 0.5
    ckpt = str(out / "best.pt")
    assert torch.load(ckpt, weights_only=True)["config"]["objective"] == "mixed", "a diffusion model that also reads AR"
    r = run_main("evaluate.py", "--ckpt", ckpt, "--as-ar", "--data", small_data, "--device", "cpu")
    assert r.returncode == 0 and " NLL " in r.stdout and "(--as-ar)" in r.stdout, r.stderr
    assert float(r.stdout.split(" NLL ")[1].split()[0]) < 4.0  # its AR half learned something (uniform: 4.2)


def test_muon_ema_and_block_masks_train_and_best_pt_holds_the_ema_weights(tmp_path, small_data):
    out = tmp_path / "muon"
    train.main(TINY + ["--data", small_data, "--out_dir", str(out), "--max_steps", "100", "--eval_interval", "100",
                       "--log_interval", "10", "--optimizer", "muon", "--ema", "0.95", "--block_prob", "0.3"])
    log = read_log(str(out))
    losses = [r["train_loss"] for r in log if "train_loss" in r]
    assert losses[-1] < losses[0] - 0.5
    evals = [r for r in log if "val" in r]
    assert "val_raw" in evals[-1] and evals[-1]["val"] != evals[-1]["val_raw"]
    best, last = read_checkpoint(str(out / "best.pt")), read_checkpoint(str(out / "last.pt"))
    assert best["val"] == evals[-1]["val"]
    for name, weight in best["model"].items():  # what was evaluated and saved is the EMA copy
        assert torch.equal(weight, last["ema"][name]), name
    assert any(not torch.equal(best["model"][n], last["model"][n]) for n in best["model"])


# -----------------------------------------------------------------------------
# Stopping: Ctrl-C and SIGTERM, a diverging loss, a time budget

def test_ctrl_c_then_resume_continues_the_same_run(tmp_path, small_data, monkeypatch):
    args = TINY + ["--data", small_data, "--max_steps", "40", "--eval_interval", "20", "--log_interval", "10"]
    train.main(args + ["--out_dir", str(tmp_path / "straight")])

    interrupt_at(monkeypatch, 25)
    with pytest.raises(SystemExit) as stop:
        train.main(args + ["--out_dir", str(tmp_path / "split")])
    assert stop.value.code == 130
    assert read_checkpoint(str(tmp_path / "split" / "last.pt"))["step"] == 25  # the step in progress finished
    assert not (tmp_path / "split" / "best.pt").exists() or read_checkpoint(
        str(tmp_path / "split" / "best.pt"))["step"] == 20, "best.pt only ever holds evaluated weights"
    monkeypatch.undo()
    train.main(args + ["--out_dir", str(tmp_path / "split"), "--resume"])

    a = read_checkpoint(str(tmp_path / "straight" / "last.pt"))
    b = read_checkpoint(str(tmp_path / "split" / "last.pt"))
    assert a["step"] == b["step"] == 40
    for name in a["model"]:
        assert torch.allclose(a["model"][name], b["model"][name], atol=1e-6), name


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])  # Ctrl-C, and schedulers' kill
def test_sigint_and_sigterm_leave_a_usable_checkpoint(tmp_path, small_data, signum):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-u", os.path.join(ROOT, "train.py"), *TINY, "--data", small_data,
                             "--out_dir", str(out), "--max_steps", "100000", "--log_interval", "5"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("step"):
            break
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "--resume" in stdout
    model, chars, ckpt = load_model(str(out / "last.pt"))
    assert ckpt["step"] >= 5 and "optimizer" in ckpt


def test_a_run_stopped_before_its_first_evaluation_writes_no_best_pt(tmp_path, small_data, monkeypatch):
    interrupt_at(monkeypatch, 3)
    with pytest.raises(SystemExit):
        train.main(TINY + ["--data", small_data, "--out_dir", str(tmp_path), "--max_steps", "40",
                           "--eval_interval", "20"])
    assert read_checkpoint(str(tmp_path / "last.pt"))["step"] == 3
    assert not (tmp_path / "best.pt").exists()


def test_a_loss_that_becomes_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, small_data,
                                                                                 monkeypatch):
    real, calls = objectives.diffusion_loss, itertools.count(1)

    def diverging(*args, **kwargs):
        loss = real(*args, **kwargs)
        return loss * float("nan") if next(calls) >= 12 else loss
    monkeypatch.setattr(objectives, "diffusion_loss", diverging)
    message = exit_message(train.main, TINY + ["--data", small_data, "--out_dir", str(tmp_path), "--max_steps", "40",
                                               "--eval_interval", "10", "--log_interval", "5"])
    assert "nan between steps 11 and 15" in message and "diverged" in message
    assert read_checkpoint(str(tmp_path / "last.pt"))["step"] == 10
    assert read_checkpoint(str(tmp_path / "best.pt"))["step"] == 10


def step_clock(monkeypatch, seconds_per_step):
    """The trainer's wall clock made to pass `seconds_per_step` per training step and nothing
    else, so a --time_budget test stops at the same step whatever the machine's load."""
    import types
    clock = types.SimpleNamespace(now=1e9)
    real_step = trainer.Trainer.train_step

    def timed_step(self, lr_mult):
        clock.now += seconds_per_step
        return real_step(self, lr_mult)
    monkeypatch.setattr(trainer, "time", types.SimpleNamespace(time=lambda: clock.now))
    monkeypatch.setattr(trainer.Trainer, "train_step", timed_step)


def test_resumed_time_budget_run_keeps_its_schedule_and_a_finished_run_stops(tmp_path, small_data, run_main):
    args = TINY + ["--data", small_data, "--out_dir", str(tmp_path), "--max_steps", "100000", "--time_budget", "0.2",
                   "--eval_interval", "100000", "--log_interval", "5"]
    with pytest.MonkeyPatch.context() as mp:  # 0.25 s a step: the 12 s budget ends at step 48
        step_clock(mp, 0.25)
        interrupt_at(mp, 20)
        with pytest.raises(SystemExit):
            train.main(args)
    lr_before = [r["lr"] for r in read_log(str(tmp_path)) if "lr" in r][-1]
    with pytest.MonkeyPatch.context() as mp:
        step_clock(mp, 0.25)
        train.main(args + ["--resume"])
    lrs = [r["lr"] for r in read_log(str(tmp_path)) if "lr" in r and r["step"] >= 20]  # after warm-up
    assert all(b < a for a, b in zip(lrs, lrs[1:])), "the rate only falls after warm-up, across the resume"
    assert lrs[-1] < lr_before
    finished = read_checkpoint(str(tmp_path / "last.pt"))
    assert finished["step"] == 48, "the budget is kept across the resume"
    r = run_main("train.py", *args, "--resume")
    assert r.returncode == 0 and "already finished" in r.stdout, r.stdout + r.stderr
    assert read_checkpoint(str(tmp_path / "last.pt"))["step"] == finished["step"]


def test_time_budget_is_kept_to_the_step_between_rare_progress_lines(tmp_path, small_data, monkeypatch):
    # no progress line and no evaluation before the end: the budget (3 s at 0.125 s a step) must
    # still stop the run at its 24th step, not at the next log line or at 1,500 steps
    step_clock(monkeypatch, 0.125)
    args = TINY + ["--data", small_data, "--out_dir", str(tmp_path), "--max_steps", "1500", "--time_budget", "0.05",
                   "--eval_interval", "100000", "--log_interval", "100000"]
    train.main(args)
    last = read_checkpoint(str(tmp_path / "last.pt"))
    assert last["step"] == 24 and last["elapsed"] == 3.0, (last["step"], last["elapsed"])


def scripted_evaluations(monkeypatch, vals):
    """The validation NELBO of the run's evaluations, in order, instead of measured ones."""
    it = iter(vals)
    monkeypatch.setattr(trainer, "run_evaluation", lambda model, val_ids, tc, shard: (next(it), 0.01))


def test_patience_stops_a_run_past_its_best_and_resume_keeps_the_count(tmp_path, small_data, run_main, monkeypatch):
    args = TINY + ["--data", small_data, "--out_dir", str(tmp_path), "--max_steps", "100", "--eval_interval", "5",
                   "--log_interval", "5", "--patience", "2"]
    # evaluations at 5, 10, 15 (best), 20: worse once; a Ctrl-C at step 22, then 25: worse twice
    scripted_evaluations(monkeypatch, [3.0, 2.5, 2.4, 2.6, 2.7, 2.0, 2.1, 2.2, 2.3])
    with pytest.MonkeyPatch.context() as mp:
        interrupt_at(mp, 22)
        with pytest.raises(SystemExit):
            train.main(args)
    assert read_checkpoint(str(tmp_path / "last.pt"))["evals_since_best"] == 1
    r = run_main("train.py", *args, "--resume")
    assert r.returncode == 0 and "stopped early at step 25: 2 evaluations without a new best (the best at step 15)" \
        in r.stdout, r.stdout + r.stderr
    last, best = (read_checkpoint(str(tmp_path / name)) for name in ("last.pt", "best.pt"))
    assert (last["step"], best["step"], best["val"], last["best_step"]) == (25, 15, 2.4, 15)
    r = run_main("train.py", *args, "--resume")  # ended: says so, trains nothing
    assert "already finished at step 25 (stopped early: raise --patience" in r.stdout
    assert read_checkpoint(str(tmp_path / "last.pt"))["step"] == 25
    run_main("train.py", *args[:-1], "3", "--resume")  # more patience: a new best at 30, then 3 worse
    assert (read_checkpoint(str(tmp_path / "best.pt"))["step"], read_checkpoint(str(tmp_path / "last.pt"))["step"]) == (30, 45)
    assert run_main("train.py", *args[:-1], "-1").stderr.strip().endswith("--patience must be in [0, 1000000], got -1")


# -----------------------------------------------------------------------------
# Resume

def _final_weights(out_dir):
    ckpt = read_checkpoint(os.path.join(out_dir, "last.pt"))
    return ckpt, {**ckpt["model"], **{"ema." + k: v for k, v in ckpt.get("ema", {}).items()}}


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, small_data):
    """30 steps straight through with dropout, Muon and EMA (what interrupted runs must match)."""
    out = tmp_path_factory.mktemp("straight")
    train.main(BIT_EXACT + ["--data", small_data, "--out_dir", str(out)])
    return out


BIT_EXACT = TINY + ["--max_steps", "30", "--eval_interval", "15", "--log_interval", "5", "--dropout", "0.1",
                    "--attn_dropout", "0.1", "--embd_dropout", "0.1", "--optimizer", "muon", "--ema", "0.9"]


@pytest.mark.parametrize("where", sorted(SIGNAL_POINTS))
def test_resume_after_a_signal_anywhere_in_a_step_is_bit_exact(tmp_path, small_data, monkeypatch, straight_run,
                                                               where):
    """Ctrl-C at any point of step 17, resume: == 30 steps straight through, bit for bit: weights,
    EMA copy and optimiser state, with dropout on (the RNG states are part of last.pt)."""
    args = BIT_EXACT + ["--data", small_data]
    interrupt_at(monkeypatch, 17, where)
    with pytest.raises(SystemExit):
        train.main(args + ["--out_dir", str(tmp_path / "split")])
    monkeypatch.undo()
    assert read_checkpoint(str(tmp_path / "split" / "last.pt"))["step"] == 17
    train.main(args + ["--out_dir", str(tmp_path / "split"), "--resume"])
    (a, wa), (b, wb) = _final_weights(str(straight_run)), _final_weights(str(tmp_path / "split"))
    assert a["step"] == b["step"] == 30 and len(a["optimizer"]) == 2, "Muon and AdamW states"
    assert wa.keys() == wb.keys() and any(k.startswith("ema.") for k in wa)
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def test_resume_keeps_the_runs_settings_unless_overridden(tmp_path, small_data, monkeypatch):
    args = TINY + ["--data", small_data, "--out_dir", str(tmp_path), "--log_interval", "5", "--eval_interval", "5"]
    interrupt_at(monkeypatch, 5)
    with pytest.raises(SystemExit):
        train.main(args + ["--max_steps", "12", "--lr", "1e-3"])
    monkeypatch.undo()
    train.main(["--resume", "--out_dir", str(tmp_path), "--data", small_data, "--device", "cpu"])
    ckpt = read_checkpoint(str(tmp_path / "last.pt"))
    assert ckpt["step"] == 12 and ckpt["train_config"]["lr"] == 1e-3
    train.main(["--resume", "--out_dir", str(tmp_path), "--data", small_data, "--device", "cpu", "--max_steps", "15"])
    assert read_checkpoint(str(tmp_path / "last.pt"))["step"] == 15


def test_resume_may_start_an_ema_but_not_change_the_optimizer(tmp_path, small_data, run_main):
    args = TINY + ["--data", small_data, "--out_dir", str(tmp_path), "--eval_interval", "5", "--log_interval", "5"]
    train.main(args + ["--max_steps", "5"])
    r = run_main("train.py", *args, "--max_steps", "8", "--resume", "--optimizer", "muon")
    assert r.returncode == 1 and "optimizer" in r.stderr and "Traceback" not in r.stderr
    train.main(args + ["--max_steps", "8", "--resume", "--ema", "0.9"])
    last = read_checkpoint(str(tmp_path / "last.pt"))
    assert last["step"] == 8 and set(last["ema"]) == set(last["model"])


def test_resume_from_a_weights_only_checkpoint_is_a_one_line_error(tmp_path, small_data, run_main):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(os.path.join(ROOT, "weights", "model.pt"), out / "last.pt")
    r = run_main("train.py", "--resume", "--out_dir", out, "--data", small_data, "--device", "cpu")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "weights-only" in r.stderr and len(r.stderr.strip().splitlines()) == 1


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


# -----------------------------------------------------------------------------
# Distributed

def test_ddp_two_gloo_processes(tmp_path, small_data):
    out = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--standalone", os.path.join(ROOT, "train.py"), *TINY, "--data", small_data,
                        "--out_dir", str(out), "--max_steps", "20", "--eval_interval", "20", "--log_interval", "10",
                        "--time_budget", "5"],  # the ranks agree on the clock (broadcasts); steps end it
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-1000:] + r.stderr[-3000:]
    assert "device cpu x2" in r.stdout and "batch 32 x 32" in r.stdout
    assert r.stdout.count("done: 20 steps") == 1, "only rank 0 prints"
    assert len([row for row in read_log(str(out)) if "val" in row]) == 1, "only rank 0 writes"
    assert read_checkpoint(str(out / "best.pt"))["world"] == 2


def test_torchrun_with_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    from cli import UserError
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match="--nproc_per_node 1 or fewer"):
        trainer.setup_distributed(train_config.TrainConfig())
