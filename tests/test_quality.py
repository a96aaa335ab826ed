"""quality.py: the band around real text, several seeds, machine-readable rows."""
import json

import pytest

import quality

REAL = {"ar_nll": 1.5, "words": 0.92, "distinct": 0.97, "entropy": 4.7, "runs": 0.0}


def test_text_inside_every_limit_is_in_band():
    assert quality.outside_band(dict(REAL, ar_nll=1.6, entropy=4.6, words=0.91), REAL) == []


def test_each_column_outside_its_limit_is_named():
    stats = dict(REAL, words=0.80, distinct=0.5, ar_nll=1.1, entropy=4.2, runs=0.2)
    assert quality.outside_band(stats, REAL) == ["words", "distinct", "AR NLL", "entropy", "runs"]


def test_too_predictable_text_is_outside_the_band_too():
    """Text a second model finds far more predictable than real text is repetitive, not good."""
    assert quality.outside_band(dict(REAL, ar_nll=1.2), REAL) == ["AR NLL"]


def test_mean_se_is_the_standard_error_of_the_mean():
    m, se = quality.mean_se([1.0, 2.0, 3.0])
    assert m == 2.0 and se == pytest.approx(1.0 / 3 ** 0.5)
    assert quality.mean_se([5.0]) == (5.0, 0.0)


@pytest.mark.parametrize("text, needle", [("0,x", "comma list of integers"), ("-1", "--seeds must be in 0.."),
                                          ("4294967296", "--seeds must be in 0.."), ("1,1", "lists a seed twice")])
def test_bad_seeds_are_one_line_errors(text, needle):
    with pytest.raises(quality.UserError, match=needle):
        quality.parse_seeds(text)


def test_several_seeds_give_mean_and_error_and_one_json_row_per_setting(tiny_ckpt, tiny_ar_ckpt, data_path,
                                                                         tmp_path, capsys):
    out = tmp_path / "grid.jsonl"
    quality.main(["--ckpt", tiny_ckpt, "--ar", tiny_ar_ckpt, "--data", data_path, "--prompts", "4",
                  "--prompt-chars", "8", "--device", "cpu", "--settings", "default", "steps=4",
                  "--seeds", "0,1", "--jsonl", str(out)])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(rows) == 4 and " ± " in rows[2] and " ± " not in rows[1]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["setting"] for r in records] == ["real validation text", "default", "steps=4"]
    steps4 = records[2]
    assert steps4["nfe"] == 4 and len(steps4["per_seed"]) == 2
    assert steps4["mean"]["words"] == pytest.approx(sum(s["words"] for s in steps4["per_seed"]) / 2)


def test_an_unwritable_jsonl_fails_before_any_scoring(tiny_ckpt, tiny_ar_ckpt, data_path, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        quality.main(["--ckpt", tiny_ckpt, "--ar", tiny_ar_ckpt, "--data", data_path, "--device", "cpu",
                      "--jsonl", str(tmp_path / "missing" / "grid.jsonl")])
    assert "cannot write" in str(e.value) and capsys.readouterr().out == ""


def test_the_ar_setting_has_the_ar_model_write_one_character_per_pass(tiny_ckpt, tiny_ar_ckpt, data_path,
                                                                      tmp_path, capsys):
    out = tmp_path / "grid.jsonl"
    quality.main(["--ckpt", tiny_ckpt, "--ar", tiny_ar_ckpt, "--data", data_path, "--prompts", "3",
                  "--prompt-chars", "8", "--device", "cpu", "--settings", "steps=4", "ar", "ar,temperature=0",
                  "--jsonl", str(out)])
    records = {r["setting"]: r for r in map(json.loads, out.read_text().splitlines())}
    T = 32  # the tiny models' context: 24 characters written after each 8-character prompt
    assert records["steps=4"]["nfe"] == 4 and records["ar"]["nfe"] == records["ar,temperature=0"]["nfe"] == T - 8
    # greedy AR text is one fixed continuation per prompt: a second model finds it very predictable
    assert records["ar,temperature=0"]["mean"]["ar_nll"] < records["ar"]["mean"]["ar_nll"]


def test_ar_anywhere_but_first_is_refused():
    with pytest.raises(quality.UserError, match="'ar' comes first"):
        quality.parse_setting("temperature=1.0,ar")
