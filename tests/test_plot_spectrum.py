"""dev/plot_spectrum.py: the block-length spectrum from evaluate.py outputs."""
import importlib.util
import os

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("plot_spectrum", os.path.join(ROOT, "dev", "plot_spectrum.py"))
plot_spectrum = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plot_spectrum)


def result_file(path, mean, context, kind="NELBO"):
    path.write_text(f"m.pt: val {kind} {mean:.4f} ± 0.0050 nats/char on 111,540 held-out chars [context {context}: x]\n")
    return f"{path}"


def test_each_point_is_read_at_its_block_length_and_context(tmp_path, capsys):
    args = [f"1={result_file(tmp_path / 'ar0.txt', 1.45, 0, 'NLL')}", f"4={result_file(tmp_path / 'b4.txt', 1.50, 0)}",
            f"4={result_file(tmp_path / 'b4c.txt', 1.48, 128)}"]
    plot_spectrum.main(args + ["--out", str(tmp_path)])
    assert (tmp_path / "block_spectrum.png").read_bytes()[:4] == b"\x89PNG"
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'block_spectrum.png'} (3 points)"
    assert plot_spectrum.read_points(args[2]) == [(4, 128, 1.48, 0.005)]


def test_a_score_file_gives_its_nelbo_at_each_context(tmp_path):
    """dev/gpu_plan_arms.sh's eval_NAME.txt: the --ckpt line of each NELBO section, not the paired
    model's line, nor the left-to-right sections."""
    text = ""
    for ctx, nelbo, l2r in ((0, 1.47, 1.43), (128, 1.44, 1.40)):
        text += (f"== context {ctx} --order any\nm.pt: val NELBO {nelbo:.4f} ± 0.0050 nats/char [context {ctx}: x]\n"
                 f"ar.pt: val NLL 1.4400 ± 0.0100 nats/char [context {ctx}: x]\n"
                 f"== context {ctx} --order l2r\nm.pt: val left-to-right NLL (exact) {l2r:.4f} ± 0.0040 nats/char "
                 f"[context {ctx}: x]\n")
    (tmp_path / "eval_full_s1.txt").write_text(text)
    assert plot_spectrum.read_points(f"256={tmp_path / 'eval_full_s1.txt'}") == [(256, 0, 1.47, 0.005),
                                                                              (256, 128, 1.44, 0.005)]


@pytest.mark.parametrize("make_arg, needle", [
    (lambda d: f"0={result_file(d / 'a.txt', 1.5, 0)}", "L' >= 1"),
    (lambda d: f"4={d / 'missing.txt'}", "cannot read"),
    (lambda d: (d / "bin").write_bytes(b"\xff\xfe\x00") and f"4={d / 'bin'}", "not UTF-8"),
    (lambda d: (d / "empty.txt").write_text("nothing\n") and f"4={d / 'empty.txt'}", "no evaluate.py result line"),
])
def test_bad_points_are_one_line_errors(tmp_path, make_arg, needle):
    with pytest.raises(SystemExit, match=needle):
        plot_spectrum.main([make_arg(tmp_path), "--out", str(tmp_path / "s.png")])


def test_an_unwritable_target_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="cannot write"):
        plot_spectrum.main([f"1={result_file(tmp_path / 'a.txt', 1.5, 0)}", "--out", str(tmp_path / "no" / "s.png")])
