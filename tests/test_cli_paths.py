"""What the CLIs print names files as the user can read them, never by this machine's layout
(issue 31, item 6): cli.shown, the loaders' messages about the default files, and the shipped
weights' stored training config."""
import os

import pytest
import torch

from cli import UserError, shown
from conftest import ROOT


def test_a_repo_file_given_absolute_reads_relative_to_the_repo_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shown(os.path.join(ROOT, "weights", "model.pt")) == os.path.join("weights", "model.pt")


def test_a_file_inside_the_current_folder_reads_relative_to_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shown(str(tmp_path / "out" / "best.pt")) == os.path.join("out", "best.pt")


def test_any_other_path_reads_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert shown(str(tmp_path / "best.pt")) == str(tmp_path / "best.pt")
    assert shown("../elsewhere/best.pt") == "../elsewhere/best.pt"


def test_prepare_names_its_default_output_the_same_way(tmp_path, monkeypatch):
    import importlib.util
    spec = importlib.util.spec_from_file_location("prepare", os.path.join(ROOT, "data", "prepare.py"))
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    monkeypatch.chdir(tmp_path)
    assert prepare.shown(prepare.DEFAULT_OUT) == os.path.join("data", "tiny_shakespeare.txt")


@pytest.mark.parametrize("load, path, needle", [
    ("checkpoint", os.path.join(ROOT, "weights", "missing.pt"), "checkpoint not found: weights/missing.pt"),
    ("text", os.path.join(ROOT, "data", "missing.txt"), "data file not found: data/missing.txt"),
])
def test_a_missing_default_file_is_named_without_this_machines_path(tmp_path, monkeypatch, load, path, needle):
    from checkpoint import read_checkpoint
    from corpus import load_text
    monkeypatch.chdir(tmp_path)  # run from another folder: the message still names the repo's file
    with pytest.raises(UserError) as e:
        (read_checkpoint if load == "checkpoint" else load_text)(path)
    assert needle in str(e.value) and ROOT not in str(e.value)


@pytest.mark.parametrize("name", ["model.pt", "ar_baseline.pt", "student16.pt"])
def test_the_shipped_weights_store_no_path_of_the_training_machine(name):
    raw = torch.load(os.path.join(ROOT, "weights", name), weights_only=True)
    assert raw["train_config"]["data"] == "data/tiny_shakespeare.txt"
    paths = [v for v in raw["train_config"].values() if isinstance(v, str) and "/" in v]
    assert not [p for p in paths if os.path.isabs(p) or p.startswith(".")], paths


def test_the_shipped_student_is_the_measured_one_with_its_measured_setting():
    from checkpoint import DEFAULT_SAMPLER_CKPT, load_model
    model, _, ckpt = load_model(DEFAULT_SAMPLER_CKPT)
    # the 16-pass D-MMD student of training seed 1337 (2026-12-08, one H100), in band at this setting
    assert ckpt["checksum"] == "46ddc1c4a8dd07cb0bdbe5676c8b6a946f966656426629b926d31cb4cdaa1cab"
    assert model.sampler_defaults == {"steps": 16, "order": "spread", "remask": 0.0, "temperature": 0.95,
                                      "schedule": "linear"}
    assert ckpt["train_config"]["distill_from"] == "weights/model.pt" and ckpt["config"]["noise_dim"] == 0


def test_the_reexported_model_keeps_its_weights_and_checks_its_fields():
    from checkpoint import read_checkpoint, weights_checksum
    ckpt = read_checkpoint(os.path.join(ROOT, "weights", "model.pt"))
    # the weights of run i_reg as shipped (2026-11-26): only train_config.data was rewritten
    assert weights_checksum(ckpt["model"]) == ckpt["checksum"] == \
        "8d7a883bbddee87e38f0416405b8b32719e5ec52c7d3158f29addd7c43a316fe"
    assert "config.block_size" in ckpt["fields_checksum"]
