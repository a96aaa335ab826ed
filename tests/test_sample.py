"""sample.py: what a shell pipeline sees, and its one-line errors."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT


def test_a_reader_that_leaves_early_ends_sampling_quietly(tiny_ckpt):
    """`sample.py --num-samples 200 | head -n1`: exit 141 (as SIGPIPE), no traceback."""
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "sample.py"), "--ckpt", tiny_ckpt, "--device", "cpu",
                          "--num-samples", "200", "--length", "40", "--seed", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    first = p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and first and err == ""


@pytest.mark.parametrize("flags, needle", [
    (["--cache", "exact"], "--cache exact needs a block model"),
    (["--context-keep", "32", "--length", "80"], "--context-keep must be below this model's context of 32")])
def test_rules_that_depend_on_the_checkpoint_are_one_line_errors(tiny_ckpt, flags, needle):
    # --context-keep >= the context used to loop forever planning the second window
    import sample
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", tiny_ckpt, "--device", "cpu", *flags])
    assert str(e.value).startswith("sample.py: error:") and needle in str(e.value)


def test_vanishing_temperature_and_top_p_tend_to_the_greedy_draw():
    # 1e-300 is 0 in float32: it used to divide by zero (NaN) and drop every character (newlines)
    import torch
    from denoise import draw_characters
    logits = torch.randn(3, 7, 20, generator=torch.Generator().manual_seed(0))
    u = torch.rand(3, 7, generator=torch.Generator().manual_seed(1))
    greedy = logits.argmax(-1)
    assert torch.equal(draw_characters(logits, 1e-300, None, None, u)[0], greedy)
    assert torch.equal(draw_characters(logits, 1.0, None, 1e-300, u)[0], greedy)
    assert torch.equal(draw_characters(logits, 1e-300, None, 1e-300, u)[0], greedy)


def test_a_checkpoint_with_nan_weights_is_refused_at_load(tmp_path, tiny_ckpt):
    # its checksum is valid (the bytes are as written): it used to sample newlines, exit 0
    import sample
    from checkpoint import read_checkpoint, write_checkpoint
    ckpt = read_checkpoint(tiny_ckpt)
    name = sorted(k for k, v in ckpt["model"].items() if v.is_floating_point())[0]
    ckpt["model"][name].view(-1)[3] = float("nan")
    write_checkpoint(ckpt, str(tmp_path / "nan.pt"))
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", str(tmp_path / "nan.pt"), "--device", "cpu", "--length", "20"])
    assert f"weights {name} hold NaN or infinite values" in str(e.value)


@pytest.mark.parametrize("flags, needle", [(["--mc", "1000000"], "--mc must be in 1..4096"),
                                           (["--seed", str(2 ** 64)], "--seed must be in 0..2**63-1")])
def test_evaluate_bounds_are_one_line_errors(flags, needle):
    import evaluate
    with pytest.raises(SystemExit) as e:
        evaluate.main(flags)
    assert str(e.value) == f"evaluate.py: error: {needle}, got {flags[1]}"
