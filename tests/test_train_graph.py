"""trainer.StepGraph (train.py --cuda_graph): the training step captured as one CUDA graph.
The graph itself runs on CUDA only (those tests skip elsewhere); its rules are checked here."""
import itertools
import os
import signal

import pytest
import torch

import train
import trainer
from checkpoint import read_checkpoint
from conftest import TINY

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# dropout everywhere and an EMA: every random state and every piece of optimiser state counts
GRAPHED = [a if a != "cpu" else "cuda" for a in TINY] + [
    "--max_steps", "30", "--eval_interval", "15", "--log_interval", "5", "--dropout", "0.1", "--attn_dropout",
    "0.1", "--embd_dropout", "0.1", "--ema", "0.9", "--cuda_graph", "on", "--compile", "on"]


def _last(out_dir):
    ckpt = read_checkpoint(os.path.join(out_dir, "last.pt"))
    return ckpt, {**ckpt["model"], **{"ema." + k: v for k, v in ckpt["ema"].items()}}


@pytest.mark.parametrize("flags", [["--cuda_graph", "on", "--device", "cpu"],
                                   ["--cuda_graph", "on", "--optimizer", "muon"]])
def test_a_step_graph_where_it_cannot_run_is_a_one_line_error(flags, tmp_path, data_path):
    with pytest.raises(SystemExit) as exit_:
        train.main(TINY + ["--data", data_path, "--out_dir", str(tmp_path)] + flags)
    message = exit_.value.code  # sys.exit(message): printed to stderr, exit status 1
    assert message.startswith("train.py: error: --cuda_graph on:") and "\n" not in message
    assert not os.listdir(tmp_path), "nothing written"


def test_the_optimiser_state_saved_holds_plain_rates():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    opt.param_groups[0]["lr"] = torch.tensor(0.25)
    opt.param_groups[0]["capturable"] = True
    group = trainer.host_state(opt)["param_groups"][0]
    assert group["lr"] == 0.25 and type(group["lr"]) is float and group["capturable"] is False
    assert torch.is_tensor(opt.param_groups[0]["lr"]), "the live optimiser keeps its tensor"


@needs_cuda
def test_a_graphed_run_trains_and_says_so(tmp_path, data_path, capsys):
    train.main(GRAPHED + ["--data", data_path, "--out_dir", str(tmp_path), "--max_steps", "100"])
    out = capsys.readouterr().out
    assert "step as a CUDA graph" in out
    losses = [float(line.split("loss ")[1].split()[0]) for line in out.splitlines() if line.startswith("step ")]
    assert losses[-1] < losses[0] - 0.5
    ckpt = read_checkpoint(str(tmp_path / "last.pt"))
    assert all(type(g["lr"]) is float for state in ckpt["optimizer"] for g in state["param_groups"])


@needs_cuda
def test_a_graphed_run_resumed_is_bit_exact(tmp_path, data_path, monkeypatch):
    """Ctrl-C at step 17 of a graphed run (its steps 4.. are replays), resume (its first three
    steps run eagerly, then a new capture): == 30 graphed steps straight through, bit for bit."""
    args = GRAPHED + ["--data", data_path]
    train.main(args + ["--out_dir", str(tmp_path / "straight")])
    real, calls = trainer.EMA.update, itertools.count(1)

    def update(*a, **k):  # the step's end: EMA.update runs outside the graph, every step
        if next(calls) == 17:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)
    monkeypatch.setattr(trainer.EMA, "update", update)
    with pytest.raises(SystemExit):
        train.main(args + ["--out_dir", str(tmp_path / "split")])
    monkeypatch.undo()
    assert read_checkpoint(str(tmp_path / "split" / "last.pt"))["step"] == 17
    train.main(args + ["--out_dir", str(tmp_path / "split"), "--resume"])
    (a, wa), (b, wb) = _last(str(tmp_path / "straight")), _last(str(tmp_path / "split"))
    assert a["step"] == b["step"] == 30
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
