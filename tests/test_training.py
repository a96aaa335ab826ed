import itertools
import math
import os
import signal
import subprocess
import sys

import pytest
import torch

import diffusion
import train
import objectives
import train_config
import trainer
from checkpoint import load_model, read_checkpoint
from corpus import split_text
from conftest import ROOT, TINY, read_log, run_script
from diffusion import draw_masks
from model import ModelConfig, Transformer


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


# where in a training step a signal can land: patched functions that step `step` calls
SIGNAL_POINTS = {
    "batch": (trainer, "get_batch"),                        # the step's start
    "loss": (objectives, "diffusion_loss"),                   # after the batch was drawn
    "clip": (torch.nn.utils, "clip_grad_norm_"),            # after backward, before the optimiser
    "ema": (trainer.EMA, "update"),                         # after the optimiser, the step's end
}


def _interrupt_at(monkeypatch, step, where="batch"):
    """A real SIGINT to this process during training step `step` (1-based), at `where`."""
    owner, name = SIGNAL_POINTS[where]
    real = getattr(owner, name)
    calls = itertools.count(1)

    def wrapper(*args, **kwargs):
        if next(calls) == step:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)
    monkeypatch.setattr(owner, name, wrapper)


def test_ctrl_c_then_resume_continues_the_same_run(tmp_path, data_path, monkeypatch):
    args = TINY + ["--data", data_path, "--max_steps", "40", "--eval_interval", "20", "--log_interval", "10"]
    train.main(args + ["--out_dir", str(tmp_path / "straight")])

    _interrupt_at(monkeypatch, 25)
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


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])  # Ctrl-C, and schedulers' kill
def test_sigint_and_sigterm_leave_a_usable_checkpoint(tmp_path, data_path, signum):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-u", os.path.join(ROOT, "train.py"), *TINY, "--data", data_path,
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


def _exact_conditional_nelbo(model, x, context):
    """NELBO per block character by enumerating every non-empty mask pattern of the block
    x[:, context:] given the clean x[:, :context], computed from log-softmax directly (not with
    the loss function under test): the average over k = 1..L of the mean, over the C(L, k)
    patterns, of the mean -log p of the k masked characters."""
    L = x.size(1) - context
    total = 0.0
    for k in range(1, L + 1):
        per_pattern = []
        for positions in itertools.combinations(range(context, context + L), k):
            noisy = x.clone()
            noisy[0, list(positions)] = model.config.mask_id
            logp = torch.log_softmax(model(noisy)[0].double(), dim=-1)
            per_pattern.append(sum(-logp[i, x[0, i]].item() for i in positions) / k)
        total += sum(per_pattern) / len(per_pattern)
    return total / L


def _random_tiny_model(T):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=T)).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model


@torch.no_grad()
@pytest.mark.parametrize("context", [0, 3])
def test_monte_carlo_nelbo_matches_exact_enumeration(context):
    T = 7
    model = _random_tiny_model(T)
    x = torch.randint(0, 65, (1, T))
    exact = _exact_conditional_nelbo(model, x, context)
    per_block = diffusion.diffusion_block_nll(model, x[0], T, [(T, T - context)], mc=3000, seed=5)
    # the error of the mean of 3000 stratified draws, measured on repeated seeds
    draws = torch.stack([diffusion.diffusion_block_nll(model, x[0], T, [(T, T - context)], mc=3000, seed=s)[0]
                         for s in range(6, 14)])
    se = draws.std().item()
    assert 0 < se < 0.05
    assert abs(per_block[0].item() - exact) < 4 * se + 1e-3, (per_block[0].item(), exact, se)
    again = diffusion.diffusion_block_nll(model, x[0], T, [(T, T - context)], mc=3000, seed=5)
    assert torch.equal(per_block, again)  # the same seed gives the same masks


@pytest.mark.parametrize("n,T,context", [(1000, 256, 0), (1000, 256, 128), (1000, 256, 192), (257, 256, 100),
                                         (111540, 256, 128)])
def test_eval_blocks_score_every_character_once_with_enough_context(n, T, context):
    blocks = diffusion.eval_blocks(n, T, context)
    scored = [i for end, length in blocks for i in range(end - length, end)]
    assert sorted(scored) == list(range(n)), "every character exactly once"
    assert blocks[0] == (T, T)
    for end, length in blocks[1:]:
        assert end <= n and T - length >= context and length <= T - context


