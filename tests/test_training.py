import itertools
import math
import os
import signal
import subprocess
import sys

import pytest
import torch

import train
from conftest import ROOT, TINY, read_log, run_script
from model import (ModelConfig, Transformer, load_model, masked_nll_per_sequence, read_checkpoint)


def test_tiny_model_loss_falls(tiny_run):
    log = read_log(tiny_run)
    losses = [r["train_loss"] for r in log if "train_loss" in r]
    vals = [r["val"] for r in log if "val" in r]
    assert losses[0] > 3.0, "a fresh model should be near ln(65) = 4.17"
    assert losses[-1] < losses[0] - 0.5
    assert vals[-1] < 2.8 and vals[-1] < vals[0]


def test_best_checkpoint_round_trips(tiny_run):
    model, chars, ckpt = load_model(os.path.join(tiny_run, "best.pt"))
    assert len(chars) == 65 and chars[0] == "\n"
    assert ckpt["config"]["n_layer"] == 2 and ckpt["step"] in (400, 800)
    assert ckpt["val"] == min(r["val"] for r in read_log(tiny_run) if "val" in r)
    x = torch.randint(0, 65, (2, 32))
    again = Transformer(ModelConfig(**ckpt["config"]))
    again.load_state_dict(ckpt["model"])
    assert torch.equal(model(x), again.eval()(x))


def _interrupt_at(monkeypatch, step):
    calls = itertools.count(1)
    real = train.get_batch

    def get_batch(*args, **kwargs):
        if next(calls) > step:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(train, "get_batch", get_batch)


def test_ctrl_c_then_resume_continues_the_same_run(tmp_path, data_path, monkeypatch):
    args = TINY + ["--data", data_path, "--max_steps", "40", "--eval_interval", "20", "--log_interval", "10"]
    train.main(args + ["--out_dir", str(tmp_path / "straight")])

    _interrupt_at(monkeypatch, 25)
    with pytest.raises(SystemExit) as stop:
        train.main(args + ["--out_dir", str(tmp_path / "split")])
    assert stop.value.code == 130
    assert read_checkpoint(str(tmp_path / "split" / "last.pt"))["step"] == 25
    monkeypatch.undo()
    train.main(args + ["--out_dir", str(tmp_path / "split"), "--resume"])

    a = read_checkpoint(str(tmp_path / "straight" / "last.pt"))
    b = read_checkpoint(str(tmp_path / "split" / "last.pt"))
    assert a["step"] == b["step"] == 40
    for name in a["model"]:
        assert torch.allclose(a["model"][name], b["model"][name], atol=1e-6), name


def test_resume_keeps_the_runs_settings_unless_overridden(tmp_path, data_path, monkeypatch):
    args = TINY + ["--data", data_path, "--out_dir", str(tmp_path), "--log_interval", "5", "--eval_interval", "5"]
    _interrupt_at(monkeypatch, 5)
    with pytest.raises(SystemExit):
        train.main(args + ["--max_steps", "12", "--lr", "1e-3"])
    monkeypatch.undo()
    train.main(["--resume", "--out_dir", str(tmp_path), "--data", data_path, "--device", "cpu"])
    ckpt = read_checkpoint(str(tmp_path / "last.pt"))
    assert ckpt["step"] == 12 and ckpt["train_config"]["lr"] == 1e-3
    train.main(["--resume", "--out_dir", str(tmp_path), "--data", data_path, "--device", "cpu", "--max_steps", "15"])
    assert read_checkpoint(str(tmp_path / "last.pt"))["step"] == 15


