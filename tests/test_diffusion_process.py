"""diffusion_process.py, the denoising animated: what a user sees in a GIF, in a terminal and
side by side with the autoregressive baseline, and the one-line errors of bad input. Most
tests call main(argv) in this process; a real process is used where only a process can tell:
peak memory, a reader that goes away, Ctrl-C. CPU only, a few seconds each (memory about 10)."""

import io
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image, ImageChops

import diffusion_process as dp
from conftest import ROOT, assert_one_line_error

HEADLESS = {**os.environ, "DISPLAY": "", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}


@pytest.fixture
def run(run_main, monkeypatch):
    """run(*argv, term="xterm"): main(argv) in this process under TERM=term (conftest.run_main)."""
    def run(*argv, term="xterm"):
        monkeypatch.setenv("TERM", term)
        return run_main("diffusion_process.py", *argv)
    return run


# -----------------------------------------------------------------------------
# The GIF

def test_a_gif_holds_the_start_one_frame_per_step_and_the_last_one_longer(tmp_path, tiny_ckpt, run):
    gif = tmp_path / "d.gif"
    r = run("--ckpt", tiny_ckpt, "--save", gif, "--steps", 6, "--length", 32, "--fps", 4, "--hold", 1, "--seed", 0)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[-1] == f"wrote {gif}: 7 frames (6 steps, NFE 6), the last held 1 s longer"
    image = Image.open(gif)
    assert image.n_frames == 1 + 6  # the start and one per step
    # the 4 hold frames (1 s at 4 fps) repeat the last one: the GIF stores them as one long frame
    image.seek(image.n_frames - 1)
    assert image.info["duration"] == (1 + 4) * 250


def test_a_gif_shades_masks_and_highlights_new_characters(tmp_path, tiny_ckpt, run):
    gif = tmp_path / "missing" / "d.gif"  # the folder is created
    r = run("--ckpt", tiny_ckpt, "--save", gif, "--length", 40, "--steps", 4, "--seed", 0)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[-1].startswith(f"wrote {gif}: 5 frames"), "a pipe gets no progress line"
    image = Image.open(gif)
    assert image.n_frames == 5

    def pixels(i, kind):  # pixels of frame i in the masks' grey-blue (b > r) or the new characters' red
        image.seek(i)
        test = (lambda r, g, b: b - r >= 8) if kind == "mask" else (lambda r, g, b: r - g >= 60)
        return sum(n for n, px in image.convert("RGB").getcolors(1 << 16) if test(*px))

    assert pixels(0, "mask") > 500 and pixels(0, "new") == 0  # the start: all masks, shaded
    assert any(pixels(i, "new") for i in range(1, 5))  # committed characters highlighted (not spaces)
    assert pixels(4, "mask") == 0  # the end: no masks left


def test_the_gif_writer_streams_frames_and_merges_repeats():
    frames = [Image.new("RGB", (60, 40), "white") for _ in range(3)]
    frames[1].paste((214, 39, 40), (10, 10, 20, 20))
    frames[2] = frames[1].copy()  # the same again: one longer frame
    buf = io.BytesIO()
    gif = dp.GifWriter(buf)
    for image in frames:
        gif.add(image, 250)
    gif.close()
    read = Image.open(io.BytesIO(buf.getvalue()))
    assert read.n_frames == 2
    for i, (want, ms) in enumerate([(frames[0], 250), (frames[1], 500)]):
        read.seek(i)
        assert read.info["duration"] == ms and ImageChops.difference(read.convert("RGB"), want).getbbox() is None


PEAK = """import resource, subprocess, sys
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stderr.write(r.stderr)
print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"""


