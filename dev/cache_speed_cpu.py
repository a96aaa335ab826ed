"""A first look at the caches' speed at batch 1 on a CPU (fp32, 2 threads): 256 new characters
from the shipped weights after one given character, median of 3 after a warm-up, beside 64 bare
full passes, all in one process (RESULTS.md 2026-12-07, the delayed cache). bench.py --sample is
the measurement of record (it times the AR side too); this script times generate() alone.

    python dev/cache_speed_cpu.py
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from checkpoint import load_model  # noqa: E402
from sampler import SamplerConfig, generate  # noqa: E402

IN_BAND = dict(temperature=0.9, order="spread", remask=0.6, remask_by="pmi")  # the sparse cache's in-band setting
SETTINGS = {"default": SamplerConfig(),
            **{f"{cache} refresh {r}": SamplerConfig(cache=cache, refresh=r, **IN_BAND)
               for cache, refreshes in (("sparse", (4, 8)), ("delayed", (4, 8, 16, 64))) for r in refreshes}}


def seconds(fn, runs=3):
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    torch.set_num_threads(2)
    model = load_model("weights/model.pt", "cpu")[0].float().eval()
    canvas = torch.full((1, 256), model.config.mask_id)
    canvas[0, 0] = 0  # a newline
    with torch.no_grad():
        bare = seconds(lambda: [model(canvas) for _ in range(64)])
    print(f"64 bare full passes: {bare:.3f} s")
    for name, config in SETTINGS.items():
        t = seconds(lambda: generate(model, canvas, config, seed=0))
        print(f"{name:20s} {t:.3f} s  {t / bare:.3f} x the bare passes", flush=True)


if __name__ == "__main__":
    main()
