"""Issue 22: what a user who mistypes a flag at 2 a.m. expects of diffusion_process.py,
plot_curve.py and tools/export_weights.py: one line on stderr saying what is wrong, a non-zero
exit, nothing of theirs written or overwritten; and a long GIF whose memory does not grow
with its frames. CPU only, a few seconds each (the memory test about 10)."""

import io
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
from PIL import Image, ImageChops

from conftest import ROOT, assert_one_line_error, run_script

HEADLESS = {**os.environ, "DISPLAY": "", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}




# -----------------------------------------------------------------------------
# diffusion_process.py: memory, the view of a long text, the GIF writer

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
    """Measured on the tiny model (context 32, one frame per 16 characters): --length 40 and
    --length 2000 (125 frames) peaked at 260 and 877 MB before (every frame's text, image and
    quantized image kept until the end; 2723 MB at --length 4000), 259 and 272 MB now."""
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
    import diffusion_process as dp
    chars = "\nabc"
    text = dp.Text([1, 2, 3, 0] * 500, chars)  # 500 lines "abc\n": 500 rows
    view = dp.View(40, scroll=True)
    for b0 in (0, 1000, 1996):  # the first block, one in the middle, the last
        frame = dp.Frame(text, {b0}, set(), 1, 1, (b0, b0 + 4))
        cells = view.place(frame)
        rows = {row for _, row, _ in cells}
        assert len(rows) <= 40 and b0 in {pos for pos, _, _ in cells}
        assert [row for pos, row, _ in cells if pos == b0 + 3][0] <= 40 - 1 - 10, "a quarter of the rows below"
    assert view.note(frame, cells).startswith(f"characters {view.top + 1}-2000 of 2000")
    assert dp.View(40, scroll=False).note(frame, cells) == ""


def test_gif_writer_streams_frames_and_merges_repeats():
    import diffusion_process as dp
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


# -----------------------------------------------------------------------------
# diffusion_process.py: the terminal, --compare

def test_terminal_with_term_dumb_prints_plain_frames(tiny_ckpt):
    r = run_script("diffusion_process.py", "--ckpt", tiny_ckpt, "--terminal", "--length", "32", "--steps", "4",
                   "--remask", "0.5", "--fps", "100", "--hold", "0", "--seed", "0", env={**HEADLESS, "TERM": "dumb"})
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout
    assert [f"step {i}/4" in r.stdout for i in range(5)] == [True] * 5, "every frame, one after another"


def test_terminal_through_a_closed_pipe_stops_quietly(tiny_ckpt):
    p = subprocess.Popen([sys.executable, "diffusion_process.py", "--ckpt", tiny_ckpt, "--terminal", "--length", "32",
                          "--steps", "8", "--fps", "20", "--hold", "0"], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=HEADLESS)
    p.stdout.readline()  # | head -1
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=60) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_compare_without_a_prompt_starts_from_romeo(tmp_path, tiny_ckpt, tiny_ar_ckpt):
    out = tmp_path / "compare.gif"
    r = run_script("diffusion_process.py", "--ckpt", tiny_ckpt, "--compare", tiny_ar_ckpt, "--save", out,
                   "--length", "30", "--steps", "4", "--seed", "0", "--device", "cpu", env=HEADLESS)
    assert r.returncode == 0, r.stderr
    # "ROMEO:" is 6 characters: 24 for the AR model to write, one a pass
    assert "25 frames (diffusion: 4 steps, NFE 4; autoregressive: 24 passes)" in r.stderr.splitlines()[-1]
    assert Image.open(out).n_frames == 25
    help_text = run_script("diffusion_process.py", "--help").stdout
    assert "'ROMEO:'" in " ".join(help_text.split()) and "TERM=dumb" in help_text


def test_compare_with_a_masked_first_character_is_one_line_error(tmp_path, tiny_ckpt, tiny_ar_ckpt):
    out = tmp_path / "new" / "c.gif"
    r = run_script("diffusion_process.py", "--ckpt", tiny_ckpt, "--compare", tiny_ar_ckpt, "--save", out,
                   "--prompt", "_OMEO:", "--length", "20", "--device", "cpu", env=HEADLESS)
    assert_one_line_error(r, "diffusion_process.py: error: --compare needs a prompt")
    assert not out.exists() and os.listdir(out.parent) == []


# -----------------------------------------------------------------------------
# plot_curve.py --out

def write_log(path):
    path.write_text('{"step": 0, "train_loss": 2.0, "time": 0}\n{"step": 10, "val": 1.9, "time": 60}\n')
    return path


