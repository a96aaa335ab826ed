"""Bad input to quality.py, bench.py --sample, evaluate.py and the checkpoint/data loaders:
one line on stderr, a non-zero exit, no traceback."""
import pytest

from conftest import assert_one_line_error, run_script




def test_quality_bad_input_is_one_line(tmp_path, tiny_ckpt, tiny_ar_ckpt, data_path):
    base = ["--ckpt", tiny_ckpt, "--ar", tiny_ar_ckpt, "--device", "cpu", "--prompts", "2", "--prompt-chars", "8"]
    text = open(data_path).read()
    short = tmp_path / "short.txt"
    short.write_text(text[:100])
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    foreign = tmp_path / "foreign.txt"
    foreign.write_text(text[:20000] + "é" * 10)  # a character in the validation split the model never saw
    cases = [
        (["--ckpt", tiny_ar_ckpt], ["is an autoregressive baseline", "needs a diffusion model"]),
        (["--data", short], ["too few"]),
        (["--data", empty], ["too few"]),
        (["--data", foreign], ["not in the model's vocabulary", "'é'"]),
        (["--settings", "precision=fp64"], ["--precision must be one of"]),
        (["--prompts", "100000"], ["--prompts must be in 1..1024"]),
        (["--data", tmp_path], ["is a folder"]),
    ]
    for flags, needles in cases:
        assert_one_line_error(run_script("quality.py", *base, "--data", data_path, *flags), *needles)


def test_bench_sample_bad_input_is_one_line(tiny_ckpt):
    base = ["--sample", "--ckpt", tiny_ckpt, "--device", "cpu"]
    assert_one_line_error(run_script("bench.py", *base, "--batch-sizes", "100000"), "every batch size in 1..4096")
    assert_one_line_error(run_script("bench.py", *base, "--batch-sizes", "1,x"), "comma list of integers")
    assert_one_line_error(run_script("bench.py", *base, "--prompt", "ROMEO:", "--length", "3"),
                          "shorter than the prompt")


def test_a_folder_given_as_checkpoint_or_data_says_it_is_a_folder(tmp_path, tiny_ckpt):
    assert_one_line_error(run_script("sample.py", "--ckpt", tmp_path), "is a folder")
    assert_one_line_error(run_script("evaluate.py", "--ckpt", tiny_ckpt, "--data", tmp_path), "is a folder")
    assert_one_line_error(run_script("train.py", "--data", tmp_path), "is a folder")


def test_evaluate_checks_every_model_before_scoring_any(tmp_path, tiny_ckpt, data_path):
    import torch
    other = torch.load(tiny_ckpt, weights_only=True)
    from checkpoint import write_checkpoint
    other["config"]["block_size"] = 16  # rotary tables are not saved: the weights still fit
    path = tmp_path / "other.pt"
    write_checkpoint(other, str(path))  # re-stamped: a hand edit saved with torch.save is refused on load
    r = run_script("evaluate.py", "--ckpt", tiny_ckpt, "--paired", path, "--data", data_path, "--device", "cpu")
    assert_one_line_error(r, "same context length")
    assert r.stdout == "", "nothing was scored first"


@pytest.mark.parametrize("flags, needle", [(["--mc", "0"], "--mc"), (["--context", "-1"], "--context"),
                                           (["--context", "32"], "--context must be in 0..31")])
def test_evaluate_bad_input_is_one_line(tiny_ckpt, data_path, flags, needle):
    assert_one_line_error(run_script("evaluate.py", "--ckpt", tiny_ckpt, "--data", data_path, *flags), needle)