def peak_rss_mb(*args):
    """(exit status, peak resident MB, stderr) of a diffusion_process.py run, measured in its
    own parent process (RUSAGE_CHILDREN there covers that one run alone)."""
    r = subprocess.run([sys.executable, "-c", PEAK, sys.executable, os.path.join(ROOT, "diffusion_process.py"),
                        *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300, env=HEADLESS)
    code, kb = r.stdout.split()
    return int(code), int(kb) / 1024, r.stderr


def test_a_long_gif_is_drawn_and_written_in_bounded_memory(tmp_path, tiny_ckpt):
    """Frames are drawn and written one at a time: 125 frames (--length 2000 on the tiny model,
    one frame per 16 characters) peak within 100 MB of 5 frames (--length 40). Keeping every
    frame's text, image and quantized image until the end made memory grow with the frames."""
    short, long = tmp_path / "short.gif", tmp_path / "long.gif"
    code, base, err = peak_rss_mb("--ckpt", tiny_ckpt, "--length", 40, "--steps", 4, "--seed", 0, "--save", short)
    assert code == 0, err
    code, peak, err = peak_rss_mb("--ckpt", tiny_ckpt, "--length", 2000, "--steps", 64, "--seed", 0, "--save", long)
    assert code == 0, err
    assert "wrote" in err and "125 frames (124 steps, NFE 124)" in err
    assert peak - base < 100, f"{peak:.0f} MB for 125 frames against {base:.0f} MB for 5"
    gif = Image.open(long)
    assert gif.n_frames == 125
    assert gif.size == (900, 55 + 17 * 40 + 20), "at most 40 rows of text are drawn"


def test_a_long_text_is_shown_through_a_window_that_follows_the_block():
    chars = "\nabc"
    text = dp.Text([1, 2, 3, 0] * 500, chars)  # 500 lines "abc\n": 500 rows
    view = dp.View(40, scroll=True)
    for b0 in (0, 1000, 1996):  # the first block, one in the middle, the last
        frame = dp.Frame(text, {b0}, set(), 1, 1, (b0, b0 + 4))
        note, cells = view.show(frame)
        assert len({row for row, *_ in cells}) <= 40
        in_view = {pos for pos, _, _ in view.place(frame)}
        assert b0 in in_view and b0 + 3 in in_view
        assert [row for pos, row, _ in view.place(frame) if pos == b0 + 3][0] <= 40 - 1 - 10, "a quarter below"
    assert note.startswith(f"characters {view.top + 1}-2000 of 2000")
    assert dp.View(40, scroll=False).show(frame)[0] == ""


# -----------------------------------------------------------------------------
# The terminal

def test_the_terminal_redraws_in_place_and_gives_the_cursor_back(tiny_ckpt, run):
    r = run("--ckpt", tiny_ckpt, "--terminal", "--threshold", 0.8, "--length", 32, "--fps", 100, "--hold", 0,
            "--seed", 0)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\x1b[H\x1b[2J") >= 2 and "step 1/" in r.stdout
    assert r.stdout.startswith("\x1b[?25l") and r.stdout.rstrip("\n").endswith("\x1b[?25h")


def test_the_terminal_colours_each_re_opened_mask(tiny_ckpt, run):
    r = run("--ckpt", tiny_ckpt, "--terminal", "--steps", 8, "--remask", 1, "--length", 32, "--fps", 100,
            "--hold", 0, "--seed", 0)
    assert r.returncode == 0, r.stderr
    headers = re.findall(r"step (\d+)/8 \| NFE \d+(?: \| re-opened (\d+))? \| still masked (\d+)", r.stdout)
    assert len(headers) == 9 and headers[-1] == ("8", "", "0")
    reopened = [int(n or 0) for _, n, _ in headers]
    assert sum(reopened) > 0 and r.stdout.count("\x1b[33m") == sum(reopened), "each re-opened mask is coloured"


def test_the_terminal_with_term_dumb_prints_plain_frames(tiny_ckpt, run):
    r = run("--ckpt", tiny_ckpt, "--terminal", "--length", 32, "--steps", 4, "--remask", 0.5, "--fps", 100,
            "--hold", 0, "--seed", 0, term="dumb")
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout
    assert [f"step {i}/4" in r.stdout for i in range(5)] == [True] * 5, "every frame, one after another"


def test_the_terminal_through_a_closed_pipe_stops_quietly(tiny_ckpt):
    p = subprocess.Popen([sys.executable, "diffusion_process.py", "--ckpt", tiny_ckpt, "--terminal", "--length", "32",
                          "--steps", "8", "--fps", "20", "--hold", "0"], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=HEADLESS)
    p.stdout.readline()  # | head -1
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=60) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_ctrl_c_exits_quietly_with_130(tiny_ckpt):
    def interrupt(args, when):
        cmd = [sys.executable, "diffusion_process.py", "--ckpt", tiny_ckpt, "--seed", "0", *args]
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        when(p)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
        return p.returncode, out, err

    def wait_for_last_frame(p):  # then the 30 s hold is on
        for line in p.stdout:
            if "still masked 0" in line:
                return

    code, out, err = interrupt(["--terminal", "--length", "24", "--steps", "3", "--hold", "30"], wait_for_last_frame)
    assert code == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert out.endswith("\x1b[?25h\n")  # the cursor is back
    for after in (0.3, 1.0):  # importing torch (an exception there aborted the process), loading or sampling
        code, out, err = interrupt(["--terminal", "--hold", "30"], lambda p: time.sleep(after))
        assert code == 130 and "Traceback" not in err and "terminate" not in err, err


# -----------------------------------------------------------------------------
# --compare: beside the autoregressive baseline, on one clock of forward passes

def test_compare_shows_both_models_on_one_clock(tmp_path, tiny_ckpt, tiny_ar_ckpt, run):
    out = tmp_path / "compare.gif"
    flags = ["--ckpt", tiny_ckpt, "--compare", tiny_ar_ckpt, "--prompt", "KING:", "--length", 40, "--steps", 5,
             "--seed", 0, "--device", "cpu"]
    r = run(*flags, "--save", out)
    assert r.returncode == 0, r.stderr
    assert "36 frames (diffusion: 5 steps, NFE 5; autoregressive: 35 passes)" in r.stderr.splitlines()[-1]
    assert Image.open(out).n_frames == 1 + 35, "one frame per AR pass; the diffusion side holds after its 5"
    r = run(*flags, "--terminal", "--fps", 100, "--hold", 0)
    assert r.returncode == 0 and "autoregressive | step 35/35 | NFE 35" in r.stdout
    assert "diffusion | step 5/5 | NFE 5" in r.stdout


def test_compare_without_a_prompt_starts_from_romeo(tmp_path, tiny_ckpt, tiny_ar_ckpt, run):
    out = tmp_path / "compare.gif"
    r = run("--ckpt", tiny_ckpt, "--compare", tiny_ar_ckpt, "--save", out, "--length", 30, "--steps", 4,
            "--seed", 0, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    # "ROMEO:" is 6 characters: 24 for the AR model to write, one a pass
    assert "25 frames (diffusion: 4 steps, NFE 4; autoregressive: 24 passes)" in r.stderr.splitlines()[-1]
    assert Image.open(out).n_frames == 25
    help_text = run("--help").stdout
    assert "'ROMEO:'" in " ".join(help_text.split()) and "TERM=dumb" in help_text


def test_compare_with_a_masked_first_character_is_one_line_error(tmp_path, tiny_ckpt, tiny_ar_ckpt, run):
    out = tmp_path / "new" / "c.gif"
    r = run("--ckpt", tiny_ckpt, "--compare", tiny_ar_ckpt, "--save", out, "--prompt", "_OMEO:", "--length", 20,
            "--device", "cpu")
    assert_one_line_error(r, "diffusion_process.py: error: --compare needs a prompt")
    assert not out.exists() and os.listdir(out.parent) == []


def test_compare_with_a_diffusion_checkpoint_is_one_line_error_before_sampling(tiny_ckpt, run):
    r = run("--ckpt", tiny_ckpt, "--compare", tiny_ckpt, "--terminal", "--prompt", "KING:", "--length", 20,
            "--device", "cpu")
    assert_one_line_error(r, "is not an autoregressive model")  # one line: no sampling progress either


# -----------------------------------------------------------------------------
# Bad input: one line on stderr, a non-zero exit, before any model is loaded

def test_save_under_a_file_fails_before_loading(tmp_path, run):
    (tmp_path / "file.txt").write_text("x")
    # the checkpoint does not exist either: the --save error must come first, before any work
    r = run("--ckpt", tmp_path / "none.pt", "--save", tmp_path / "file.txt" / "d.gif")
    assert_one_line_error(r, "diffusion_process.py: error: cannot write", "is a file")


@pytest.mark.parametrize("flags, needle", [
    (["--fps", "0", "--terminal"], "--fps must be in [0.1, 100], got 0"),
    (["--hold", "61", "--terminal"], "--hold must be in [0, 60] seconds, got 61"),
    (["--save", "out.png"], "--save writes a GIF: give a .gif path"),
    (["--save", "DIR.gif"], "is a folder: give a .gif file path"),
    (["--save", "a.gif", "--terminal"], "not allowed with argument"),
])
def test_bad_flags_are_one_line_errors(tmp_path, run, flags, needle):
    (tmp_path / "DIR.gif").mkdir()
    flags = [str(tmp_path / f) if f == "DIR.gif" else f for f in flags]
    assert_one_line_error(run("--ckpt", tmp_path / "none.pt", *flags), needle)


def test_a_window_without_a_display_says_what_to_do(tmp_path, run):
    import matplotlib
    matplotlib.use("Agg")
    assert_one_line_error(run("--ckpt", tmp_path / "none.pt", "--length", 32), "no display", "--save", "--terminal")
