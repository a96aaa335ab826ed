"""evaluate.py: the numbers it prints (NELBO or NLL in nats and bits, the left-to-right NLL, the
paired difference) and its one-line errors, in-process through main(argv)."""
import math

import pytest
import torch

import evaluate
from checkpoint import write_checkpoint
from conftest import assert_one_line_error


def test_evaluate_prints_nats_and_bits(tiny_ckpt, data_path, run_main):
    r = run_main("evaluate.py", "--ckpt", tiny_ckpt, "--data", data_path, "--mc", "1", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    nats = float(line.split("NELBO ")[1].split()[0])
    bits = float(line.split("(")[1].split()[0])
    assert bits == pytest.approx(nats / math.log(2), abs=1e-3)
    assert "±" in line and "111,540 held-out chars" in line


def test_evaluate_order_l2r_names_the_number_and_pairs_with_the_ar_model(tiny_ckpt, tiny_ar_ckpt, small_data,
                                                                        run_main):
    r = run_main("evaluate.py", "--ckpt", tiny_ckpt, "--paired", tiny_ar_ckpt, "--order", "l2r",
                 "--context", "16", "--data", small_data, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    first, second, paired = r.stdout.strip().splitlines()
    assert "val left-to-right NLL (exact) " in first and "read left to right" in first
    assert "val NLL " in second and "--order l2r does not apply" in second
    l2r, ar = (float(line.split(" NLL ")[1].split()[1 if "(exact)" in line else 0]) for line in (first, second))
    diff = float(paired.split(": ")[1].split()[0])
    assert diff == pytest.approx(l2r - ar, abs=2e-3)  # per-block differences, weighted alike
    nelbo = run_main("evaluate.py", "--ckpt", tiny_ckpt, "--context", "16", "--mc", "1", "--data", small_data,
                     "--device", "cpu")
    assert " NELBO " in nelbo.stdout and nelbo.returncode == 0


def test_evaluate_pairs_with_several_models_on_the_same_blocks(tiny_ckpt, tiny_ar_ckpt, small_data, run_main):
    r = run_main("evaluate.py", "--ckpt", tiny_ckpt, "--paired", tiny_ar_ckpt, tiny_ckpt, "--mc", "2",
                 "--context", "16", "--data", small_data, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    first, ar, again, vs_ar, vs_itself = r.stdout.strip().splitlines()
    value = lambda line: float(line.split(": ")[1].split()[2 if "val" in line else 0])
    assert vs_ar.startswith("paired difference") and tiny_ar_ckpt in vs_ar.split(": ")[0]
    assert value(vs_ar) == pytest.approx(value(first) - value(ar), abs=2e-3)
    assert value(again) == value(first)  # the same masks for every model
    assert vs_itself.endswith("+0.0000 ± 0.0000 nats/char over " + vs_ar.split(" over ")[1].split()[0] + " blocks")


def test_evaluate_checks_every_model_before_scoring_any(tmp_path, tiny_ckpt, data_path, run_main):
    other = torch.load(tiny_ckpt, weights_only=True)
    other["config"]["block_size"] = 16  # rotary tables are not saved: the weights still fit
    path = tmp_path / "other.pt"
    write_checkpoint(other, str(path))  # re-stamped: a hand edit saved with torch.save is refused on load
    r = run_main("evaluate.py", "--ckpt", tiny_ckpt, "--paired", path, "--data", data_path, "--device", "cpu")
    assert_one_line_error(r, "same context length")
    assert r.stdout == "", "nothing was scored first"


def test_evaluate_rejects_an_unknown_order(tiny_ckpt, run_main):
    r = run_main("evaluate.py", "--ckpt", tiny_ckpt, "--order", "r2l")
    assert_one_line_error(r, "--order", "invalid choice")


@pytest.mark.parametrize("flags, needle", [(["--mc", "0"], "--mc"), (["--context", "-1"], "--context"),
                                           (["--context", "32"], "--context must be in 0..31")])
def test_evaluate_bad_input_is_one_line(tiny_ckpt, data_path, flags, needle, run_main):
    assert_one_line_error(run_main("evaluate.py", "--ckpt", tiny_ckpt, "--data", data_path, *flags), needle)


@pytest.mark.parametrize("flags, needle", [(["--mc", "1000000"], "--mc must be in 1..4096"),
                                           (["--seed", str(2 ** 64)], "--seed must be in 0..2**63-1")])
def test_evaluate_bounds_are_one_line_errors(flags, needle):
    with pytest.raises(SystemExit) as e:
        evaluate.main(flags)
    assert str(e.value) == f"evaluate.py: error: {needle}, got {flags[1]}"


@pytest.mark.parametrize("flags, needle", [(["--order", "l2r"], "--order l2r reads a plain diffusion"),
                                           (["--as-ar"], "--as-ar reads a plain diffusion")])
def test_evaluate_refuses_what_a_block_model_cannot_be_read_as(block_ckpt, flags, needle, data_path):
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--ckpt", block_ckpt, "--device", "cpu", "--data", data_path, *flags])
    assert str(e.value).startswith("evaluate.py: error:") and needle in str(e.value) and "\n" not in str(e.value)
