"""The copula sampler (copula.py): where the copula has nothing to add it is plain sampling, token
for token; with nothing on the right the AR copula is the AR model; one step with an exact copula
samples the copula's joint distribution (by enumeration, against alternatives the test tells
apart); its passes are counted; bad combinations are one-line errors."""

import re

import pytest
import torch

from checkpoint import load_model, save_checkpoint
from cli import UserError
from conftest import assert_one_line_error
from copula import copula_model, generate_with_cost
from corpus import encode
from denoise import Noise, draw_characters, uniform
from model import ModelConfig, Transformer
from sampler import SamplerConfig, check_for_model, generate, generate_steps


@pytest.fixture(scope="module")
def ar(tiny_ar_ckpt):
    model, chars, _ = load_model(tiny_ar_ckpt)
    return model, chars


def canvas_for(chars, prompt, length, batch=1):
    ids = encode(prompt, chars, allow_mask=True)
    ids += [len(chars)] * (length - len(ids))
    return torch.tensor([ids] * batch)


def cfg(**given):
    return SamplerConfig(**{"temperature": 1.0, "precision": "fp32", "remask": 0.0, **given})


@pytest.mark.parametrize("prompt,options", [
    ("ROMEO:", dict(order="spread")),
    ("ROMEO:", dict(order="confidence", temperature=0.8, top_p=0.9)),
    ("K_NG:__ my lord,__ the", dict(order="random", remask=0.5)),  # clean text right of the masks
])
def test_a_copula_with_nothing_to_add_is_plain_sampling_token_for_token(tiny_model, prompt, options):
    # one character per step: no other character of the step to depend on, so the l2r copula's
    # reading is its reference and the tilt is exactly 1
    model, chars = tiny_model
    c = canvas_for(chars, prompt, 30, batch=3)
    n = int((c[0] == len(chars)).sum())
    plain, _ = generate(model, c, cfg(steps=n, **options), seed=5)
    joint, nfe, cost = generate_with_cost(model, c, cfg(steps=n, copula="l2r", **options), seed=5)
    assert torch.equal(joint, plain) and nfe == n
    assert cost.passes == 0  # and it needed no pass of its own


@torch.inference_mode()
def test_the_ar_copula_with_nothing_on_the_right_is_the_ar_model(tiny_model, ar, tiny_ar_ckpt):
    # order l2r, no remasking: the left reading is the step's own prediction, the tilt cancels and
    # each character is the AR model's draw with the step's random number
    model, chars = tiny_model
    ar_model, _ = ar
    c = canvas_for(chars, "KING:", 29, batch=4)
    n, steps = 24, 6
    out, _, cost = generate_with_cost(model, c, cfg(steps=steps, order="l2r", schedule="linear", copula="ar",
                                                    copula_ckpt=tiny_ar_ckpt), seed=11)
    expect, keys = c.clone(), Noise(11, 4, "cpu").keys(steps)
    for step in range(steps):
        u = uniform(keys[step], n, stream=0)  # the numbers the step draws its block with
        for k in range(4):
            i = 5 + 4 * step + k
            logits = ar_model(expect[:, :i])[:, -1]
            expect[:, i] = draw_characters(logits, 1.0, None, None, u[:, 4 * step + k])[0]
    assert torch.equal(out, expect)
    assert cost.passes == n and cost.reference == 0  # one AR pass per character, no left readings


@pytest.mark.parametrize("copula", ["ar", "l2r"])
def test_a_copula_writes_only_the_positions_the_step_commits(tiny_model, tiny_ar_ckpt, copula):
    # the positions are the plain sampler's (order spread chooses them before the pass); what the
    # AR drafts between them is dropped
    model, chars = tiny_model
    c = canvas_for(chars, "K_NG:__ my lord,", 30, batch=2)
    options = dict(steps=5, order="spread")
    plain = [s.canvas.clone() for s in generate_steps(model, c, cfg(**options), 3)]
    ckpt = tiny_ar_ckpt if copula == "ar" else None
    joint = [s.canvas.clone() for s in generate_steps(model, c, cfg(copula=copula, copula_ckpt=ckpt, **options), 3)]
    assert len(joint) == len(plain) == 5
    for a, b in zip(plain, joint):
        assert torch.equal(a == len(chars), b == len(chars))  # the same positions masked after each step
    assert not torch.equal(plain[-1], joint[-1])  # and other characters written


