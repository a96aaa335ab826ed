"""sample.py: what a shell pipeline sees (only text on stdout, samples separated, the same text
for a seed, infilling in place), and its one-line errors; in-process through main(argv), a real
process where only one can tell (a reader that leaves early)."""
import os
import subprocess
import sys

import pytest

import sample
from checkpoint import read_checkpoint, write_checkpoint
from conftest import ROOT, assert_one_line_error


def test_sample_prints_only_text_with_separators(tiny_ckpt, run_main):
    r = run_main("sample.py", "--ckpt", tiny_ckpt, "--prompt", "ROMEO:", "--length", "40",
                 "--num-samples", "3", "--seed", "7", "--steps", "10", "--stats")
    assert r.returncode == 0, r.stderr
    samples = r.stdout.split("\n---\n")
    assert len(samples) == 3
    assert all(s.startswith("ROMEO:") and len(s) == 41 and s.endswith("\n") for s in samples)
    assert "10 forward passes (NFE)" in r.stderr and "chars/s" in r.stderr and "seed 7" in r.stderr


def test_sample_same_seed_same_text(tiny_ckpt, run_main):
    runs = [run_main("sample.py", "--ckpt", tiny_ckpt, "--length", "30", "--seed", "5").stdout for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 31


def test_sample_infills_underscores(tiny_ckpt, run_main):
    prompt = "ROMEO:\\nBut soft, what light through yonder ______ breaks?"
    r = run_main("sample.py", "--ckpt", tiny_ckpt, "--prompt", prompt, "--seed", "1", "--threshold", "0.5")
    assert r.returncode == 0, r.stderr
    text = r.stdout[:-1]
    expected = prompt.replace("\\n", "\n")
    assert len(text) == len(expected) and "_" not in text
    assert text.startswith("ROMEO:\nBut soft, what light through yonder ") and text.endswith(" breaks?")


def test_sample_py_takes_the_checkpoints_step_count_unless_steps_is_given(tiny_ckpt, tmp_path, run_main):
    ckpt = read_checkpoint(tiny_ckpt)
    ckpt.pop("checksum", None)
    write_checkpoint({**ckpt, "sampler": {"steps": 5}}, str(tmp_path / "student.pt"))
    common = ["--ckpt", tmp_path / "student.pt", "--prompt", "KING:", "--length", "30", "--seed", "0", "--stats",
              "--device", "cpu"]
    for extra, nfe in [([], 5), (["--steps", "7"], 7)]:
        r = run_main("sample.py", *common, *extra)
        assert r.returncode == 0, r.stderr
        assert f"[stats] {nfe} forward passes" in r.stderr
    r = run_main("sample.py", "--ckpt", tiny_ckpt, *common[2:])
    assert "[stats] 25 forward passes" in r.stderr, "no recommendation: the default 64, at most one per character"


def test_a_reader_that_leaves_early_ends_sampling_quietly(tiny_ckpt):
    """`sample.py --num-samples 200 | head -n1`: exit 141 (as SIGPIPE), no traceback."""
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "sample.py"), "--ckpt", tiny_ckpt, "--device", "cpu",
                          "--num-samples", "200", "--length", "40", "--seed", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    first = p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and first and err == ""


@pytest.mark.parametrize("args,needles", [
    (["--prompt", "héllo"], ["not in the model's vocabulary", "'é'"]),
    (["--prompt", "ROMEO: hello", "--length", "5"], ["shorter than the prompt"]),
    (["--length", "10000000"], ["--length must be"]),
    (["--length", "0"], ["--length must be"]),
    (["--threshold", "1.5"], ["--threshold must be in (0, 1]"]),
    (["--threshold", "0"], ["--threshold must be in (0, 1]"]),
    (["--temperature", "-1"], ["--temperature must be >= 0"]),
    (["--steps", "0"], ["--steps must be an integer >= 1"]),
    (["--steps", "4", "--threshold", "0.9"], ["not both"]),
    (["--threshold", "0.9", "--order", "random"], ["--order confidence"]),
    (["--device", "cuda"], ["not available"]),
    (["--device", "tpu"], ["device"]),
    (["--num-samples", "0"], ["--num-samples"]),
    (["--warmup", "-1"], ["--warmup must be in 0..1000"]),
    (["--order", "noisy", "--threshold", "0.5"], ["--order confidence"]),
    (["--remask", "-0.5"], ["--remask must be >= 0"]),
    (["--remask", "1", "--threshold", "0.9"], ["--remask needs --steps"]),
    (["--bogus"], ["unrecognized arguments"]),
    (["--temperature", "nan"], ["--temperature must be"]),
    (["--remask", "nan"], ["--remask must be >= 0"]),
    (["--top-p", "0"], ["--top-p must be in (0, 1]"]),
    (["--block", "0"], ["--block must be an integer >= 1"]),
    (["--remask-by", "chance"], ["--remask-by", "invalid choice"]),
    (["--block", "-4", "--cache", "dual"], ["--block must be an integer >= 1"]),
    (["--cache", "dual"], ["--cache dual needs --block"]),
    (["--cache", "sparse", "--order", "confidence"], ["--cache sparse needs", "random, spread or l2r"]),
    (["--cache", "sparse", "--refresh", "0"], ["--refresh must be an integer >= 1"]),
    (["--halo", "2"], ["--halo must be", "with --cache sparse or delayed", "--cache none"]),
    (["--cache", "delayed", "--halo", "-1"], ["--halo must be an integer >= 0"]),
    (["--order", "sideways"], ["--order", "invalid choice"]),
    (["--num-samples", "100000"], ["--num-samples must be in 1..10000"]),
    (["--cuda-graph", "--device", "cpu"], ["--cuda-graph needs a CUDA device"]),
    (["--cuda-graph", "--threshold", "0.9"], ["--cuda-graph needs a step schedule"]),
    (["--cuda-graph", "--compile", "reduce-overhead"], ["--compile default"]),
    (["--compile", "fastest"], ["--compile", "invalid choice"]),
    (["--seed", "4294967296"], ["--seed must be in 0..2147483647"]),
    (["--seed", "-1"], ["--seed must be in"]),
    (["--prompt", "A" * 100_001], ["more than 100,000"]),
])
def test_sample_bad_input_is_one_line(tiny_ckpt, args, needles, run_main):
    assert_one_line_error(run_main("sample.py", "--ckpt", tiny_ckpt, *args), *needles)


@pytest.mark.parametrize("flags, needle", [
    (["--cache", "exact"], "--cache exact needs a block model"),
    (["--context-keep", "32", "--length", "80"], "--context-keep must be below this model's context of 32")])
def test_rules_that_depend_on_the_checkpoint_are_one_line_errors(tiny_ckpt, flags, needle):
    # --context-keep >= the context used to loop forever planning the second window
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", tiny_ckpt, "--device", "cpu", *flags])
    assert str(e.value).startswith("sample.py: error:") and needle in str(e.value)


@pytest.mark.parametrize("flags, needle", [(["--cache", "sparse"], "a block model's cache is exact"),
                                           (["--block", "4"], "writes blocks of its block_len 8")])
def test_sampling_a_block_model_against_its_blocks_is_a_one_line_error(block_ckpt, flags, needle):
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", block_ckpt, "--device", "cpu", "--length", "20", *flags])
    assert str(e.value).startswith("sample.py: error:") and needle in str(e.value)
