"""sample.py as a process: what a shell pipeline sees."""
import os
import subprocess
import sys

from conftest import ROOT


def test_a_reader_that_leaves_early_ends_sampling_quietly(tiny_ckpt):
    """`sample.py --num-samples 200 | head -n1`: exit 141 (as SIGPIPE), no traceback."""
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "sample.py"), "--ckpt", tiny_ckpt, "--device", "cpu",
                          "--num-samples", "200", "--length", "40", "--seed", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    first = p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and first and err == ""
