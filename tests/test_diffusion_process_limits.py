"""diffusion_process.py's playback limits and the checkpoint's rules (issue 31): --fps 0.0015
overflowed the GIF's 16-bit frame duration (struct.error) and --fps 1e-300 the terminal's sleep
(OverflowError); --cache exact on a non-block model was a ValueError traceback (quality.py's
cache=exact setting too). Each is one line, before any work, and nothing is written."""
import io

import pytest
from PIL import Image

import diffusion_process
import quality
from checkpoint import save_checkpoint
from model import ModelConfig, Transformer

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer.\n" * 30
CHARS = sorted(set(TEXT))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("limits")
    (folder / "text.txt").write_text(TEXT)
    for name, objective in (("diffusion.pt", "diffusion"), ("ar.pt", "ar")):
        model = Transformer(ModelConfig(vocab_size=len(CHARS) + 1, block_size=16, n_layer=1, n_head=2, n_embd=32,
                                        objective=objective))
        save_checkpoint(str(folder / name), model, CHARS)
    return {k: str(folder / k) for k in ("text.txt", "diffusion.pt", "ar.pt")}


def one_line_exit(capsys, main, argv, script):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    message = str(stop.value.code)
    assert message.startswith(f"{script}: error: ") and "\n" not in message, message
    out, err = capsys.readouterr()
    assert "Traceback" not in err and out == ""
    return message


@pytest.mark.parametrize("flags, needle", [
    (["--save", "GIF", "--fps", "0.0015"], "--fps must be in [0.1, 100], got 0.0015"),
    (["--terminal", "--fps", "1e-300"], "--fps must be in [0.1, 100], got 1e-300"),
    (["--terminal", "--fps", "nan"], "--fps must be in [0.1, 100], got nan"),
    (["--save", "GIF", "--fps", "101"], "--fps must be in [0.1, 100], got 101"),
    (["--save", "GIF", "--hold", "-1"], "--hold must be in [0, 60] seconds, got -1"),
    (["--save", "GIF", "--cache", "exact"], "--cache exact needs a block model"),
])
def test_playback_and_checkpoint_rules_are_one_line_and_write_nothing(capsys, files, tmp_path, flags, needle):
    gif = tmp_path / "d.gif"
    flags = [str(gif) if f == "GIF" else f for f in flags]
    message = one_line_exit(capsys, diffusion_process.main, ["--ckpt", files["diffusion.pt"], "--device", "cpu",
                                                             "--length", "12", *flags], "diffusion_process.py")
    assert needle in message and not gif.exists()


def test_the_slowest_playback_allowed_writes_its_gif(files, tmp_path, capsys):
    gif = tmp_path / "slow.gif"
    diffusion_process.main(["--ckpt", files["diffusion.pt"], "--device", "cpu", "--length", "12", "--steps", "2",
                            "--seed", "0", "--save", str(gif), "--fps", "0.1", "--hold", "60"])
    image = Image.open(gif)
    image.seek(image.n_frames - 1)
    assert image.info["duration"] == 10_000 + 60_000  # one frame at 0.1 fps, then the hold


def test_a_frame_longer_than_a_gif_can_say_is_split():
    # identical frames lengthen the one before: past 655 s (16 bits of centiseconds) a new one starts
    buf = io.BytesIO()
    gif = diffusion_process.GifWriter(buf)
    red, blue = Image.new("RGB", (4, 4), "red"), Image.new("RGB", (4, 4), "blue")
    gif.add(red, 1000)
    for _ in range(3):
        gif.add(blue, 400_000)
    gif.close()
    image = Image.open(io.BytesIO(buf.getvalue()))
    durations = []
    for i in range(image.n_frames):
        image.seek(i)
        durations.append(image.info["duration"])
    assert durations == [1000, 400_000, 400_000, 400_000]  # not one frame of 1,200 s


def test_quality_refuses_a_setting_the_checkpoint_cannot_take(capsys, files):
    message = one_line_exit(capsys, quality.main, ["--ckpt", files["diffusion.pt"], "--ar", files["ar.pt"],
                                                   "--data", files["text.txt"], "--prompts", "2", "--prompt-chars",
                                                   "4", "--settings", "default", "cache=exact", "--device", "cpu"],
                            "quality.py")
    assert "setting 'cache=exact': --cache exact needs a block model" in message
