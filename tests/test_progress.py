"""Progress on long work (issue 31, item 5): cli.Progress's line on a terminal, with an ETA,
erased before anything else is printed, wherever work can pass ten seconds: sample.py (per
forward pass), evaluate.py and train.py's evaluations (per batch, diffusion.Shard), quality.py
(per setting and seed), diffusion_process.py (sampling, GIF frames). Never in pipes or logs,
never with --no-progress, and the results are the same with it as without."""
import io
from contextlib import redirect_stderr

import pytest
import torch

import diffusion
import diffusion_process
import evaluate
import quality
import sample
import train
from checkpoint import save_checkpoint
from cli import Progress
from model import ModelConfig, Transformer

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer.\n" * 30
CHARS = sorted(set(TEXT))


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def terminal(monkeypatch):
    """A terminal to stand for stderr (`with redirect_stderr(terminal)`: pytest sets its own
    sys.stderr again when the test starts); progress lines draw at every update."""
    monkeypatch.setattr(Progress, "EVERY", 0.0)
    return Terminal()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A text file, an untrained diffusion model and an untrained AR model of its vocabulary."""
    folder = tmp_path_factory.mktemp("progress")
    (folder / "text.txt").write_text(TEXT)
    for name, objective in (("diffusion.pt", "diffusion"), ("ar.pt", "ar")):
        torch.manual_seed(0)
        model = Transformer(ModelConfig(vocab_size=len(CHARS) + 1, block_size=16, n_layer=1, n_head=2, n_embd=32,
                                        objective=objective))
        save_checkpoint(str(folder / name), model, CHARS)
    return {k: str(folder / k) for k in ("text.txt", "diffusion.pt", "ar.pt")}


def last_line(stream):
    """The last line drawn before the erasure (lines are redrawn in place after a carriage return)."""
    drawn = [part.strip() for part in stream.getvalue().split("\r") if part.strip()]
    return drawn[-1] if drawn else ""


def test_progress_total_may_grow_and_clear_then_redraw():
    stream = Terminal()
    p = Progress("work", stream=stream, every=0)
    p.update()  # nothing known yet: nothing drawn
    assert stream.getvalue() == ""
    p.total += 4
    p.update(2)
    assert "work 2/4 (50%)" in stream.getvalue()
    p.clear()
    assert stream.getvalue().endswith("\r")
    p.update(2)
    assert last_line(stream).startswith("work 4/4 (100%)")


@pytest.mark.parametrize("order, mc", [("any", 3), ("l2r", 1)])
def test_an_evaluation_reports_every_batch_and_scores_the_same(files, order, mc):
    from checkpoint import load_model
    model, chars, _ = load_model(files["diffusion.pt"])
    val = torch.tensor([chars.index(c) for c in TEXT[:700]])
    plain, _ = diffusion.block_scores(model, val, 4, mc, 1234, order=order)
    progress = Progress("scoring", stream=Terminal(), every=0)
    shown, _ = diffusion.block_scores(model, val, 4, mc, 1234, diffusion.Shard(progress=progress), order)
    assert torch.equal(plain, shown)
    assert progress.done == progress.total > 1


def test_evaluate_draws_its_progress_on_a_terminal_and_erases_it(files, terminal, capsys):
    with redirect_stderr(terminal):
        evaluate.main(["--ckpt", files["diffusion.pt"], "--paired", files["ar.pt"], "--data", files["text.txt"],
                       "--device", "cpu"])
    drawn = terminal.getvalue()
    assert "scoring " + files["diffusion.pt"] + ": batch" in drawn and "scoring " + files["ar.pt"] in drawn
    assert "(100%)" in drawn and drawn.endswith("\r")
    assert "paired difference" in capsys.readouterr().out


def test_no_progress_draws_nothing(files, terminal):
    with redirect_stderr(terminal):
        evaluate.main(["--ckpt", files["diffusion.pt"], "--data", files["text.txt"], "--device", "cpu", "--no-progress"])
    assert terminal.getvalue() == ""


def test_sample_counts_forward_passes_and_writes_the_same_text(files, terminal, capsys):
    argv = ["--ckpt", files["diffusion.pt"], "--device", "cpu", "--length", "40", "--steps", "8", "--seed", "3",
            "--num-samples", "70"]  # two batches of up to 64
    with redirect_stderr(terminal):
        sample.main(argv + ["--no-progress"])
    quiet = capsys.readouterr().out
    assert terminal.getvalue() == ""
    with redirect_stderr(terminal):
        sample.main(argv)
    assert capsys.readouterr().out == quiet
    assert "sampling: pass 8/16 (50%)" in terminal.getvalue() and last_line(terminal).startswith("sampling: pass 16/16")


def test_a_threshold_run_ends_its_progress_at_the_plan(files, terminal, capsys):
    # a threshold run plans at most one pass per character: it may end early, and says 100%
    with redirect_stderr(terminal):
        sample.main(["--ckpt", files["diffusion.pt"], "--device", "cpu", "--length", "20", "--threshold", "0.01",
                     "--seed", "0"])
    assert "(100%)" in terminal.getvalue() and capsys.readouterr().out


def test_training_evaluations_draw_progress_for_rank_0(files, terminal, tmp_path, capsys):
    with redirect_stderr(terminal):
        train.main(["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "16", "--batch_size", "4",
                    "--device", "cpu", "--data", files["text.txt"], "--out_dir", str(tmp_path), "--max_steps", "2",
                    "--eval_interval", "2", "--eval_mc", "8", "--ema", "0.9"])
    drawn = terminal.getvalue()
    assert "evaluating the raw weights at step 2: batch" in drawn and "evaluating the EMA weights at step 2" in drawn
    assert drawn.endswith("\r") and "eval       2 |" in capsys.readouterr().out


def test_quality_counts_settings_and_seeds(files, terminal, capsys):
    with redirect_stderr(terminal):
        quality.main(["--ckpt", files["diffusion.pt"], "--ar", files["ar.pt"], "--data", files["text.txt"],
                      "--prompts", "2", "--prompt-chars", "4", "--settings", "default", "steps=4", "--seeds", "0,1",
                      "--device", "cpu"])
    assert "generating: setting x seed 2/4 (50%)" in terminal.getvalue()
    assert last_line(terminal).startswith("generating: setting x seed 4/4 (100%)")
    assert capsys.readouterr().out.count("| steps=4 |") == 1


def test_the_animation_reports_sampling_and_rendering(files, terminal, tmp_path):
    gif = tmp_path / "d.gif"
    with redirect_stderr(terminal):
        diffusion_process.main(["--ckpt", files["diffusion.pt"], "--device", "cpu", "--length", "20", "--steps", "4",
                                "--seed", "0", "--save", str(gif), "--hold", "0"])
    drawn = terminal.getvalue()
    assert "sampling: character" in drawn and "rendering: frame 5/5 (100%)" in drawn
    assert drawn.rstrip("\n").splitlines()[-1].startswith(f"wrote {gif}: 5 frames"), "the summary on a clean line"
