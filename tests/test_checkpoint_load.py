"""Every reader of a checkpoint refuses NaN weights with one line (a valid checksum says only
that the bytes are as written; a diverged run's are NaN): sampling, evaluation, --resume and
--distill_from's teacher; and --distill_from refuses a block model (trained block-causally, it
would be distilled and sampled as a plain diffusion model). Nothing is written."""
import os

import pytest
import torch

import evaluate
import sample
import train
from checkpoint import read_checkpoint, save_checkpoint, write_checkpoint
from model import ModelConfig, Transformer

TEXT = "To be, or not to be, that is the question.\n" * 50
CHARS = sorted(set(TEXT))
SMALL = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "16", "--batch_size", "4",
         "--device", "cpu", "--eval_mc", "1"]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    return str(path)


def untrained(path, **config):
    model = Transformer(ModelConfig(vocab_size=len(CHARS) + 1, block_size=16, n_layer=1, n_head=2, n_embd=32,
                                    **config))
    save_checkpoint(str(path), model, CHARS)
    return str(path)


def with_nan(path):
    """The checkpoint at `path` with one weight NaN, written with a valid checksum."""
    ckpt = read_checkpoint(path)
    name = sorted(k for k, v in ckpt["model"].items() if v.is_floating_point())[0]
    ckpt["model"][name].view(-1)[0] = float("nan")
    write_checkpoint(ckpt, path)
    return name


def one_line_exit(capsys, main, argv, script):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    message = str(stop.value.code)
    assert message.startswith(f"{script}: error: ") and "\n" not in message, message
    assert "Traceback" not in capsys.readouterr().err
    return message


def test_evaluate_refuses_nan_weights(capsys, tmp_path, text_file):
    # it evaluated to "nan ± nan" with exit 0
    path = untrained(tmp_path / "nan.pt")
    name = with_nan(path)
    message = one_line_exit(capsys, evaluate.main, ["--ckpt", path, "--data", text_file, "--device", "cpu"],
                            "evaluate.py")
    assert f"weights {name} hold NaN or infinite values" in message


def test_sample_refuses_nan_weights(capsys, tmp_path):
    path = untrained(tmp_path / "nan.pt")
    with_nan(path)
    message = one_line_exit(capsys, sample.main, ["--ckpt", path, "--device", "cpu", "--length", "8"], "sample.py")
    assert "hold NaN or infinite values" in message and capsys.readouterr().out == ""


def test_resume_refuses_a_last_pt_with_nan_weights(capsys, tmp_path, text_file):
    out = tmp_path / "run"
    train.main(SMALL + ["--data", text_file, "--out_dir", str(out), "--max_steps", "2", "--eval_interval", "2"])
    with_nan(str(out / "last.pt"))
    before = {f: os.path.getmtime(out / f) for f in os.listdir(out)}
    message = one_line_exit(capsys, train.main, SMALL + ["--data", text_file, "--out_dir", str(out), "--resume",
                                                          "--max_steps", "4"], "train.py")
    assert "last.pt: weights" in message and "NaN" in message
    assert {f: os.path.getmtime(out / f) for f in os.listdir(out)} == before  # nothing written


def test_distillation_refuses_a_teacher_with_nan_weights(capsys, tmp_path, text_file):
    teacher = untrained(tmp_path / "teacher.pt")
    with_nan(teacher)
    out = tmp_path / "student"
    message = one_line_exit(capsys, train.main, ["--distill_from", teacher, "--data", text_file, "--out_dir", str(out),
                                                 "--device", "cpu"], "train.py")
    assert "teacher.pt: weights" in message and "NaN" in message and not out.exists()


def test_distillation_refuses_a_block_model(capsys, tmp_path, text_file):
    teacher = untrained(tmp_path / "block.pt", objective="block", block_len=4)
    out = tmp_path / "student"
    message = one_line_exit(capsys, train.main, ["--distill_from", teacher, "--data", text_file, "--out_dir", str(out),
                                                 "--device", "cpu"], "train.py")
    assert "is a model of objective block; distillation needs a diffusion model" in message and not out.exists()


@pytest.mark.parametrize("model", ["abc", {"wte.weight": 5}, None])
@pytest.mark.parametrize("checksum", [True, False])  # a stored checksum was computed over "abc": a traceback
def test_a_checkpoint_whose_model_is_not_weights_is_one_line(capsys, tmp_path, model, checksum):
    from conftest import entry_point
    path = untrained(tmp_path / "odd.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"] = model
    if not checksum:
        ckpt.pop("checksum")  # by hand, as a foreign tool might write it
    torch.save(ckpt, path)
    message = one_line_exit(capsys, sample.main, ["--ckpt", path, "--device", "cpu"], "sample.py")
    assert "model must be a dict of weight tensors" in message
    export = entry_point("tools/export_weights.py").main  # reads without the NaN check: its own counts them
    message = one_line_exit(capsys, export, [path, str(tmp_path / "out.pt")], "export_weights.py")
    assert "model must be a dict of weight tensors" in message and not (tmp_path / "out.pt").exists()
