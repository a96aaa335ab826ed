"""Ctrl-C during start-up (each entry point's first statement, cli.run_entry_point): in every
entry point as its first import begins, and in the entry points the other tests leave out at
set times: train.py (importing torch, reading the data, building the model, then the loop),
tools/export_weights.py and dev/plot_spectrum.py: exit 130, no traceback. Real processes: the
signal's timing and the exit status are the point."""
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

# A sitecustomize (Python imports it before the script) that sends this process SIGINT as the
# script imports its first module after os and signal, which its first statement imports to
# install the handler: the moment a Ctrl-C 0.1 s after start lands in, made certain. Before,
# that moment was `import cli`, and the KeyboardInterrupt printed the import's traceback.
INTERRUPT_AT_FIRST_IMPORT = """
import os, signal, sys

class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if getattr(sys.modules.get("__main__"), "__file__", None) and name not in ("os", "signal"):
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, Interrupt())
"""
ENTRY_POINTS = ("train.py", "sample.py", "evaluate.py", "quality.py", "bench.py", "diffusion_process.py",
                "plot_curve.py", os.path.join("tools", "export_weights.py"), os.path.join("dev", "plot_spectrum.py"),
                os.path.join("data", "prepare.py"))


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_ctrl_c_at_the_first_import_exits_130_without_a_traceback(tmp_path, script):
    (tmp_path / "sitecustomize.py").write_text(INTERRUPT_AT_FIRST_IMPORT)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    r = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 130 and r.stdout == "" and r.stderr == "", (r.returncode, r.stderr[-2000:])


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
