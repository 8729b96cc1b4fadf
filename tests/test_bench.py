"""measure_throughput / compare_throughput: keys, sanity, errors."""
import pytest
import timm
import torch

import sls_fast

KEYS = {"images_per_s", "latency_ms", "latency_ms_p20", "latency_ms_p80", "batch_size",
        "image_size", "compiled", "amp", "device", "peak_memory_bytes"}


def tiny_vit(depth):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=depth,
                             num_classes=10)


def test_keys_and_values():
    r = sls_fast.measure_throughput(tiny_vit(2), batch_size=4, compile=False, warmup=1, iters=3)
    assert KEYS <= set(r)
    assert r["batch_size"] == 4 and r["image_size"] == 64  # read from the model's config
    assert r["compiled"] is False and r["amp"] is None
    assert r["latency_ms_p20"] <= r["latency_ms"] <= r["latency_ms_p80"]
    assert r["images_per_s"] == pytest.approx(4 / (r["latency_ms"] / 1e3))
    assert r["peak_memory_bytes"] > 0


def test_more_blocks_lower_throughput():
    """12 blocks vs 2 blocks of the same ViT, timed alternately in one run."""
    res = sls_fast.compare_throughput(tiny_vit(12), tiny_vit(2), batch_size=8, compile=False,
                                      warmup=1, iters=9, rounds=3)
    assert res["speedup"] > 1.5, res


def test_compiled_runs():
    r = sls_fast.measure_throughput(tiny_vit(1), batch_size=2, compile=True, warmup=1, iters=2)
    assert r["compiled"] is True and r["images_per_s"] > 0


def test_sweep():
    rs = sls_fast.sweep_batch_sizes(tiny_vit(1), batch_sizes=(1, 3), compile=False, warmup=1,
                                    iters=2)
    assert [r["batch_size"] for r in rs] == [1, 3]


def test_errors():
    m = tiny_vit(1)
    with pytest.raises(ValueError, match="amp"):
        sls_fast.measure_throughput(m, amp="int8", compile=False)
    with pytest.raises(ValueError, match="batch_size"):
        sls_fast.measure_throughput(m, batch_size=0, compile=False)
    with pytest.raises(ValueError, match="input size"):
        sls_fast.measure_throughput(torch.nn.Linear(3, 3), compile=False)
