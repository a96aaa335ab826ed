import importlib
import importlib.util
import json
import os
import subprocess
import sys
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

def pytest_configure(config):
    # torch.compile's first use imports torch.utils.mkldnn, which calls torch's own deprecated
    # torch.jit.script_method (torch 2.13): a warning about torch, not about this repo
    config.addinivalue_line("filterwarnings", "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


# the tiny model every sampling and CLI test uses: 2 layers, width 64, context 32
TINY = ["--n_layer", "2", "--n_head", "2", "--n_embd", "64", "--block_size", "32", "--batch_size", "32",
        "--lr", "5e-3", "--warmup_steps", "20", "--eval_mc", "1", "--device", "cpu", "--seed", "0"]


def find_data():
    """$TINY_SHAKESPEARE, the shared copy beside the checkout (CI), else data/ (downloaded by
    prepare.py if absent); None if none of them is there and the download fails."""
    local = os.path.join(ROOT, "data", "tiny_shakespeare.txt")
    for path in (os.environ.get("TINY_SHAKESPEARE", ""),
                 os.path.join(ROOT, "..", "shared", "data", "tiny_shakespeare.txt"), local):
        if path and os.path.isfile(path):
            return os.path.abspath(path)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "data", "prepare.py")], capture_output=True, text=True)
    return None if r.returncode else local


@pytest.fixture(scope="session")
def data_path():
    """The data file; tests that need it are skipped, with the reason, where there is none."""
    path = find_data()
    if path is None:
        pytest.skip("no Tiny Shakespeare: set TINY_SHAKESPEARE=PATH or run python data/prepare.py [--from PATH]")
    return path


@pytest.fixture(scope="session")
def small_data(tmp_path_factory, data_path):
    """The data's first 100k characters: each evaluation scores 10k, not 111k (for the tests that
    need evaluations to happen, not to be good; every number they check comes from this file)."""
    path = tmp_path_factory.mktemp("data") / "small.txt"
    with open(data_path) as f:
        path.write_text(f.read(100_000))
    return str(path)


def run_script(script, *args, timeout=300, **kwargs):
    """A real process: what only a process can tell (its exit status, Ctrl-C, --help as a shell
    sees it). Everything else calls main(argv) in this process (run_main): a process costs the
    seconds of importing torch."""
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def run_scripts(commands, timeout=300):
    """run_script for each (script, *args) of `commands`, the processes started together (each
    spends its first seconds importing torch; two cores take two at a time): CompletedProcesses."""
    procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for script, *args in commands]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def entry_point(script):
    """The module of an entry point, imported once: a file at the root by its name (the module a
    test's `import sample` gives), tools/, data/ and dev/ scripts from their path."""
    name = os.path.splitext(os.path.basename(script))[0]
    if os.path.dirname(script) == "":
        return importlib.import_module(name)
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, script))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


# the warnings a real process prints (Python's default filters); pytest would collect them instead
PROCESS_WARNINGS = [("ignore", DeprecationWarning), ("ignore", PendingDeprecationWarning),
                    ("ignore", ImportWarning), ("ignore", ResourceWarning)]


@pytest.fixture
def run_main(capsys, monkeypatch):
    """run_main("sample.py", *args): the entry point's main(argv) in this process, ended as its
    process would end, as a CompletedProcess of the exit status, stdout and stderr: from the
    repository root (as run_script), with the script's name in sys.argv[0] (argparse's messages
    name it); sys.exit("message") prints the message and exits 1, as Python does, and a warning
    a process would print is on stderr."""
    def run(script, *args):
        argv = [str(a) for a in args]
        main = entry_point(script).main
        monkeypatch.chdir(ROOT)
        monkeypatch.setattr(sys, "argv", [os.path.join(ROOT, script), *argv])
        capsys.readouterr()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for action, category in PROCESS_WARNINGS:
                warnings.filterwarnings(action, category=category)
            try:
                main(argv)
                code = 0
            except SystemExit as e:
                code = 0 if e.code is None else e.code
        out, err = capsys.readouterr()
        err += "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught)
        if isinstance(code, str):
            err, code = err + code + "\n", 1
        return subprocess.CompletedProcess([script, *argv], code, out, err)
    return run


def exit_message(main, argv):
    """main(argv)'s exit message: it must stop with one line, `script.py: error: ...`."""
    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in argv])
    message = stop.value.code
    assert isinstance(message, str) and "\n" not in message, message
    assert message.startswith(f"{main.__module__}.py: error: "), message
    return message


