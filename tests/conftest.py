import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

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


def run_script(script, *args, timeout=300, **kwargs):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


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
