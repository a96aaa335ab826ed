"""tools/export_weights.py: a training checkpoint to bf16 weights that sample as before; bad input
is one line, and nothing of the user's is written or overwritten. In-process through main(argv);
a real process run as another user for a read-only folder."""
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
import torch

from checkpoint import load_model, read_checkpoint, write_checkpoint
from conftest import ROOT, assert_one_line_error, entry_point


def test_export_keeps_what_sampling_needs_in_bf16(tiny_run, tmp_path, run_main):
    out = tmp_path / "shipped.pt"
    r = run_main("tools/export_weights.py", os.path.join(tiny_run, "last.pt"), out)
    assert r.returncode == 0, r.stderr
    ckpt = read_checkpoint(str(out))
    assert "optimizer" not in ckpt and "generator" not in ckpt
    assert all(v.dtype == torch.bfloat16 for v in ckpt["model"].values())
    model, chars, _ = load_model(str(out))
    assert len(chars) == 65 and next(model.parameters()).dtype == torch.float32
    assert os.path.getsize(out) < os.path.getsize(os.path.join(tiny_run, "last.pt")) / 3


def test_export_stores_the_measured_sampler_setting_that_sample_py_then_uses(tiny_ckpt, tmp_path, run_main):
    out = tmp_path / "student.pt"
    r = run_main("tools/export_weights.py", tiny_ckpt, out, "--sampler", "steps=5,order=l2r,temperature=0.5,top_k=none")
    assert r.returncode == 0, r.stderr
    assert read_checkpoint(str(out))["sampler"] == {"steps": 5, "order": "l2r", "temperature": 0.5, "top_k": None}
    flags = ["--prompt", "KING:", "--length", "40", "--seed", "1", "--device", "cpu", "--stats"]
    stored = run_main("sample.py", "--ckpt", out, *flags)
    assert "[stats] 5 forward passes" in stored.stderr, stored.stderr
    assert "the checkpoint's setting: steps=5,order=l2r,temperature=0.5\n" in stored.stderr
    spelled = run_main("sample.py", "--ckpt", tiny_ckpt, *flags, "--steps", "5", "--order", "l2r", "--temperature", "0.5")
    assert stored.stdout == spelled.stdout, "the stored setting is the flags' defaults"
    hotter = run_main("sample.py", "--ckpt", out, *flags, "--temperature", "1.0")
    assert hotter.stdout == run_main("sample.py", "--ckpt", tiny_ckpt, *flags, "--steps", "5", "--order", "l2r",
                                     "--temperature", "1.0").stdout, "a flag given wins over the stored setting"
    adaptive = run_main("sample.py", "--ckpt", out, *flags, "--threshold", "0.9")
    assert adaptive.returncode == 0 and "[stats] 5 forward passes" not in adaptive.stderr, "a threshold replaces the steps"


@pytest.mark.parametrize("setting, needle", [("colour=red", "unknown setting 'colour'"),
                                             ("steps=many", "bad value 'many' for steps"),
                                             ("remask=-1", "--remask must be >= 0"),
                                             ("steps=0", "--steps must be an integer >= 1"),
                                             ("cuda_graph=true", "unknown setting 'cuda_graph'")])
def test_export_refuses_a_sampler_setting_the_sampler_refuses(tiny_ckpt, tmp_path, run_main, setting, needle):
    r = run_main("tools/export_weights.py", tiny_ckpt, tmp_path / "out.pt", "--sampler", setting)
    assert_one_line_error(r, "export_weights.py: error:", needle)
    assert os.listdir(tmp_path) == []


def test_a_checkpoint_whose_sampler_setting_this_sampler_lacks_is_one_line_error(tiny_ckpt, tmp_path, run_main):
    ckpt = read_checkpoint(tiny_ckpt)
    write_checkpoint({**ckpt, "sampler": {"steps": 5, "beam_width": 4}}, str(tmp_path / "future.pt"))
    r = run_main("sample.py", "--ckpt", tmp_path / "future.pt", "--length", "20", "--device", "cpu")
    assert_one_line_error(r, "sample.py: error:", "future.pt: sampler must be a dict", "beam_width")


