"""cli.py and what every entry point shares, on real processes (the rest of the suite calls
main(argv) in-process): --help, a one-line error with the process's exit status, Ctrl-C at any
time (while torch imports, while working) exits 130 without a traceback. And cli.Progress: a
progress line on terminals only, with an ETA, erased at the end."""
import io
import os
import signal
import subprocess
import sys
import time

import pytest

from cli import Progress, format_seconds, run_entry_point
from conftest import ROOT, assert_one_line_error, run_scripts


# -----------------------------------------------------------------------------
# Every entry point as a real process

def test_every_cli_has_help():
    commands = [("train.py",), ("sample.py",), ("diffusion_process.py",), ("data/prepare.py",), ("bench.py",),
                ("bench.py", "--sample"), ("quality.py",), ("plot_curve.py",), ("tools/export_weights.py",),
                ("evaluate.py",)]
    for command, r in zip(commands, run_scripts([(*command, "--help") for command in commands])):
        assert r.returncode == 0 and "usage" in r.stdout, (command, r.stderr)


BAD_INPUT = [
    ("train.py", ["--data", "MISSING"], 1, "data file not found"),
    ("sample.py", ["--ckpt", "MISSING"], 1, "not found"),
    ("sample.py", ["--bogus"], 2, "unrecognized arguments"),  # argparse's errors: one line too
    ("evaluate.py", ["--ckpt", "MISSING"], 1, "not found"),
    ("bench.py", ["--sample", "--ckpt", "MISSING", "--device", "cpu"], 1, "not found"),
    ("quality.py", ["--ckpt", "MISSING", "--device", "cpu"], 1, "not found"),
    ("diffusion_process.py", ["--ckpt", "MISSING", "--save", "OUT.gif"], 1, "not found"),
    ("plot_curve.py", ["MISSING"], 1, "cannot read"),
    ("tools/export_weights.py", ["MISSING", "OUT.pt"], 1, "not found"),
    ("data/prepare.py", ["--from", "MISSING", "--out", "OUT.txt"], 1, "cannot read"),
]


def test_bad_input_to_a_real_process_is_one_line_and_a_non_zero_exit(tmp_path):
    folders = [tmp_path / str(i) for i in range(len(BAD_INPUT))]  # one each: nothing may be written there
    commands = []
    for folder, (script, args, _, _) in zip(folders, BAD_INPUT):
        folder.mkdir()
        commands.append((script, *[str(folder / a) if a.startswith(("MISSING", "OUT")) else a for a in args]))
    for folder, (script, args, status, needle), r in zip(folders, BAD_INPUT, run_scripts(commands)):
        assert_one_line_error(r, f"{os.path.basename(script)}: error: ", needle)
        assert r.returncode == status and r.stdout == "" and os.listdir(folder) == [], (script, args)


@pytest.mark.parametrize("script, args, delay", [
    ("sample.py", ["--device", "cpu", "--length", "3000"], 0.3),   # while torch is imported
    ("evaluate.py", ["--device", "cpu"], 0.3),
    ("quality.py", ["--device", "cpu", "--prompts", "8"], 0.3),
    ("bench.py", ["--sample", "--device", "cpu", "--batch-sizes", "4"], 0.3),
    ("bench.py", ["--sample", "--device", "cpu", "--batch-sizes", "4"], 4.0),  # while it times
    ("plot_curve.py", ["assets/runs/i_reg.jsonl", "--out", "OUT"], 0.3),
])
def test_ctrl_c_at_any_time_exits_130_without_a_traceback(script, args, delay, tmp_path, data_path):
    args = [str(tmp_path / "x.png") if a == "OUT" else a for a in args]
    env = dict(os.environ, TINY_SHAKESPEARE=data_path)
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]


@pytest.mark.parametrize("after", [0.5, 4.0])  # while torch imports; while sampling
def test_ctrl_c_in_sample_exits_quietly_with_130(tiny_ckpt, after):
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "sample.py"), "--ckpt", tiny_ckpt, "--device", "cpu",
                             "--length", "20000", "--steps", "20000"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(after)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr and "terminate" not in stderr, stderr


def test_a_ctrl_c_that_library_code_turned_into_another_exception_exits_130():
    class Field:
        def __set_name__(self, owner, name):
            raise KeyboardInterrupt  # a Ctrl-C landing here, as in torch._dynamo's lazy import

    def building_a_class():
        class Source:  # Python 3.11 raises RuntimeError('Error calling __set_name__ ...') from it
            field = Field()

    def failing():
        raise RuntimeError("a bug, not a Ctrl-C")

    with pytest.raises(SystemExit) as stop:
        run_entry_point(building_a_class)
    assert stop.value.code == 130
    with pytest.raises(RuntimeError, match="a bug"):  # anything else keeps its traceback
        run_entry_point(failing)


# -----------------------------------------------------------------------------
# cli.Progress

class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_silent_when_stderr_is_not_a_terminal():
    stream = io.StringIO()
    p = Progress("work", total=3, stream=stream, every=0)
    for _ in range(3):
        p.update()
    p.close()
    assert stream.getvalue() == ""


def test_progress_on_a_terminal_counts_and_erases_itself():
    stream = Terminal()
    p = Progress("scoring", total=4, stream=stream, every=0)
    p.update(2)
    assert "scoring 2/4 (50%)" in stream.getvalue() and "ETA" in stream.getvalue()
    p.update(2)
    assert "scoring 4/4 (100%)" in stream.getvalue()
    p.close()
    assert stream.getvalue().endswith("\r") and stream.getvalue().rsplit("\r", 2)[-2].strip() == ""


def test_progress_can_be_switched_off():
    stream = Terminal()
    p = Progress("work", total=2, stream=stream, enabled=False, every=0)
    p.update(2)
    assert stream.getvalue() == ""


def test_format_seconds_reads_as_a_duration():
    assert [format_seconds(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]