@torch.inference_mode()
def exact_joints(model, ar_model, prefix, copula):
    """(V, V) joints of the two characters after prefix, enumerated: {"copula": the copula's own,
    "plain": the plain step's (independent diffusion marginals), "no division": the rule without
    its division by the left reading (the diffusion marginal times the copula's conditional)}."""
    M, V = model.config.mask_id, model.config.vocab_size - 1
    x = torch.tensor(prefix + [M, M])
    dm = model(x[None])[0, -2:].softmax(-1)  # the diffusion marginals of the two columns
    seqs = torch.cat([x[None].expand(V, -1)[:, :-2], torch.arange(V)[:, None], torch.full((V, 1), M)], 1)
    if copula == "l2r":  # p(x1 | prefix, mask, mask), p(x2 | prefix, x1, mask)
        first, following = dm[0], model(seqs)[:, -1].softmax(-1)
    else:  # p_AR(x1 | prefix), p_AR(x2 | prefix, x1)
        first, following = ar_model(x[None, :-2])[0, -1].softmax(-1), ar_model(seqs[:, :-1])[:, -1].softmax(-1)
    one = dm[0] * first
    two = dm[1][None] * following
    return {"copula": first[:, None] * following, "plain": dm[0][:, None] * dm[1][None],
            "no division": (one / one.sum())[:, None] * two / two.sum(1, keepdim=True)}


@pytest.mark.parametrize("copula", ["ar", "l2r"])
def test_one_step_with_an_exact_copula_samples_the_copulas_distribution(tiny_model, ar, tiny_ar_ckpt, copula):
    # x_t is the prompt and two masks: the left reading of both columns is x_t itself, so the
    # rule's ratio is 1 and the two characters must follow the copula's joint exactly
    model, chars = tiny_model
    prefix = encode("ROMEO:\nWhat, art thou", chars)
    joints = {k: v.flatten().double().clamp_min(1e-300) for k, v in exact_joints(model, ar[0], prefix, copula).items()}
    N, V = 8000, len(chars)
    with torch.inference_mode():
        out, _ = generate(model, torch.tensor([prefix + [V, V]] * N),
                          cfg(steps=1, copula=copula, copula_ckpt=tiny_ar_ckpt if copula == "ar" else None), seed=0)
    drawn = out[:, -2] * V + out[:, -1]
    log_target = joints.pop("copula").log()
    target = log_target.exp()
    # seen from each alternative rule, the draws' mean log-likelihood ratio must be KL(target || rule)
    # within 4 standard errors; draws from the rule would sit KL(target || rule) + KL(rule || target) away
    for name, other in [("target", target), *joints.items()]:
        s = log_target - other.log() if name != "target" else log_target
        mean = (target * s).sum()
        se = ((target * (s - mean) ** 2).sum() / N).sqrt()
        assert abs(s[drawn].mean() - mean) < 4 * se, name
        if name != "target":
            assert mean + (other * -s).sum() > 20 * se, name  # the test tells the rule apart


def test_the_copulas_passes_are_counted(tiny_model, tiny_ar_ckpt):
    model, chars = tiny_model
    c = canvas_for(chars, "ROMEO:", 30, batch=2)  # 24 to write
    _, nfe, cost = generate_with_cost(model, c, cfg(steps=4, order="l2r", copula="l2r"), seed=0)
    assert (nfe, cost.passes, cost.reference) == (4, 24 - 4, 0)  # one pass per character but each step's first
    _, _, cost = generate_with_cost(model, c, cfg(steps=4, order="spread", copula="l2r"), seed=0)
    assert cost.passes == 20 and 0 < cost.reference <= 18  # after step 1, clean characters on the right
    _, _, cost = generate_with_cost(model, c, cfg(steps=4, order="spread", copula="ar", copula_ckpt=tiny_ar_ckpt),
                                    seed=0)
    assert cost.passes > 24  # masked characters before a step's last one are drafted too


@pytest.mark.parametrize("options,needle", [
    (dict(copula="gibbs"), "--copula must be one of none, ar, l2r"),
    (dict(copula="l2r", cache="sparse", order="spread"), "needs --cache none"),
    (dict(copula="ar", block=8, cache="prefix"), "needs --cache none"),
    (dict(copula="l2r", cuda_graph=True, steps=8), "not with --cuda-graph"),
    (dict(copula_ckpt="weights/ar_baseline.pt"), "use it with --copula ar"),
])
def test_bad_copula_options_are_refused(options, needle):
    with pytest.raises(ValueError, match=needle):
        SamplerConfig(**options)


