"""bench.py: settings and paths it cannot time are one line before anything is timed (issue 31):
--settings cache=exact on a non-block model was a ValueError traceback, --paths fast,fast timed
the same path twice and reported a speed-up of 1."""
import pytest

import bench
from checkpoint import save_checkpoint
from model import ModelConfig, Transformer


@pytest.fixture(scope="module")
def untrained_ckpt(tmp_path_factory):
    """A tiny diffusion model that was never trained: the rules depend on its config only."""
    chars = sorted(set("To be, or not to be, that is the question.\n"))
    model = Transformer(ModelConfig(vocab_size=len(chars) + 1, block_size=16, n_layer=1, n_head=2, n_embd=32))
    path = str(tmp_path_factory.mktemp("untrained") / "model.pt")
    save_checkpoint(path, model, chars)
    return path


def bench_error(capsys, argv):
    with pytest.raises(SystemExit) as stop:
        bench.main(argv)
    message = str(stop.value.code)
    assert message.startswith("bench.py: error: ") and "\n" not in message, message
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "chars/s" not in out, "refused before any timing"
    return message


@pytest.mark.parametrize("setting, needle", [
    ("cache=exact", "setting 'cache=exact': --cache exact needs a block model"),
    ("default cache=exact", "setting 'cache=exact': --cache exact needs a block model"),  # the second of two
])
def test_a_setting_the_checkpoint_cannot_take_is_one_line_before_timing(capsys, untrained_ckpt, setting, needle):
    argv = ["--sample", "--ckpt", untrained_ckpt, "--device", "cpu", "--ar", "none", "--batch-sizes", "1",
            "--runs", "1", "--warmup", "0", "--prompt", "To", "--length", "12", "--settings", *setting.split()]
    assert needle in bench_error(capsys, argv)


@pytest.mark.parametrize("paths", ["fast,fast", "plain,fast,plain"])
def test_a_path_named_twice_is_refused(capsys, paths):
    assert "--paths a comma list of distinct paths" in bench_error(capsys, ["--paths", paths, "--steps", "1"])
