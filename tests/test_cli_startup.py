"""Ctrl-C during start-up (cli.exit_on_ctrl_c, cli.run_entry_point) in the entry points the other
tests leave out: train.py (importing torch, reading the data, building the model, then the
loop), tools/export_weights.py and dev/plot_spectrum.py: exit 130, no traceback. Real processes:
the signal's timing and the exit status are the point."""
import os
import signal
import subprocess
import sys
import time

import pytest

from checkpoint import save_checkpoint
from conftest import ROOT
from model import ModelConfig, Transformer

TEXT = "To be, or not to be, that is the question.\n" * 2000


def interrupted(argv, after):
    """Start `python argv...` in the repo, send SIGINT after `after` seconds: (status, stderr)."""
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    time.sleep(after)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.parametrize("after", [0.3, 1.5, 4.0])  # importing torch; reading and building; training
def test_ctrl_c_in_train_at_any_time_exits_130_without_a_traceback(tmp_path, after):
    (tmp_path / "text.txt").write_text(TEXT)
    code, err = interrupted(["train.py", "--data", str(tmp_path / "text.txt"), "--out_dir", str(tmp_path / "run"),
                             "--device", "cpu", "--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size",
                             "16", "--batch_size", "4", "--max_steps", "1000000"], after)
    assert code == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err, err


def test_ctrl_c_in_export_weights_exits_130_without_a_traceback(tmp_path):
    model = Transformer(ModelConfig(vocab_size=10, block_size=16, n_layer=1, n_head=2, n_embd=32))
    save_checkpoint(str(tmp_path / "best.pt"), model, "abcdefghi")
    code, err = interrupted([os.path.join("tools", "export_weights.py"), str(tmp_path / "best.pt"),
                             str(tmp_path / "out.pt")], 0.3)
    assert code == 130 and "Traceback" not in err, err
    assert not (tmp_path / "out.pt").exists()


def test_ctrl_c_in_plot_spectrum_exits_130_without_a_traceback(tmp_path):
    result = tmp_path / "eval.txt"
    result.write_text("m.pt: val NELBO 1.5000 ± 0.0100 nats/char (2.1640 bits/char) on 9 held-out chars [context 0: "
                      "1 blocks; exact; cpu, 0.1s]\n")
    code, err = interrupted([os.path.join("dev", "plot_spectrum.py"), f"4={result}", "--out",
                             str(tmp_path / "s.png")], 0.2)  # while matplotlib is imported
    assert code == 130 and "Traceback" not in err, err
