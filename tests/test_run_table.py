"""dev/run_table.py: the run table of dev/gpu_plan_arms.sh from the files it writes."""
import importlib.util
import json
import os

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("run_table", os.path.join(ROOT, "dev", "run_table.py"))
run_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_table)


def write_run(out, name, steps, best_step, sections):
    """A run folder's log.jsonl and its eval file, as the plan and train.py write them."""
    folder = out / "runs" / name
    folder.mkdir(parents=True)
    rows = [{"step": s, "train_loss": 2.0, "lr": 1e-3, "time": 60.0 * s / steps} for s in (steps // 2, steps)]
    rows += [{"step": best_step, "val": 1.40, "val_se": 0.01, "time": 1.0}, {"step": steps, "val": 1.45, "time": 60.0}]
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = ""
    for (ctx, how), (value, *diffs) in sections.items():
        kind = {"order any": "NELBO", "order l2r": "left-to-right NLL (exact)", "as-ar": "NLL"}[how]
        text += f"== context {ctx} --{how}\n"
        text += f"runs/{name}/best.pt: val {kind} {value:.4f} ± 0.0100 nats/char (2.0 bits/char) on 111,540 chars\n"
        for ref, diff in zip(("ar_s1", "full_s1"), diffs):
            if diff is not None:
                text += f"runs/{ref}/best.pt: val NLL 1.4400 ± 0.0100 nats/char (2.0 bits/char) on 111,540 chars\n"
        for ref, diff in zip(("ar_s1", "full_s1"), diffs):
            if diff is not None:
                text += (f"paired difference runs/{name}/best.pt - runs/{ref}/best.pt: {diff:+.4f} ± 0.0030 nats/char "
                         "over 436 blocks\n")
    (out / f"eval_{name}.txt").write_text(text)


def test_rows_per_run_and_the_mean_over_seeds(tmp_path, capsys):
    write_run(tmp_path, "ar_s1", 3000, 1500, {(0, "order any"): (1.44, None)})
    write_run(tmp_path, "full_s1", 40000, 40000, {(0, "order any"): (1.47, 0.030), (0, "order l2r"): (1.43, -0.010)})
    write_run(tmp_path, "full_s2", 40000, 40000, {(0, "order any"): (1.46, 0.020), (0, "order l2r"): (1.42, -0.020)})
    write_run(tmp_path, "mixed_s1", 30000, 30000, {(0, "order any"): (1.50, 0.060, 0.030), (0, "as-ar"): (1.41, None)})
    (tmp_path / "device.txt").write_text("NVIDIA H200, 570.00, 143771 MiB\ntorch 2.11.0\n")
    run_table.main([str(tmp_path), "--save", str(tmp_path / "t.md")])
    text = capsys.readouterr().out
    assert text == (tmp_path / "t.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| ar | 1 | 3,000 | 1.0 | 1,500 | 1.4400 ± 0.0100 |  |")
    assert rows[0].startswith("| run | seed | steps | min | best step | NELBO C=0 | − ar C=0 | − full C=0 | l2r C=0 | − ar C=0 |")
    assert rows[2].startswith("| full | 1 | 40,000 | 1.0 | 40,000 | 1.4700 ± 0.0100 | +0.0300 ± 0.0030 |  | 1.4300")
    assert "| 1.5000 ± 0.0100 | +0.0600 ± 0.0030 | +0.0300 ± 0.0030 |" in rows[4]  # a lever against AR and its base
    assert rows[4].endswith("| 1.4100 ± 0.0100 |")  # mixed read as AR: no paired column
    # over seeds: the mean of the paired differences, sqrt(2 * 0.003^2) / 2, half the range
    full = next(line for line in rows[5:] if line.startswith("| full |"))
    assert "+0.0250 ± 0.0021 (n=2, spread 0.0050)" in full and "-0.0150 ± 0.0021 (n=2, spread 0.0050)" in full
    assert text.rstrip().endswith("Device: NVIDIA H200, 570.00, 143771 MiB; torch 2.11.0")


@pytest.mark.parametrize("make, needle", [
    (lambda d: None, "no eval_"),
    (lambda d: (d / "eval_x_s1.txt").write_text("nothing\n"), "eval_x_s1.txt has no dev/gpu_plan_arms.sh scores"),
    (lambda d: (d / "eval_x_s1.txt").write_text("== context 0 --order any\nm: val NELBO 1.5 ± 0.01 nats/char\n"),
     "run log .*x_s1/log.jsonl: No such file"),
])
def test_a_folder_without_scores_is_a_one_line_error(tmp_path, make, needle):
    make(tmp_path)
    with pytest.raises(SystemExit, match=needle):
        run_table.main([str(tmp_path)])


def test_a_missing_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="is not a folder"):
        run_table.main([str(tmp_path / "nope")])