def test_context_zero_reproduces_the_isolated_window_estimator():
    """The estimator before block chaining (every window of T scored alone, k stratified over
    all draws), written out independently: on a split that is a whole number of windows the
    chained estimator with C = 0 gives the same number."""
    T, mc, seed = 16, 3, 7
    model = _random_tiny_model(T)
    val = torch.randint(0, 65, (T * 10,))
    starts = torch.arange(0, len(val), T).repeat(mc)
    n = len(starts)
    g = torch.Generator().manual_seed(seed)
    u = ((torch.arange(n) + torch.rand(n, generator=g)) / n)[torch.randperm(n, generator=g)]
    masked, k = draw_masks(n, T, torch.zeros(n, dtype=torch.long), u, generator=g)
    x = val[starts[:, None] + torch.arange(T)]
    with torch.no_grad():
        logp = torch.log_softmax(model(x.masked_fill(masked, model.config.mask_id)).double(), -1)
    nll = -logp.gather(-1, x[..., None])[..., 0]
    reference = ((nll * masked).sum(1) / k).mean().item()
    per_block, lengths = diffusion.block_scores(model, val, context=0, mc=mc, seed=seed)
    mean, se = diffusion.summarize(per_block, lengths)
    assert mean == pytest.approx(reference, abs=1e-6)  # fp32 logits
    assert 0 < se < 1


@torch.no_grad()
def test_ar_sliding_windows_give_each_character_its_preceding_context():
    """With context T - 1 (stride 1) every character i >= T is predicted from exactly the T
    characters before it, and character i < T from all of val[:i]: checked one by one."""
    T = 16
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=T, objective="ar")).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    val = torch.randint(0, 65, (50,))
    per_block, lengths = diffusion.block_scores(model, val, context=T - 1)
    mean, se = diffusion.summarize(per_block, lengths)
    nll = []
    for i in range(1, len(val)):
        logp = torch.log_softmax(model(val[None, max(0, i - T):i])[0, -1].double(), -1)
        nll.append(-logp[val[i]].item())
    assert lengths.sum() == len(val) - 1
    assert mean == pytest.approx(sum(nll) / len(nll), abs=1e-6)
    assert se > 0, "a real standard error, over blocks"


def test_ar_objective_trains_and_evaluates(tmp_path, data_path):
    out = tmp_path / "ar"
    train.main(TINY + ["--data", data_path, "--out_dir", str(out), "--objective", "ar", "--max_steps", "300",
                       "--eval_interval", "300", "--log_interval", "50", "--attn_dropout", "0.1",
                       "--embd_dropout", "0.1"])
    log = read_log(str(out))
    losses = [r["train_loss"] for r in log if "train_loss" in r]
    assert losses[-1] < losses[0] - 0.6
    model, chars, ckpt = load_model(str(out / "best.pt"))
    assert model.config.causal and model.config.attn_dropout == 0.1
    text = open(data_path).read()
    ids = torch.tensor([chars.index(c) for c in split_text(text)[1]])
    with torch.no_grad():  # what training logged is the sliding-window estimator on the whole split
        mean, se = diffusion.summarize(*diffusion.block_scores(model, ids, context=0))
    assert ckpt["val"] == pytest.approx(mean, abs=1e-4) and ckpt["val_se"] == pytest.approx(se, rel=1e-3)
    assert ckpt["val_se"] > 0


def test_evaluate_prints_nats_and_bits(tiny_ckpt, data_path):
    r = run_script("evaluate.py", "--ckpt", tiny_ckpt, "--data", data_path, "--mc", "1", "--device", "cpu")
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
                        "--out_dir", str(out), "--max_steps", "20", "--eval_interval", "20", "--log_interval", "10",
                        "--time_budget", "5"],  # the ranks agree on the clock (broadcasts); steps end it
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


def _final_weights(out_dir):
    ckpt = read_checkpoint(os.path.join(out_dir, "last.pt"))
    return ckpt, {**ckpt["model"], **{"ema." + k: v for k, v in ckpt.get("ema", {}).items()}}


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, data_path):
    """30 steps straight through with dropout, Muon and EMA (what interrupted runs must match)."""
    out = tmp_path_factory.mktemp("straight")
    train.main(BIT_EXACT + ["--data", data_path, "--out_dir", str(out)])
    return out


BIT_EXACT = TINY + ["--max_steps", "30", "--eval_interval", "15", "--log_interval", "5", "--dropout", "0.1",
                    "--attn_dropout", "0.1", "--embd_dropout", "0.1", "--optimizer", "muon", "--ema", "0.9"]


@pytest.mark.parametrize("where", sorted(SIGNAL_POINTS))
def test_resume_after_a_signal_anywhere_in_a_step_is_bit_exact(tmp_path, data_path, monkeypatch, straight_run,
                                                               where):
    """Ctrl-C at any point of step 17, resume: == 30 steps straight through, bit for bit: weights,
    EMA copy and optimiser state, with dropout on (the RNG states are part of last.pt)."""
    args = BIT_EXACT + ["--data", data_path]
    _interrupt_at(monkeypatch, 17, where)
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


