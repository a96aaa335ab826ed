"""The diffusion network read in one order: the exact left-to-right NLL (diffusion.l2r_block_nll,
evaluate.py --order l2r), and the any-order identity that ties it to the NELBO."""
import itertools
import math

import pytest
import torch

import diffusion
from conftest import run_script
from test_training import _exact_conditional_nelbo, _random_tiny_model


def _order_nll(model, x, context, order):
    """Exact NLL per character of the block x[:, context:] given the clean x[:, :context], read
    in `order` (block positions): all of them MASK at first, each predicted then revealed."""
    noisy = x.clone()
    noisy[0, context:] = model.config.mask_id
    total = 0.0
    for i in order:
        logp = torch.log_softmax(model(noisy)[0, i].double(), dim=-1)
        total -= logp[x[0, i]].item()
        noisy[0, i] = x[0, i]
    return total / len(order)


@torch.no_grad()
@pytest.mark.parametrize("n,T,context", [(64, 16, 0), (61, 16, 8), (40, 16, 15)])
def test_left_to_right_estimator_equals_a_loop_over_positions(n, T, context):
    """Every block, every character one by one: the window with MASK at the character and after it."""
    model = _random_tiny_model(T)
    torch.manual_seed(1)
    val = torch.randint(0, 65, (n,))
    blocks = diffusion.eval_blocks(n, T, context)
    per_block = diffusion.l2r_block_nll(model, val, T, blocks, batch_size=7)  # batches cut across blocks
    expected = []
    for end, length in blocks:
        window = val[None, end - T:end]
        expected.append(_order_nll(model, window, T - length, range(T - length, T)))
    assert torch.allclose(per_block, torch.tensor(expected, dtype=torch.float64), atol=1e-5)
    scores, lengths = diffusion.block_scores(model, val, context, order="l2r")
    assert torch.allclose(scores, per_block, atol=1e-6) and lengths.sum() == n  # every character once


@torch.no_grad()
@pytest.mark.parametrize("context", [0, 2])
def test_mean_over_all_orders_equals_the_exact_nelbo(context):
    """A masked diffusion model is an any-order AR model: the mean of the exact NLLs of all L!
    orders of the block is its NELBO (every mask pattern enumerated), in float64."""
    L = 5
    model = _random_tiny_model(context + L).double()
    torch.manual_seed(2)
    x = torch.randint(0, 65, (1, context + L))
    block = range(context, context + L)
    orders = list(itertools.permutations(block))
    assert len(orders) == math.factorial(L)
    any_order = sum(_order_nll(model, x, context, o) for o in orders) / len(orders)
    assert any_order == pytest.approx(_exact_conditional_nelbo(model, x, context), abs=1e-9)
    left_to_right = diffusion.l2r_block_nll(model, x[0], context + L, [(context + L, L)])[0].item()
    assert left_to_right == pytest.approx(_order_nll(model, x, context, block), abs=1e-9)
    assert abs(left_to_right - any_order) > 1e-3, "one order is not the average of all"


def test_evaluate_order_l2r_names_the_number_and_pairs_with_the_ar_model(tiny_ckpt, tiny_ar_ckpt, data_path):
    r = run_script("evaluate.py", "--ckpt", tiny_ckpt, "--paired", tiny_ar_ckpt, "--order", "l2r",
                   "--context", "16", "--data", data_path, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    first, second, paired = r.stdout.strip().splitlines()
    assert "val left-to-right NLL (exact) " in first and "read left to right" in first
    assert "val NLL " in second and "--order l2r does not apply" in second
    l2r, ar = (float(line.split(" NLL ")[1].split()[1 if "(exact)" in line else 0]) for line in (first, second))
    diff = float(paired.split(": ")[1].split()[0])
    assert diff == pytest.approx(l2r - ar, abs=2e-3)  # per-block differences, weighted alike
    nelbo = run_script("evaluate.py", "--ckpt", tiny_ckpt, "--context", "16", "--mc", "1", "--data", data_path,
                       "--device", "cpu")
    assert " NELBO " in nelbo.stdout and nelbo.returncode == 0


def test_evaluate_rejects_an_unknown_order(tiny_ckpt):
    r = run_script("evaluate.py", "--ckpt", tiny_ckpt, "--order", "r2l")
    assert r.returncode != 0 and "--order" in r.stderr
