"""memory.py: a training run too large for the machine is one line before anything is
allocated (what was asked, about how much it needs, what is free), not the allocator's text."""
import os

import pytest
import torch

import memory
import train
from cli import UserError
from conftest import train_error
from model import ModelConfig
from train_config import TrainConfig

SMALL = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "16", "--batch_size", "4",
         "--device", "cpu", "--max_steps", "1", "--eval_interval", "1"]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("To be, or not to be, that is the question.\n" * 50)
    return str(path)


@pytest.mark.parametrize("flags, asked", [
    (["--n_embd", "8192", "--n_layer", "64", "--n_head", "64"], "51.5B-parameter model (64 layers, width 8192)"),
    (["--batch_size", "65536", "--block_size", "256"], "on batches of 65536 x 256"),
])
def test_a_run_too_large_for_the_machine_is_one_line_and_writes_nothing(capsys, tmp_path, text_file, flags, asked):
    # both passed the range checks and died in the allocator ("[enforce fail at alloc_cpu.cpp:127]")
    out = tmp_path / "run"
    message = train_error(capsys, ["--data", text_file, "--out_dir", str(out), "--device", "cpu", *flags])
    assert asked in message and "needs about" in message and " TB of memory; cpu has " in message, message
    assert "free: lower --batch_size" in message
    assert not out.exists()


def test_the_estimate_is_compared_with_what_the_device_has_free(capsys, tmp_path, text_file, monkeypatch):
    monkeypatch.setattr(memory, "free_bytes", lambda device: 1000)
    message = train_error(capsys, SMALL + ["--data", text_file, "--out_dir", str(tmp_path / "run")])
    assert "cpu has 1 kB free" in message and not (tmp_path / "run").exists()


def test_where_free_memory_cannot_be_read_the_run_goes_ahead(tmp_path, text_file, monkeypatch):
    monkeypatch.setattr(memory, "free_bytes", lambda device: None)
    train.main(SMALL + ["--data", text_file, "--out_dir", str(tmp_path / "run")])
    assert (tmp_path / "run" / "best.pt").exists()


def test_free_memory_on_this_cpu_is_read_from_the_kernel():
    if not os.path.exists("/proc/meminfo"):
        pytest.skip("no /proc/meminfo (not Linux)")
    free = memory.free_bytes(torch.device("cpu"))
    assert isinstance(free, int) and 0 < free <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def test_the_parameters_are_counted_without_allocating_them():
    mc = ModelConfig(n_layer=64, n_head=64, n_embd=8192)
    assert memory.count_params(mc) == 51_540_680_704  # 206 GB in fp32: counted on the meta device


def test_the_estimate_grows_with_the_batch_the_context_the_model_and_its_copies():
    mc, tc = ModelConfig(n_layer=2, n_embd=64, n_head=2, block_size=32), TrainConfig(batch_size=8)
    n = memory.count_params(mc)
    base = memory.training_bytes(mc, tc, n)
    assert memory.training_bytes(mc, TrainConfig(batch_size=16), n) > base
    assert memory.training_bytes(ModelConfig(n_layer=4, n_embd=64, n_head=2, block_size=32), tc, n) > base
    assert memory.training_bytes(mc, TrainConfig(batch_size=8, ema=0.99), n) == base + 4 * n
    assert memory.training_bytes(mc, tc, n, bf16=True) < base  # bf16 activations take half
    assert memory.training_bytes(mc, TrainConfig(batch_size=16), n, world=2) == base  # each process its share
    block = ModelConfig(n_layer=2, n_embd=64, n_head=2, block_size=32, objective="block", block_len=8)
    activations = base - 16 * n
    assert memory.training_bytes(block, tc, n) == 16 * n + 2 * activations  # [noisy ; clean]: two windows


def test_the_message_names_the_model_the_batch_and_the_sizes():
    mc, tc = ModelConfig(n_layer=2, n_embd=64, n_head=2, block_size=32), TrainConfig(batch_size=8)
    with pytest.raises(UserError, match=r"training a 0.1\d*M-parameter model \(2 layers, width 64\) on batches of "
                                        r"4 x 32 per process needs about .* of memory; cuda:1 has 0 kB free"):
        memory.check_training_fits(mc, tc, FakeDevice("cuda:1"), world=2)


class FakeDevice:
    """A device whose free memory memory.free_bytes reads as 0 (via a fake torch.cuda)."""

    def __init__(self, name):
        self.type, self.name = "cuda", name

    def __str__(self):
        return self.name


@pytest.fixture(autouse=True)
def no_cuda_query(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (0, 80 * 10 ** 9))


def test_format_bytes_and_counts_read_as_sizes():
    assert [memory.format_bytes(n) for n in (999, 1_000_000, 2.5e9, 1.94e12)] == ["0.999 kB", "1 MB", "2.5 GB", "1.94 TB"]
    assert [memory.format_count(n) for n in (10_667_136, 51_540_680_704)] == ["10.7M", "51.5B"]
