"""Training levers: the mask-rate distribution and its importance weights, the loss without ELBO
weights, the mixed AR + diffusion objective, and the per-call causal flag it runs on."""
import pytest
import torch
import torch.nn.functional as F

import diffusion
import train
import train_config
from cli import UserError
from conftest import TINY, read_log, run_script
from diffusion import MaskRate, draw_training_masks
from model import ModelConfig, Transformer
from test_training import _random_tiny_model

RATES = [MaskRate("bell"), MaskRate("clipped", 0.3, 0.8)]


@pytest.mark.parametrize("rate", RATES + [MaskRate()])
def test_draws_of_k_follow_the_chosen_distribution(rate):
    n, B = 40, 40000
    masks = draw_training_masks(torch.zeros(B, n, dtype=torch.long), 0.0, torch.Generator().manual_seed(0), rate=rate)
    assert torch.equal(masks.scored.sum(1), masks.k)
    expected = rate.k_probabilities(torch.tensor([n]), n)[0]
    observed = torch.bincount(masks.k - 1, minlength=n).float() / B
    assert (observed - expected).abs().max() < 0.004  # stratified draws: far tighter than iid sampling
    assert observed[expected == 0].sum() == 0, "no k of probability 0"
    if rate.dist == "bell":  # Beta(2, 2): mean 1/2, variance 1/20
        t = (masks.k.float() - 0.5) / n
        assert t.mean().item() == pytest.approx(0.5, abs=0.01) and t.var().item() == pytest.approx(0.05, abs=0.003)


@pytest.mark.parametrize("rate", RATES)
def test_elbo_weights_make_the_expected_loss_the_uniform_one(rate):
    """A fixed toy loss per k: weighted by P_uniform(k) / P(k), its mean under the rate's draws is
    the mean over k (the NELBO's form); for clipped, the mean over the k the range can draw."""
    n, B = 64, 200000
    f = lambda k: torch.log(k.double()) + torch.sin(k.double())  # any per-k loss
    ks = torch.arange(1, n + 1)
    support = rate.k_probabilities(torch.tensor([n]), n)[0] > 0
    target = f(ks)[support].mean().item()
    masks = draw_training_masks(torch.zeros(B, n, dtype=torch.long), 0.0, torch.Generator().manual_seed(1), rate=rate)
    weighted = (masks.weight.double() * f(masks.k)).mean().item()
    unweighted = f(masks.k).mean().item()
    assert weighted == pytest.approx(target, abs=1e-3)  # stratified draws: error ~1e-5 measured
    assert abs(unweighted - target) > 0.02, "the weights are what corrects it"
    if rate.dist == "bell":
        assert support.all() and target == pytest.approx(f(ks).mean().item())


def test_uniform_rate_weights_are_one_and_its_masks_unchanged():
    x = torch.zeros(512, 32, dtype=torch.long)
    old = diffusion.training_masks(x, 0.2, torch.Generator().manual_seed(4), 0.1)
    new = draw_training_masks(x, 0.2, torch.Generator().manual_seed(4), 0.1, MaskRate())
    assert all(torch.equal(a, b) for a, b in zip(old, new[:3])) and (new.weight == 1).all()


@torch.no_grad()
def test_loss_weights_none_is_the_plain_mean_over_masked_characters():
    T = 16
    model = _random_tiny_model(T)
    x = torch.randint(0, 65, (64, T))
    rate = MaskRate("bell")
    masks = draw_training_masks(x, 0.2, torch.Generator().manual_seed(2), rate=rate)
    logp = torch.log_softmax(model(x.masked_fill(masks.hidden, model.config.mask_id)).double(), -1)
    nll = -logp.gather(-1, x[..., None])[..., 0]
    plain = diffusion.diffusion_loss(model, x, model.config.mask_id, 0.2, torch.Generator().manual_seed(2),
                                     rate=rate, weights="none")
    elbo = diffusion.diffusion_loss(model, x, model.config.mask_id, 0.2, torch.Generator().manual_seed(2),
                                    rate=rate, weights="elbo")
    assert plain.item() == pytest.approx(((nll * masks.scored).sum() / masks.k.sum()).item(), abs=1e-5)
    per_row = (nll * masks.scored).sum(1) / masks.k
    assert elbo.item() == pytest.approx((per_row * masks.weight).mean().item(), abs=1e-5)


