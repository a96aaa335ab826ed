"""bench.py, in-process: the training step's timing; --sample's sweep (settings on the command
line's engine, one JSON record per timing) and --plot; bad input as one line. CUDA paths are
skipped without a GPU."""

import json
import os

import pytest
import torch

import bench
from cli import UserError
from conftest import assert_one_line_error
from sampler import SamplerConfig

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def sweep(tmp_path, tiny_ckpt, tiny_ar_ckpt, *flags, device="cpu"):
    """Run a tiny sweep; returns its records."""
    out = tmp_path / "speed.jsonl"
    bench.main(["--sample", "--ckpt", tiny_ckpt, "--ar", tiny_ar_ckpt, "--device", device, "--batch-sizes", "1,2",
                "--runs", "1", "--warmup", "0", "--length", "20", "--steps", "4", "--jsonl", str(out), *flags])
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_bench_training_times_the_trainers_step(data_path, run_main):
    r = run_main("bench.py", "--steps", "2", "--paths", "plain", "--data", data_path, "--device", "cpu",
                 "--n_layer", "1", "--n_embd", "32", "--n_head", "2", "--block_size", "16", "--batch_size", "4")
    assert r.returncode == 0, r.stderr
    assert "plain: fp32 eager" in r.stdout and "tokens/s" in r.stdout


def test_bench_sample_times_the_sampler_and_its_bare_passes(tiny_ckpt, run_main):
    r = run_main("bench.py", "--sample", "--ckpt", tiny_ckpt, "--device", "cpu", "--batch-sizes", "1,2",
                 "--runs", "1", "--warmup", "0", "--length", "32", "--steps", "4")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("new chars x") == 2 and "4 full forward passes alone" in r.stdout and "device cpu" in r.stdout


def test_bench_sample_bad_input_is_one_line(tiny_ckpt, run_main):
    base = ["--sample", "--ckpt", tiny_ckpt, "--device", "cpu"]
    assert_one_line_error(run_main("bench.py", *base, "--batch-sizes", "100000"), "every batch size in 1..4096")
    assert_one_line_error(run_main("bench.py", *base, "--batch-sizes", "1,x"), "comma list of integers")
    assert_one_line_error(run_main("bench.py", *base, "--prompt", "ROMEO:", "--length", "3"),
                          "shorter than the prompt")


def test_a_setting_the_cuda_graph_refuses_runs_ungraphed_and_says_why():
    # a threshold decides the number of passes on the GPU, so no graph can be captured for it
    config, note = bench.config_for_setting(SamplerConfig(steps=8, cuda_graph=True), "threshold=0.9")
    assert config.threshold == 0.9 and not config.cuda_graph
    assert "ran with eager, not cuda-graph" in note and "--threshold" in note


def test_a_cache_keeps_the_cuda_graph():
    config, note = bench.config_for_setting(SamplerConfig(steps=8, cuda_graph=True), "cache=sparse,refresh=8")
    assert config.cache == "sparse" and config.refresh == 8 and config.cuda_graph and note is None


def test_a_setting_the_engine_accepts_keeps_the_engine():
    config, note = bench.config_for_setting(SamplerConfig(steps=8, cuda_graph=True), "default")
    assert config.cuda_graph and note is None


def test_a_setting_wrong_on_every_engine_is_a_user_error():
    with pytest.raises(UserError, match="setting 'cache=sparse,order=confidence'"):
        bench.config_for_setting(SamplerConfig(steps=8), "cache=sparse,order=confidence")
    with pytest.raises(UserError, match="unknown setting 'colour'"):
        bench.config_for_setting(SamplerConfig(steps=8), "colour=red")


def test_sweep_writes_one_record_per_batch_and_sampler(tmp_path, tiny_ckpt, tiny_ar_ckpt, capsys):
    records = sweep(tmp_path, tiny_ckpt, tiny_ar_ckpt, "--settings", "default", "cache=sparse")
    assert [(r["batch"], r["sampler"]) for r in records] == [
        (b, s) for b in (1, 2) for s in ("diffusion default", "diffusion cache=sparse", "autoregressive")]
    for r in records:
        assert r["chars_per_s"] > 0 and r["ms"] > 0 and r["n_new"] == 20 and r["torch"] == torch.__version__
        assert r["device_name"].startswith("cpu") and r["engine"] == "eager"
    assert [r["nfe"] for r in records[:3]] == [4, 4, 20]
    assert records[0]["passes_ms"] > 0 and records[2]["passes_ms"] is None
    assert capsys.readouterr().out.count("autoregressive") == 2


def test_plot_draws_chars_per_second_against_batch(tmp_path, tiny_ckpt, tiny_ar_ckpt):
    sweep(tmp_path, tiny_ckpt, tiny_ar_ckpt)
    lines = bench.read_results([str(tmp_path / "speed.jsonl")])
    model = os.path.splitext(os.path.basename(tiny_ckpt))[0]  # a line says which weights it timed
    assert sorted(lines) == ["autoregressive [eager] | cpu, %d threads" % torch.get_num_threads(),
                             f"diffusion default ({model}) [eager] | cpu, %d threads" % torch.get_num_threads()]
    assert all([b for b, _ in points] == [1, 2] for points in lines.values())
    old = tmp_path / "old.jsonl"  # records written before the ckpt field timed weights/model.pt
    old.write_text(json.dumps({"sampler": "diffusion default", "engine": "eager", "device_name": "cpu",
                               "batch": 1, "chars_per_s": 10.0}) + "\n")
    assert list(bench.read_results([str(old)])) == ["diffusion default (model) [eager] | cpu"]
    again = tmp_path / "again.jsonl"  # the same line at the same batch in a second file: the last one counts
    again.write_text(old.read_text().replace("10.0", "20.0"))
    assert bench.read_results([str(old), str(again)]) == {"diffusion default (model) [eager] | cpu": [(1, 20.0)]}
    bench.main(["--plot", str(tmp_path / "speed.jsonl"), "--out", str(tmp_path / "speed.png")])
    assert (tmp_path / "speed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_of_a_file_without_records_is_a_one_line_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(SystemExit, match="no timed records"):
        bench.main(["--plot", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "x.png")])


