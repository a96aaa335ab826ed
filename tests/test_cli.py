"""Every CLI: the happy path prints what the README says; bad input is one line, exit != 0."""

import os

import pytest

from conftest import TINY, assert_one_line_error, run_script




def test_sample_prints_only_text_with_separators(tiny_ckpt):
    r = run_script("sample.py", "--ckpt", tiny_ckpt, "--prompt", "ROMEO:", "--length", "40",
                   "--num-samples", "3", "--seed", "7", "--steps", "10", "--stats")
    assert r.returncode == 0, r.stderr
    samples = r.stdout.split("\n---\n")
    assert len(samples) == 3
    assert all(s.startswith("ROMEO:") and len(s) == 41 and s.endswith("\n") for s in samples)
    assert "10 forward passes (NFE)" in r.stderr and "chars/s" in r.stderr and "seed 7" in r.stderr


def test_sample_same_seed_same_text(tiny_ckpt):
    runs = [run_script("sample.py", "--ckpt", tiny_ckpt, "--length", "30", "--seed", "5").stdout for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 31


def test_sample_infills_underscores(tiny_ckpt):
    prompt = "ROMEO:\\nBut soft, what light through yonder ______ breaks?"
    r = run_script("sample.py", "--ckpt", tiny_ckpt, "--prompt", prompt, "--seed", "1", "--threshold", "0.5")
    assert r.returncode == 0, r.stderr
    text = r.stdout[:-1]
    expected = prompt.replace("\\n", "\n")
    assert len(text) == len(expected) and "_" not in text
    assert text.startswith("ROMEO:\nBut soft, what light through yonder ") and text.endswith(" breaks?")


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
def test_sample_bad_input_is_one_line(tiny_ckpt, args, needles):
    assert_one_line_error(run_script("sample.py", "--ckpt", tiny_ckpt, *args), *needles)


def test_bad_checkpoints_are_one_line(tmp_path, tiny_ckpt):
    missing = tmp_path / "missing.pt"
    assert_one_line_error(run_script("sample.py", "--ckpt", missing), "not found", str(missing))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(open(tiny_ckpt, "rb").read()[:5000])
    assert_one_line_error(run_script("sample.py", "--ckpt", truncated), "cannot read", str(truncated))
    import torch
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    assert_one_line_error(run_script("sample.py", "--ckpt", foreign), "not a tiny-diffusion checkpoint")
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    ckpt["config"]["n_embd"] = 128
    mismatched = tmp_path / "mismatched.pt"
    torch.save(ckpt, mismatched)
    assert_one_line_error(run_script("sample.py", "--ckpt", mismatched), "do not match", str(mismatched))


def test_train_bad_input_is_one_line(tmp_path, data_path):
    assert_one_line_error(run_script("train.py", "--data", tmp_path / "nope.txt"), "data file not found", "prepare.py")
    assert_one_line_error(run_script("train.py", "--objective", "gan"), "--objective")
    assert_one_line_error(run_script("train.py", "--n_embd", "100", "--n_head", "3"), "n_head")
    assert_one_line_error(run_script("train.py", "--eval-only"), "unrecognized arguments")  # evaluate.py's job
    assert_one_line_error(run_script("train.py", "--resume", "--out_dir", tmp_path, "--data", data_path),
                          "no run in", "last.pt")
    assert_one_line_error(run_script("train.py", "--device", "cuda:3", "--data", data_path), "not available")
    assert_one_line_error(run_script("train.py", "--time_budget", "-1"), "--time_budget")
    assert_one_line_error(run_script("train.py", "--lr", "nan"), "--lr")
    assert_one_line_error(run_script("train.py", "--block_prob", "0.9"), "--prefix_prob + --block_prob")
    assert_one_line_error(run_script("train.py", "--vocab_size", "70"), "unrecognized arguments")
    assert_one_line_error(run_script("train.py", "--causal"), "unrecognized arguments")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(bytes(range(256)) * 100)
    assert_one_line_error(run_script("train.py", "--data", binary), "not UTF-8")
    short = tmp_path / "short.txt"
    short.write_text(open(data_path).read()[:1000])
    assert_one_line_error(run_script("train.py", "--data", short, "--device", "cpu"), "data too short")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert_one_line_error(run_script("train.py", "--data", data_path, "--device", "cpu", "--out_dir", a_file / "run",
                                     "--max_steps", "1", *TINY), "--out_dir")


def test_prepare_verifies_the_checksum(tmp_path, data_path):
    out = tmp_path / "ts.txt"
    r = run_script("data/prepare.py", "--from", data_path, "--out", out)
    assert r.returncode == 0 and out.read_text() == open(data_path).read()
    bad = tmp_path / "bad.txt"
    bad.write_text("To be or not to be\n")
    assert_one_line_error(run_script("data/prepare.py", "--from", bad, "--out", tmp_path / "x.txt"), "sha256")
    assert not (tmp_path / "x.txt").exists()
    assert_one_line_error(run_script("data/prepare.py", "--from", tmp_path / "none.txt"), "cannot read")


def test_every_cli_has_help():
    for script, *flags in (("train.py",), ("sample.py",), ("diffusion_process.py",), ("data/prepare.py",),
                           ("bench.py",), ("bench.py", "--sample"), ("quality.py",), ("plot_curve.py",),
                           ("tools/export_weights.py",), ("evaluate.py",)):
        r = run_script(script, *flags, "--help")
        assert r.returncode == 0 and "usage" in r.stdout, (script, r.stderr)


@pytest.mark.parametrize("after", [0.5, 4.0])  # while torch imports; while sampling
def test_ctrl_c_in_sample_exits_quietly_with_130(tiny_ckpt, after):
    import signal
    import subprocess
    import sys
    import time
    from conftest import ROOT
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "sample.py"), "--ckpt", tiny_ckpt, "--device", "cpu",
                             "--length", "20000", "--steps", "20000"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(after)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr and "terminate" not in stderr, stderr
