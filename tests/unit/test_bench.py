"""measure_throughput / compare_throughput: keys, sanity, errors."""
import copy

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


def test_compare_runs_both_and_gives_models_back():
    """Both models timed in alternating rounds (speed claims live in benchmarks/, not here);
    the caller's models come back on their device with their training flags."""
    full, pruned = tiny_vit(3).train(), tiny_vit(1).eval()
    res = sls_fast.compare_throughput(full, pruned, batch_size=4, compile=False, warmup=1,
                                      iters=6, rounds=3)
    for k in ("full", "pruned"):
        assert KEYS <= set(res[k]) and res[k]["iters"] == 6 and res[k]["batch_size"] == 4
    measured = res["pruned"]["images_per_s"] / res["full"]["images_per_s"]
    assert res["measured_speedup"] == pytest.approx(measured)
    # 6 timed batches < MIN_TIMED_BATCHES: never "ok"; a loaded machine may even exceed the bound
    assert res["noisy"] and res["status"] in ("noisy", "measurement error")
    assert res["speedup"] == (res["measured_speedup"] if res["status"] == "noisy" else None)
    lo, hi = res["speedup_ci"]
    assert 0 < lo <= hi
    # the bound is the largest cost ratio: 3 of tiny_vit's blocks against 1 (+ embedding, head)
    full_costs, pruned_costs = res["costs"]["full"], res["costs"]["pruned"]
    assert set(full_costs) == {"flops", "weight_bytes", "activation_bytes"}
    assert res["bound"] == pytest.approx(max(full_costs[k] / pruned_costs[k] for k in full_costs))
    assert 1 < res["bound"] < 3
    assert full.training and all(m.training for m in full.modules())
    assert not pruned.training


@pytest.mark.slow
def test_compiled_runs():
    r = sls_fast.measure_throughput(tiny_vit(1), batch_size=2, compile=True, warmup=1, iters=2)
    assert r["compiled"] is True and r["iters"] == 2
    assert r["images_per_s"] == pytest.approx(2 / (r["latency_ms"] / 1e3))


@pytest.mark.slow
def test_the_ninth_structure_timed_in_a_process_is_still_compiled():
    """torch.compile runs one forward eager, silently, after 8 recompilations: every timing
    starts from a fresh compiler, so each of 10 distinct models gets its own compiled graph."""
    from torch._dynamo.utils import counters

    class Net(torch.nn.Module):
        def __init__(self, k):
            super().__init__()
            self.blocks = torch.nn.Sequential(*[torch.nn.Conv2d(3, 3, 3, padding=1)
                                                for _ in range(k)])

        def forward(self, x):
            return self.blocks(x).mean((2, 3))

    new_graphs = []
    for k in range(1, 11):
        before = counters["stats"]["unique_graphs"]
        if k % 2:
            sls_fast.measure_throughput(Net(k), batch_size=2, image_size=8, compile=True,
                                        warmup=1, iters=1)
        else:
            sls_fast.compare_throughput(Net(k), Net(k - 1), batch_size=2, image_size=8,
                                        compile=True, warmup=1, iters=1)
        new_graphs.append(counters["stats"]["unique_graphs"] - before)
    assert all(n >= 1 for n in new_graphs), new_graphs


def test_sweep():
    rs = sls_fast.sweep_batch_sizes(tiny_vit(1), batch_sizes=(1, 3), compile=False, warmup=1,
                                    iters=2)
    assert [r["batch_size"] for r in rs] == [1, 3]


def test_errors():
    m = tiny_vit(1)
    with pytest.raises(ValueError, match="amp"):
        sls_fast.measure_throughput(m, amp="int8", compile=False)
    with pytest.raises(ValueError, match="amp"):
        sls_fast.measure_throughput(m, amp=True, compile=False)  # one vocabulary everywhere
    with pytest.raises(ValueError, match="batch_size"):
        sls_fast.measure_throughput(m, batch_size=0, compile=False)
    with pytest.raises(ValueError, match="input size"):
        sls_fast.measure_throughput(torch.nn.Linear(3, 3), compile=False)


def test_a_cut_that_keeps_everything_reports_no_speed_up():
    m = tiny_vit(2)
    res = sls_fast.compare_throughput(m, copy.deepcopy(m), batch_size=2, compile=False,
                                      warmup=1, iters=4, blocks=(2, 2))
    assert res["status"] == "not pruned" and res["speedup"] is None
    assert res["measured_speedup"] > 0 and "not pruned" in res["note"]


@pytest.mark.parametrize("measured,ci,timed,bound,blocks,status", [
    (48.84, (40.0, 55.0), 3, 9.25, (1, 12), "measurement error"),  # the ViT-Tiny 12 -> 1 case
    (10.0, (9.9, 10.1), 50, 9.25, (1, 12), "ok"),  # within the 10 % slack of the bound
    (2.11, (1.2, 3.0), 30, None, (16, 16), "not pruned"),  # K = L: no ratio, whatever it says
    (1.9, (1.85, 1.95), 50, 2.0, (6, 12), "ok"),
    (1.9, (1.85, 1.95), 3, 2.0, (6, 12), "noisy"),  # too few timed batches
    (1.9, (1.2, 2.5), 50, 2.0, (6, 12), "noisy"),  # interval wider than NOISY_WIDTH
    (1.9, None, 50, 2.0, None, "noisy"),  # no interval (one batch)
])
def test_speedup_verdict(measured, ci, timed, bound, blocks, status):
    from sls_fast.models.throughput import speedup_verdict

    kept, total = blocks if blocks else (None, None)
    v = speedup_verdict(measured, ci, timed=timed, bound=bound, kept=kept, total=total)
    assert v["status"] == status
    assert v["speedup"] == (measured if status in ("ok", "noisy") else None)
    assert v["noisy"] == (status in ("noisy", "measurement error"))
    assert bool(v["note"]) == (status != "ok")


def test_named_conventions():
    """'authors' times batch 1, fp32, eager; 'timm' channels-last conv nets (on a copy: the
    caller's model keeps its layout); what is given explicitly wins; an unknown name is refused."""
    full, pruned = tiny_vit(2), tiny_vit(1)
    res = sls_fast.compare_throughput(full, pruned, convention="authors", warmup=1, iters=2)
    assert res["convention"] == "authors"
    assert res["full"]["batch_size"] == 1 and res["full"]["compiled"] is False
    assert res["full"]["amp"] is None and res["full"]["iters"] == 3  # 2 over 3 rounds, rounded up
    conv = timm.create_model("resnet18", pretrained=False).eval()
    cut = sls_fast.truncate(conv, 3)
    res = sls_fast.compare_throughput(conv, cut, convention="timm", batch_size=2, compile=False,
                                      image_size=32, warmup=1, iters=2, amp=None)
    assert res["convention"] == "timm" and res["full"]["batch_size"] == 2
    assert conv.conv1.weight.is_contiguous()  # not converted in place
    with pytest.raises(ValueError, match="convention must be one of"):
        sls_fast.compare_throughput(full, pruned, convention="fast")