def test_a_block_model_has_no_copula():
    model = Transformer(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, objective="block", block_len=4))
    with pytest.raises(ValueError, match="not for a block model"):
        check_for_model(model, SamplerConfig(copula="l2r"))


@pytest.mark.parametrize("change,needle", [
    ("vocabulary", "vocabulary differs"),
    ("context", "the copula's context (16) is shorter"),
    ("diffusion", "is a diffusion model; this needs an autoregressive model"),
])
def test_a_copula_checkpoint_that_does_not_fit_is_refused(tmp_path, tiny_model, ar, tiny_ckpt, change, needle):
    model, chars = tiny_model
    path = str(tmp_path / "copula.pt")
    if change == "diffusion":
        path = tiny_ckpt
    elif change == "vocabulary":  # same size, another order: the weights still load
        save_checkpoint(path, ar[0], list(reversed(chars)))
    else:
        save_checkpoint(path, Transformer(ModelConfig(**{**ar[0].config.__dict__, "block_size": 16})), chars)
    with pytest.raises(UserError, match=re.escape(needle)):
        copula_model(model, SamplerConfig(copula="ar", copula_ckpt=path), chars)


def test_sample_py_reports_the_copulas_passes_and_refuses_a_bad_copula(tiny_ckpt, tiny_ar_ckpt, run_main):
    base = ["--ckpt", tiny_ckpt, "--prompt", "ROMEO:", "--length", "20", "--steps", "2", "--seed", "1"]
    r = run_main("sample.py", *base, "--order", "l2r", "--remask", "0", "--copula", "ar",
                 "--copula-ckpt", tiny_ar_ckpt, "--stats")
    assert r.returncode == 0, r.stderr
    assert "[stats] 2 forward passes (NFE) +14 ar +0 ref" in r.stderr
    assert_one_line_error(run_main("sample.py", *base, "--copula", "ar", "--copula-ckpt", tiny_ckpt),
                          "is a diffusion model")
    assert_one_line_error(run_main("sample.py", *base, "--copula", "l2r", "--cache", "sparse"), "--cache none")


def test_quality_py_scores_a_copula_beside_its_passes(tiny_ckpt, tiny_ar_ckpt, data_path, tmp_path, run_main):
    jsonl = tmp_path / "q.jsonl"
    r = run_main("quality.py", "--ckpt", tiny_ckpt, "--ar", tiny_ar_ckpt, "--data", data_path, "--prompts", "2",
                 "--prompt-chars", "16", "--settings", "steps=4,order=l2r,remask=0,copula=ar", "--jsonl", jsonl)
    assert r.returncode == 0, r.stderr
    assert "| 4 +16 ar +0 ref |" in r.stdout  # 16 characters in 4 steps: one AR pass each
    assert '"copula_passes": 16' in jsonl.read_text()
    assert_one_line_error(run_main("quality.py", "--ckpt", tiny_ckpt, "--ar", tiny_ar_ckpt, "--data", data_path,
                                   "--settings", "copula=l2r,cache=dual,block=8"), "setting", "--cache none")


def test_the_frontier_leaves_copula_rows_out(tmp_path):
    # a copula row's passes are not only the diffusion model's: it does not compete at its NFE
    import json
    import quality
    mean = lambda words: {"ar_nll": 1.4, "words": words, "distinct": 0.9, "entropy": 4.8, "runs": 0.0}
    rows = [{"setting": "real validation text", "nfe": 0, "mean": mean(0.92)},
            {"setting": "steps=16", "nfe": 16, "mean": mean(0.87)},
            {"setting": "steps=16,copula=ar", "nfe": 16, "mean": mean(0.95), "copula": "ar", "copula_passes": 1800}]
    path = tmp_path / "grid.jsonl"
    path.write_text("".join(json.dumps({"se": r["mean"], "outside_band": [], **r}) + "\n" for r in rows))
    frontier, _ = quality.frontier_rows([str(path)])
    assert frontier[16][0]["setting"] == "steps=16" and len(frontier[16][1]) == 1