def test_plot_into_a_missing_folder_is_a_one_line_error(tmp_path):
    record = {"sampler": "autoregressive", "engine": "eager", "device_name": "cpu", "batch": 1, "chars_per_s": 9.0}
    (tmp_path / "speed.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(SystemExit, match="--out must be a .png in an existing folder"):
        bench.main(["--plot", str(tmp_path / "speed.jsonl"), "--out", str(tmp_path / "nowhere" / "x.png")])


@CUDA
def test_gpu_sweep_graphs_both_samplers_and_the_sparse_cache(tmp_path, tiny_ckpt, tiny_ar_ckpt):
    records = sweep(tmp_path, tiny_ckpt, tiny_ar_ckpt, "--cuda-graph", "--settings", "default", "cache=sparse",
                    device="cuda")
    engines = {r["sampler"]: (r["engine"], r["note"]) for r in records if r["batch"] == 1}
    assert engines == {s: ("cuda-graph", None) for s in ("diffusion default", "diffusion cache=sparse", "autoregressive")}


def test_a_cache_under_compile_and_cuda_graph_keeps_both():
    config, note = bench.config_for_setting(SamplerConfig(steps=8, cuda_graph=True, compile="default"), "cache=sparse")
    assert config.cuda_graph and config.compile == "default" and note is None


def test_a_setting_refused_by_the_graph_keeps_the_compiler():
    config, note = bench.config_for_setting(SamplerConfig(steps=8, cuda_graph=True, compile="default"), "threshold=0.9")
    assert config.compile == "default" and not config.cuda_graph and "ran with compile default, not" in note


def block_model_like(tmp_path, tiny_ckpt):
    """A block model (L' = 4) with the tiny checkpoint's vocabulary and context."""
    from checkpoint import load_model, save_checkpoint
    from conftest import perturbed_model
    model, chars, _ = load_model(tiny_ckpt, "cpu")
    path = str(tmp_path / "block4.pt")
    save_checkpoint(path, perturbed_model(4, block_size=model.config.block_size), chars)
    return path


def test_a_setting_can_time_other_weights_on_the_same_canvases(tmp_path, tiny_ckpt, tiny_ar_ckpt):
    block = block_model_like(tmp_path, tiny_ckpt)
    records = sweep(tmp_path, tiny_ckpt, tiny_ar_ckpt, "--settings", "default", f"ckpt={block},cache=exact",
                    f"ckpt={block}")
    diffusion = [r for r in records if r["sampler"] != "autoregressive"]
    assert [(r["batch"], r["sampler"], os.path.basename(r["ckpt"])) for r in diffusion] == [
        (b, s, m) for b in (1, 2) for s, m in (("diffusion default", os.path.basename(tiny_ckpt)),
                                               ("diffusion cache=exact", "block4.pt"),
                                               ("diffusion default", "block4.pt"))]
    assert all(r["n_new"] == 20 and r["chars_per_s"] > 0 for r in diffusion)
    lines = bench.read_results([str(tmp_path / "speed.jsonl")])
    assert sum("(block4)" in label for label in lines) == 2


@pytest.mark.parametrize("setting, needle", [
    ("ckpt=", "ckpt= needs a path"),
    ("ckpt={block},cache=sparse", "cache"),
    ("ckpt={missing}", "not found"),
])
def test_a_setting_with_bad_weights_is_a_one_line_error(tmp_path, tiny_ckpt, tiny_ar_ckpt, setting, needle, capsys):
    setting = setting.format(block=block_model_like(tmp_path, tiny_ckpt), missing=tmp_path / "none.pt")
    with pytest.raises(SystemExit, match=needle):
        sweep(tmp_path, tiny_ckpt, tiny_ar_ckpt, "--settings", "default", setting)


def test_a_setting_with_another_vocabulary_is_a_one_line_error(tmp_path, tiny_ckpt, tiny_ar_ckpt, block_ckpt):
    with pytest.raises(SystemExit, match="another vocabulary"):
        sweep(tmp_path, tiny_ckpt, tiny_ar_ckpt, "--settings", f"ckpt={block_ckpt}")


def test_weights_named_twice_are_loaded_once(tmp_path, tiny_ckpt, monkeypatch):
    """ckpt= spelled another way (a relative path to the flags' --ckpt) times the same model."""
    from sampler import load_for_sampling
    monkeypatch.chdir(os.path.dirname(tiny_ckpt))
    args = bench.sample_parser().parse_args(["--sample", "--ckpt", tiny_ckpt, "--device", "cpu", "--steps", "4",
                                             "--settings", "default", f"ckpt={os.path.basename(tiny_ckpt)},steps=2"])
    _, model, chars, config = load_for_sampling(args)
    settings = bench.settings_with_models(args, model, chars, config)
    assert [s[2] for s in settings] == [model, model] and [s[3].steps for s in settings] == [4, 2]