@pytest.fixture
def keep(tmp_path):
    """A file the export must not touch."""
    path = tmp_path / "keep.pt"
    path.write_bytes(b"the user's")
    return path


def test_export_refuses_weights_that_are_not_finite(tmp_path, tiny_ckpt, keep, run_main):
    ckpt = read_checkpoint(tiny_ckpt)
    name = sorted(k for k, v in ckpt["model"].items() if v.is_floating_point())[-1]
    ckpt["model"][name].view(-1)[0] = float("nan")
    write_checkpoint(ckpt, str(tmp_path / "nan.pt"))  # a valid checksum: the file is not corrupt
    r = run_main("tools/export_weights.py", tmp_path / "nan.pt", keep)
    assert_one_line_error(r, "export_weights.py: error:", f"tensor {name}", "NaN/inf")
    assert keep.read_bytes() == b"the user's"


def test_export_into_a_folder_writes_there_under_the_source_name(tmp_path, tiny_ckpt, run_main):
    folder = tmp_path / "weights"
    folder.mkdir()
    r = run_main("tools/export_weights.py", tiny_ckpt, folder)
    assert r.returncode == 0, r.stderr
    assert os.listdir(folder) == ["best.pt"] and os.listdir(tmp_path) == ["weights"], "no weights.tmp<pid>"
    assert f"-> {folder / 'best.pt'}:" in r.stdout


def test_export_over_its_own_source_is_one_line_error(tmp_path, tiny_ckpt, run_main):
    src = tmp_path / "best.pt"
    shutil.copy(tiny_ckpt, src)
    before = src.read_bytes()
    for dst in (src, tmp_path):  # the file, and its folder (where the source's name is the source)
        r = run_main("tools/export_weights.py", src, dst)
        assert_one_line_error(r, "export_weights.py: error:", "is the source checkpoint itself")
    assert src.read_bytes() == before and os.listdir(tmp_path) == ["best.pt"]


def test_export_weights_missing_file_is_one_line_error(tmp_path, run_main):
    r = run_main("tools/export_weights.py", tmp_path / "none.pt", tmp_path / "out.pt")
    assert_one_line_error(r, "export_weights.py: error:", "not found")
    assert not (tmp_path / "out.pt").exists()


def test_export_into_a_read_only_folder_is_a_plain_one_line_error(tiny_ckpt):
    """Run as another user where the tests run as root (root writes anywhere)."""
    as_user = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root, and no setpriv to drop to another user")
        as_user = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    work = tempfile.mkdtemp()  # not under pytest's tmp_path: the other user must reach it
    try:
        os.chmod(work, 0o755)
        src, folder = os.path.join(work, "best.pt"), os.path.join(work, "ro")
        shutil.copy(tiny_ckpt, src)
        os.chmod(src, 0o644)
        os.mkdir(folder, 0o555)
        r = subprocess.run([*as_user, sys.executable, os.path.join(ROOT, "tools", "export_weights.py"), src,
                            os.path.join(folder, "out.pt")], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert_one_line_error(r, "export_weights.py: error: cannot write", "Permission denied")
        assert "enforce fail" not in r.stderr and os.listdir(folder) == []
    finally:
        os.chmod(work, 0o700)
        shutil.rmtree(work)


def test_export_cleans_torch_save_errors(tmp_path, tiny_ckpt, monkeypatch, capsys):
    """A failure in torch.save itself (a full disk, say): no '[enforce fail at ...]', no temporary file."""
    export_weights = entry_point("tools/export_weights.py")

    def full_disk(obj, f):  # a path or an open file
        (open(f, "wb") if isinstance(f, str) else f).write(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 512 vs 448")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(SystemExit) as e:
        export_weights.main([tiny_ckpt, str(tmp_path / "out.pt")])
    assert str(e.value) == f"export_weights.py: error: no space left on device writing {tmp_path / 'out.pt'}; " \
                           "there was no earlier copy"
    assert os.listdir(tmp_path) == []