@torch.no_grad()
def test_causal_flag_per_call_is_the_causal_model():
    T = 12
    model = _random_tiny_model(T)
    causal = Transformer(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=T, objective="ar")).eval()
    causal.load_state_dict(model.state_dict())
    x = torch.randint(0, 65, (3, T))
    assert torch.allclose(model(x, causal=True), causal(x), atol=1e-6)
    assert torch.allclose(causal(x, causal=False), model(x), atol=1e-6)
    later = x.clone()
    later[:, 6:] = 0  # the future does not reach the past under causal attention, and does otherwise
    assert torch.allclose(model(x, causal=True)[:, :6], model(later, causal=True)[:, :6], atol=1e-6)
    assert not torch.allclose(model(x)[:, :6], model(later)[:, :6], atol=1e-3)


@torch.no_grad()
def test_mixed_loss_is_the_row_weighted_sum_of_both_objectives():
    T = 16
    model = _random_tiny_model(T)
    x = torch.randint(0, 65, (10, T + 1))
    diffusion_part = lambda m, rows: diffusion.diffusion_loss(m, rows, m.config.mask_id, 0.0,
                                                              torch.Generator().manual_seed(3))
    mixed = diffusion.mixed_loss(model, x, 3, diffusion_part)
    logits = model(x[:3, :-1], causal=True)
    ar = F.cross_entropy(logits.flatten(0, 1), x[:3, 1:].flatten())
    assert mixed.item() == pytest.approx((0.3 * ar + 0.7 * diffusion_part(model, x[3:, :-1])).item(), abs=1e-5)


def test_a_tiny_mixed_run_trains_and_evaluates_as_diffusion_and_as_ar(tmp_path, data_path):
    out = tmp_path / "mixed"
    train.main(TINY + ["--data", data_path, "--out_dir", str(out), "--objective", "mixed", "--ar_fraction", "0.5",
                       "--t_dist", "bell", "--max_steps", "100", "--eval_interval", "100", "--log_interval", "25"])
    losses = [r["train_loss"] for r in read_log(str(out)) if "train_loss" in r]
    assert losses[-1] < losses[0] - 0.5
    ckpt = str(out / "best.pt")
    assert torch.load(ckpt, weights_only=True)["config"]["objective"] == "mixed", "a diffusion model that also reads AR"
    r = run_script("evaluate.py", "--ckpt", ckpt, "--as-ar", "--data", data_path, "--device", "cpu")
    assert r.returncode == 0 and " NLL " in r.stdout and "(--as-ar)" in r.stdout, r.stderr
    assert float(r.stdout.split(" NLL ")[1].split()[0]) < 4.0  # its AR half learned something (uniform: 4.2)


@pytest.mark.parametrize("flags, needle", [(dict(t_dist="beta"), "--t_dist"), (dict(loss_weights="1/t"), "--loss_weights"),
                                           (dict(t_dist="clipped", t_min=0.9, t_max=0.5), "--t_min"),
                                           (dict(t_min=0.2), "--t_dist clipped"), (dict(ar_fraction=1.0), "--ar_fraction"),
                                           (dict(objective="dual"), "--objective")])
def test_bad_lever_options_are_one_line_errors_naming_the_flag(flags, needle):
    with pytest.raises(UserError, match=needle):
        model_flags = {k: v for k, v in flags.items() if k in ModelConfig.__dataclass_fields__}
        train_flags = {k: v for k, v in flags.items() if k not in model_flags}
        train_config.check_config(ModelConfig(**model_flags), train_config.TrainConfig(**train_flags))
