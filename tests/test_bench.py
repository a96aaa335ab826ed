"""bench.py --sample: one JSON row per measurement, both families; --plot draws them."""
import json

import pytest

import bench


def test_sampling_rows_name_each_sampler_batch_and_speed_and_plot(tiny_ckpt, tiny_ar_ckpt, tmp_path, capsys):
    rows = tmp_path / "speed.jsonl"
    bench.main(["--sample", "--ckpt", tiny_ckpt, "--ar", tiny_ar_ckpt, "--device", "cpu", "--batch-sizes", "1,2",
                "--runs", "1", "--warmup", "0", "--length", "24", "--steps", "4", "--jsonl", str(rows)])
    got = [json.loads(line) for line in rows.read_text().splitlines()]
    assert [(r["sampler"], r["batch"], r["nfe"]) for r in got] == [
        ("diffusion steps=4", 1, 4), ("autoregressive", 1, 24), ("diffusion steps=4", 2, 4), ("autoregressive", 2, 24)]
    assert all(r["chars_per_s"] == pytest.approx(r["batch"] * 24 / r["seconds"]) for r in got)
    out = tmp_path / "speed.png"
    bench.main(["--plot", str(rows), "--out", str(out)])
    assert out.read_bytes()[:4] == b"\x89PNG" and capsys.readouterr().out.strip().endswith(f"wrote {out}")


def test_plot_of_a_file_that_is_not_bench_rows_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{\"x\": 1}\n")
    with pytest.raises(SystemExit, match="line 1 is not a bench.py --jsonl row"):
        bench.main(["--plot", str(bad), "--out", str(tmp_path / "s.png")])
