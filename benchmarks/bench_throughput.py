"""Throughput of a full model vs the SLS-pruned one, same run, timed alternately.

    pytest benchmarks/bench_throughput.py --benchmark-only -q -s

ViT-S/16 (random weights: speed does not depend on them) at 224 px, batch 8, full 12 blocks vs
cut to 6, eager and compiled (``torch.compile``, compilation excluded), on whatever device
torch picks (the CPU here). Each row's ``extra_info`` holds the full measurement dict; the
speed-up is printed and recorded.
"""
import os

import pytest
import timm
import torch

import sls_fast

BATCH = int(os.environ.get("SLS_BENCH_BATCH", "8"))
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    full = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
    pruned = sls_fast.truncate(full, 6)
    return full, pruned


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_vit_small_full_vs_pruned6(benchmark, models, compiled):
    full, pruned = models
    benchmark.group = f"ViT-S/16 224px batch {BATCH} {'compiled' if compiled else 'eager'}"
    result = {}

    def run():
        result.update(sls_fast.compare_throughput(full, pruned, batch_size=BATCH, compile=compiled,
                                                  rounds=4, iters=20, warmup=2, device=DEVICE))
        return result["speedup"]

    speedup = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(speedup=speedup, full=result["full"], pruned=result["pruned"])
    print(f"\nViT-S/16 {'compiled' if compiled else 'eager'} batch {BATCH} on {DEVICE}: full "
          f"{result['full']['images_per_s']:.1f} img/s, pruned 6/12 "
          f"{result['pruned']['images_per_s']:.1f} img/s, speed-up {speedup:.2f}x")
    assert speedup > 1.0
