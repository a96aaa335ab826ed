"""quality.py: the band around real text, several seeds, machine-readable rows, bad input as one
line; --frontier, the best setting per pass count from --jsonl grids, and its PNG. In-process."""
import json

import pytest

import quality
from conftest import assert_one_line_error

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


def test_quality_scores_real_text_and_each_setting_in_one_table(tiny_ckpt, tiny_ar_ckpt, data_path, run_main):
    r = run_main("quality.py", "--ckpt", tiny_ckpt, "--ar", tiny_ar_ckpt, "--data", data_path, "--prompts", "4",
                 "--prompt-chars", "8", "--device", "cpu", "--settings", "default", "block=8,cache=dual")
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 4 and rows[1].startswith("| real validation text") and "| block=8,cache=dual |" in rows[3]


def test_quality_bad_input_is_one_line(tmp_path, tiny_ckpt, tiny_ar_ckpt, data_path, run_main):
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
        assert_one_line_error(run_main("quality.py", *base, "--data", data_path, *flags), *needles)


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


def test_a_setting_starts_from_the_checkpoints_own_sampler_setting():
    from sampler import SamplerConfig
    student = {"steps": 16, "temperature": 0.9, "schedule": "linear"}
    # its steps are per 256 characters (sampler.default_steps reads them from the model): not a fixed count
    assert quality.parse_setting("default", student) == SamplerConfig(temperature=0.9, schedule="linear")
    assert quality.parse_setting("temperature=1.0", student).temperature == 1.0
    adaptive = quality.parse_setting("threshold=0.9", student)
    assert (adaptive.steps, adaptive.order, adaptive.schedule) == (None, "confidence", "linear")
    assert quality.parse_setting("default") == SamplerConfig(), "no stored setting: sample.py's defaults"


# -----------------------------------------------------------------------------
# --frontier

def row(setting, nfe, words, entropy=4.8, distinct=0.9, outside=()):
    mean = {"ar_nll": 1.4, "words": words, "distinct": distinct, "entropy": entropy, "runs": 0.0}
    return {"setting": setting, "nfe": nfe, "mean": mean, "se": {k: 0.0 for k in mean},
            "outside_band": list(outside)}


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_frontier_picks_most_words_among_diverse_and_in_band_first(tmp_path):
    path = write(tmp_path / "grid.jsonl", [
        row("real validation text", 0, 0.92),
        row("steps=8,a", 8, 0.95, entropy=4.3, outside=["entropy"]),    # most words, but repeats
        row("steps=8,b", 8, 0.86, outside=["words"]),
        row("steps=8,c", 8, 0.84, outside=["words"]),
        row("steps=32,d", 32, 0.93, outside=["AR NLL"]),                # too safe
        row("steps=32,e", 32, 0.912),                                   # in band: wins
        row("steps=16,f", 16, 0.80, distinct=0.5, outside=["words", "distinct"]),
    ])
    frontier, real = quality.frontier_rows([path])
    assert real["mean"]["words"] == 0.92
    assert frontier[8][0]["setting"] == "steps=8,b"
    assert frontier[32][0]["setting"] == "steps=32,e"
    assert frontier[16][0] is None and len(frontier[16][1]) == 1


def test_frontier_writes_table_and_png(tmp_path, capsys):
    path = write(tmp_path / "grid.jsonl", [row("real validation text", 0, 0.92), row("steps=8", 8, 0.86),
                                          row("steps=16", 16, 0.88)])
    out = tmp_path / "frontier.png"
    quality.main(["--frontier", path, "--out", str(out)])
    table = capsys.readouterr().out
    assert "| 8 | steps=8 | 86.0" in table and "| 16 | steps=16 | 88.0" in table
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp.png"))


@pytest.mark.parametrize("content, message", [("not json\n", "--frontier"), ('{"a": 1}\n', "not a quality.py"),
                                              ("", "no real-text row")])
def test_frontier_bad_input_is_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(SystemExit) as e:
        quality.main(["--frontier", str(path), "--out", str(tmp_path / "f.png")])
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "f.png").exists()


def test_frontier_refuses_out_not_png(tmp_path):
    path = write(tmp_path / "grid.jsonl", [row("real validation text", 0, 0.92), row("steps=8", 8, 0.86)])
    with pytest.raises(SystemExit, match="--out must be a .png"):
        quality.main(["--frontier", path, "--out", str(tmp_path / "f.jpg")])