def test_plot_curve_prints_the_path_it_wrote(tmp_path):
    log = write_log(tmp_path / "log.jsonl")
    folder = tmp_path / "plots"
    folder.mkdir()
    for out, written in ((folder, folder / "curve.png"), (tmp_path / "curve", tmp_path / "curve.png"),
                         (tmp_path / "c.svg", tmp_path / "c.svg")):
        r = run_script("plot_curve.py", log, "--out", out)
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"wrote {written}\n" and written.is_file()
    assert sorted(os.listdir(tmp_path)) == ["c.svg", "curve.png", "log.jsonl", "plots"]
    assert "curve.png" in " ".join(run_script("plot_curve.py", "--help").stdout.split())


def test_plot_curve_unknown_format_is_one_line_error(tmp_path):
    log = write_log(tmp_path / "log.jsonl")
    r = run_script("plot_curve.py", log, "--out", tmp_path / "curve.pgn")
    assert_one_line_error(r, "plot_curve.py: error: cannot write", "curve.pgn", "not supported")
    assert os.listdir(tmp_path) == ["log.jsonl"]


# -----------------------------------------------------------------------------
# tools/export_weights.py

@pytest.fixture
def keep(tmp_path):
    """A file the export must not touch."""
    path = tmp_path / "keep.pt"
    path.write_bytes(b"the user's")
    return path


def test_export_refuses_weights_that_are_not_finite(tmp_path, tiny_ckpt, keep):
    from checkpoint import read_checkpoint, write_checkpoint
    ckpt = read_checkpoint(tiny_ckpt)
    name = sorted(k for k, v in ckpt["model"].items() if v.is_floating_point())[-1]
    ckpt["model"][name].view(-1)[0] = float("nan")
    write_checkpoint(ckpt, str(tmp_path / "nan.pt"))  # a valid checksum: the file is not corrupt
    r = run_script("tools/export_weights.py", tmp_path / "nan.pt", keep)
    assert_one_line_error(r, "export_weights.py: error:", f"tensor {name}", "NaN/inf")
    assert keep.read_bytes() == b"the user's"


def test_export_into_a_folder_writes_there_under_the_source_name(tmp_path, tiny_ckpt):
    folder = tmp_path / "weights"
    folder.mkdir()
    r = run_script("tools/export_weights.py", tiny_ckpt, folder)
    assert r.returncode == 0, r.stderr
    assert os.listdir(folder) == ["best.pt"] and os.listdir(tmp_path) == ["weights"], "no weights.tmp<pid>"
    assert f"-> {folder / 'best.pt'}:" in r.stdout


def test_export_over_its_own_source_is_one_line_error(tmp_path, tiny_ckpt):
    src = tmp_path / "best.pt"
    shutil.copy(tiny_ckpt, src)
    before = src.read_bytes()
    for dst in (src, tmp_path):  # the file, and its folder (where the source's name is the source)
        r = run_script("tools/export_weights.py", src, dst)
        assert_one_line_error(r, "export_weights.py: error:", "is the source checkpoint itself")
    assert src.read_bytes() == before and os.listdir(tmp_path) == ["best.pt"]


def test_export_into_a_read_only_folder_is_a_plain_one_line_error(tiny_ckpt):
    """Run as another user where the tests run as root (root writes anywhere)."""
    as_user = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root, and no setpriv to drop to another user")
        as_user = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    work = tempfile.mkdtemp()  # not under pytest's tmp_path: the other user must reach it
    try:
        os.chmod(work, 0o755)
        src, folder = os.path.join(work, "best.pt"), os.path.join(work, "ro")
        shutil.copy(tiny_ckpt, src)
        os.chmod(src, 0o644)
        os.mkdir(folder, 0o555)
        r = subprocess.run([*as_user, sys.executable, os.path.join(ROOT, "tools", "export_weights.py"), src,
                            os.path.join(folder, "out.pt")], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert_one_line_error(r, "export_weights.py: error: cannot write", "Permission denied")
        assert "enforce fail" not in r.stderr and os.listdir(folder) == []
    finally:
        os.chmod(work, 0o700)
        shutil.rmtree(work)


def test_export_cleans_torch_save_errors(tmp_path, tiny_ckpt, monkeypatch, capsys):
    """A failure in torch.save itself (a full disk, say): no '[enforce fail at ...]', no temporary file."""
    import torch
    monkeypatch.syspath_prepend(os.path.join(ROOT, "tools"))
    import export_weights

    def full_disk(obj, f):  # a path or an open file
        (open(f, "wb") if isinstance(f, str) else f).write(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 512 vs 448")

    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(sys, "argv", ["export_weights.py", tiny_ckpt, str(tmp_path / "out.pt")])
    with pytest.raises(SystemExit) as e:
        export_weights.main()
    assert str(e.value) == f"export_weights.py: error: cannot write checkpoint {tmp_path / 'out.pt'}: " \
                           "unexpected pos 512 vs 448"
    assert os.listdir(tmp_path) == []
