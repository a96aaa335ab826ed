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