def test_muon_ema_and_block_masks_train_and_best_pt_holds_the_ema_weights(tmp_path, data_path):
    out = tmp_path / "muon"
    train.main(TINY + ["--data", data_path, "--out_dir", str(out), "--max_steps", "200", "--eval_interval", "200",
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


def test_resumed_time_budget_run_keeps_its_schedule_and_a_finished_run_stops(tmp_path, data_path, monkeypatch):
    args = TINY + ["--data", data_path, "--out_dir", str(tmp_path), "--max_steps", "100000", "--time_budget", "0.2",
                   "--eval_interval", "100000", "--log_interval", "5"]
    _interrupt_at(monkeypatch, 20)  # well inside the 12 s budget
    with pytest.raises(SystemExit):
        train.main(args)
    monkeypatch.undo()
    lr_before = [r["lr"] for r in read_log(str(tmp_path)) if "lr" in r][-1]
    train.main(args + ["--resume"])
    lrs = [r["lr"] for r in read_log(str(tmp_path)) if "lr" in r and r["step"] >= 20]  # after warm-up
    assert all(b <= a for a, b in zip(lrs, lrs[1:])), "the rate only falls after warm-up, across the resume"
    assert lrs[-1] < lr_before
    finished = read_checkpoint(str(tmp_path / "last.pt"))
    r = run_script("train.py", *args, "--resume")
    assert r.returncode == 0 and "already finished" in r.stdout, r.stdout + r.stderr
    assert read_checkpoint(str(tmp_path / "last.pt"))["step"] == finished["step"]


def test_time_budget_is_kept_to_the_step_between_rare_progress_lines(tmp_path, data_path):
    # no progress line and no evaluation before the end: the budget (3 s) must still stop the
    # run, long before its 1,500 steps (~30 s here)
    args = TINY + ["--data", data_path, "--out_dir", str(tmp_path), "--max_steps", "1500", "--time_budget", "0.05",
                   "--eval_interval", "100000", "--log_interval", "100000"]
    train.main(args)
    last = read_checkpoint(str(tmp_path / "last.pt"))
    assert 0 < last["step"] < 1500
    assert 3.0 <= last["elapsed"] < 3.0 + 3.0, last["elapsed"]  # + the step that crossed it and the final eval


def test_resume_from_a_weights_only_checkpoint_is_a_one_line_error(tmp_path, data_path):
    out = tmp_path / "run"
    out.mkdir()
    import shutil
    shutil.copy(os.path.join(ROOT, "weights", "model.pt"), out / "last.pt")
    r = run_script("train.py", "--resume", "--out_dir", out, "--data", data_path, "--device", "cpu")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "weights-only" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_stale_temp_files_of_dead_processes_are_removed_at_the_next_save(tmp_path):
    from checkpoint import save_checkpoint
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"best.pt.tmp{dead.pid}"
    stale.write_bytes(b"x" * 1000)
    mine = tmp_path / f"best.pt.tmp{os.getppid()}"  # a live process's temp file stays
    mine.write_bytes(b"y")
    save_checkpoint(str(tmp_path / "best.pt"), Transformer(ModelConfig(n_layer=1, n_embd=16, n_head=2)),
                    "".join(map(chr, range(33, 98))))  # 65 distinct characters: a duplicate is refused
    assert not stale.exists() and mine.exists()
    assert read_checkpoint(str(tmp_path / "best.pt"))["checksum"]


def test_flipped_weight_bytes_are_a_one_line_error(tmp_path):
    from checkpoint import save_checkpoint
    path = tmp_path / "m.pt"
    save_checkpoint(str(path), Transformer(ModelConfig(n_layer=1, n_embd=64, n_head=2)), "ab" * 32 + "c")
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(b ^ 0xFF for b in data[middle:middle + 4096])
    path.write_bytes(bytes(data))
    r = run_script("sample.py", "--ckpt", path, "--device", "cpu")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "checksum" in r.stderr or "corrupt" in r.stderr


def test_resume_may_start_an_ema_but_not_change_the_optimizer(tmp_path, data_path):
    args = TINY + ["--data", data_path, "--out_dir", str(tmp_path), "--eval_interval", "5", "--log_interval", "5"]
    train.main(args + ["--max_steps", "5"])
    r = run_script("train.py", *args, "--max_steps", "8", "--resume", "--optimizer", "muon")
    assert r.returncode == 1 and "optimizer" in r.stderr and "Traceback" not in r.stderr
    train.main(args + ["--max_steps", "8", "--resume", "--ema", "0.9"])
    last = read_checkpoint(str(tmp_path / "last.pt"))
    assert last["step"] == 8 and set(last["ema"]) == set(last["model"])


def test_torchrun_with_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    from cli import UserError
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match="--nproc_per_node 1 or fewer"):
        trainer.setup_distributed(train_config.TrainConfig())