def test_sigint_leaves_a_usable_checkpoint(tmp_path, data_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-u", os.path.join(ROOT, "train.py"), *TINY, "--data", data_path,
                             "--out_dir", str(out), "--max_steps", "100000", "--log_interval", "5"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("step"):
            break
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "--resume" in stdout
    model, chars, ckpt = load_model(str(out / "last.pt"))
    assert ckpt["step"] >= 5 and "optimizer" in ckpt


def _exact_nelbo(model, x):
    """NELBO / L by enumerating every non-empty mask pattern of x (1, L)."""
    L = x.size(1)
    total = 0.0
    for k in range(1, L + 1):
        patterns = list(itertools.combinations(range(L), k))
        masked = torch.zeros(len(patterns), L, dtype=torch.bool)
        for row, positions in enumerate(patterns):
            masked[row, list(positions)] = True
        xs = x.expand(len(patterns), L)
        logits = model(xs.masked_fill(masked, model.config.mask_id))
        nll = masked_nll_per_sequence(logits, xs, masked, torch.full((len(patterns),), k))
        total += nll.mean().item() / L
    return total


@torch.no_grad()
def test_monte_carlo_nelbo_matches_exact_enumeration():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=7)).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randint(0, 65, (1, 7))
    exact = _exact_nelbo(model, x)
    mean, se = train.evaluate_diffusion(model, x[0], 7, mc=3000, seed=5)
    assert 0 < se < 0.05
    assert abs(mean - exact) < 3 * se, (mean, exact, se)
    assert train.evaluate_diffusion(model, x[0], 7, mc=3000, seed=5) == (mean, se)  # deterministic


def test_eval_windows_cover_the_whole_split():
    starts = train.eval_windows(1000, 256)
    assert starts == [0, 256, 512, 744]
    covered = set().union(*(range(s, s + 256) for s in starts))
    assert covered == set(range(1000))


def test_ar_objective_trains_and_evaluates_exactly(tmp_path, data_path):
    out = tmp_path / "ar"
    train.main(TINY + ["--data", data_path, "--out_dir", str(out), "--objective", "ar", "--max_steps", "300",
                       "--eval_interval", "300", "--log_interval", "50"])
    log = read_log(str(out))
    losses = [r["train_loss"] for r in log if "train_loss" in r]
    assert losses[-1] < losses[0] - 0.6
    model, chars, ckpt = load_model(str(out / "best.pt"))
    assert model.config.causal
    text = open(data_path).read()
    ids = torch.tensor([chars.index(c) for c in text[int(0.9 * len(text)):]])
    with torch.no_grad():  # reference: every window's next-character cross-entropy, by hand
        starts = train.eval_windows(len(ids) - 1, 32)
        nll = []
        for s in starts:
            logits = model(ids[None, s:s + 32])
            nll.append(torch.nn.functional.cross_entropy(logits[0], ids[s + 1:s + 33]).item())
    assert ckpt["val"] == pytest.approx(sum(nll) / len(nll), abs=1e-4)


def test_eval_only_prints_nats_and_bits(tiny_ckpt, data_path):
    r = run_script("train.py", "--eval-only", "--ckpt", tiny_ckpt, "--data", data_path, "--eval_mc", "1",
                   "--device", "cpu")
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    nats = float(line.split("NELBO ")[1].split()[0])
    bits = float(line.split("(")[1].split()[0])
    assert bits == pytest.approx(nats / math.log(2), abs=1e-3)
    assert "±" in line and "111,540 held-out chars" in line


def test_ddp_two_gloo_processes(tmp_path, data_path):
    out = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--standalone", os.path.join(ROOT, "train.py"), *TINY, "--data", data_path,
                        "--out_dir", str(out), "--max_steps", "20", "--eval_interval", "20", "--log_interval", "10"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-1000:] + r.stderr[-3000:]
    assert "device cpu x2" in r.stdout and "batch 32 x 32" in r.stdout
    assert r.stdout.count("done: 20 steps") == 1, "only rank 0 prints"
    assert len([row for row in read_log(str(out)) if "val" in row]) == 1, "only rank 0 writes"
    assert read_checkpoint(str(out / "best.pt"))["world"] == 2


def test_export_keeps_what_sampling_needs_in_bf16(tiny_run, tmp_path):
    out = tmp_path / "shipped.pt"
    r = run_script("tools/export_weights.py", os.path.join(tiny_run, "last.pt"), out)
    assert r.returncode == 0, r.stderr
    ckpt = read_checkpoint(str(out))
    assert "optimizer" not in ckpt and "generator" not in ckpt
    assert all(v.dtype == torch.bfloat16 for v in ckpt["model"].values())
    model, chars, _ = load_model(str(out))
    assert len(chars) == 65 and next(model.parameters()).dtype == torch.float32
    assert os.path.getsize(out) < os.path.getsize(os.path.join(tiny_run, "last.pt")) / 3