def train_error(capsys, argv):
    """train.main(argv)'s exit message: one line, no traceback on stderr either."""
    import train
    message = exit_message(train.main, argv)
    assert "Traceback" not in capsys.readouterr().err
    return message


def assert_one_line_error(r, *needles):
    """A CLI's answer to bad input: a non-zero exit and one line on stderr holding every needle."""
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, data_path):
    """Train the tiny model for 800 steps (~15 s) once; tests read its checkpoints and log."""
    import train
    out = str(tmp_path_factory.mktemp("tiny"))
    train.main(TINY + ["--data", data_path, "--out_dir", out, "--max_steps", "800",
                       "--eval_interval", "400", "--log_interval", "100"])
    return out


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_run):
    return os.path.join(tiny_run, "best.pt")


@pytest.fixture(scope="session")
def tiny_model(tiny_ckpt):
    from checkpoint import load_model
    model, chars, _ = load_model(tiny_ckpt)
    return model, chars


@pytest.fixture(scope="session")
def tiny_ar_ckpt(tmp_path_factory, data_path):
    """An autoregressive baseline of the tiny size, 40 steps: enough to have the right shape."""
    import train
    out = str(tmp_path_factory.mktemp("tiny_ar"))
    train.main(TINY + ["--data", data_path, "--out_dir", out, "--objective", "ar", "--max_steps", "40",
                       "--eval_interval", "40", "--log_interval", "20"])
    return os.path.join(out, "best.pt")


SIGNAL_POINTS = ("batch", "loss", "clip", "ema")  # where in a training step a signal can land


def interrupt_at(monkeypatch, step, where="batch"):
    """A real SIGINT to this process during training step `step` (1-based), at `where`: the
    step's start (its batch), after the batch was drawn (the loss), after backward and before
    the optimiser (the gradient clip), after the optimiser (the EMA's update, the step's end)."""
    import itertools
    import signal
    import objectives
    import torch
    import trainer
    owner, name = {"batch": (trainer, "get_batch"), "loss": (objectives, "diffusion_loss"),
                   "clip": (torch.nn.utils, "clip_grad_norm_"), "ema": (trainer.EMA, "update")}[where]
    real = getattr(owner, name)
    calls = itertools.count(1)

    def wrapper(*args, **kwargs):
        if next(calls) == step:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)
    monkeypatch.setattr(owner, name, wrapper)


def straight_and_resumed(monkeypatch, args_for, data, tmp_path, step):
    """One run straight through (tmp_path/straight) and the same run stopped by a real SIGINT during
    `step`, then resumed (tmp_path/split); args_for(out_dir) is its train.py argv. Returns the
    last.pt of each, and the split run's as the interrupt left it: (straight, resumed, stopped)."""
    import train
    from checkpoint import read_checkpoint
    train.main(args_for(tmp_path / "straight"))
    interrupt_at(monkeypatch, step)
    with pytest.raises(SystemExit):
        train.main(args_for(tmp_path / "split"))
    monkeypatch.undo()
    stopped = read_checkpoint(str(tmp_path / "split" / "last.pt"))
    train.main(["--resume", "--out_dir", str(tmp_path / "split"), "--data", data, "--device", "cpu"])
    return (*(read_checkpoint(str(tmp_path / run / "last.pt")) for run in ("straight", "split")), stopped)


# Random tiny networks, no training: every weight perturbed (output projections start at zero)

VOCAB = 66  # 65 characters and the mask


def random_tiny_model(T):
    """A diffusion network of context T, 2 layers, width 32, every weight drawn N(0, 0.3)."""
    import torch
    from model import ModelConfig, Transformer
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=T)).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model


def perturbed_model(block_len, block_size=32):
    """A block-diffusion network of blocks of block_len (0: a plain diffusion one), weights N(0, 0.2)."""
    import torch
    from model import ModelConfig, Transformer
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32, block_size=block_size,
                                    objective="block" if block_len else "diffusion", block_len=block_len))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return model.eval()


@pytest.fixture
def block_ckpt(tmp_path):
    """perturbed_model(8) saved as a checkpoint: a block model for the entry points' rules."""
    from checkpoint import save_checkpoint
    chars = [chr(33 + i) for i in range(VOCAB - 2)] + ["\n"]  # VOCAB - 1 characters and the mask
    path = str(tmp_path / "block.pt")
    save_checkpoint(path, perturbed_model(8), chars)
    return path


def pytest_terminal_summary(terminalreporter):
    """Why tests were skipped, one line per reason, without -rs: 170 skipped for want of the
    data file should say so."""
    reasons = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"skipped {n}: {reason}")
