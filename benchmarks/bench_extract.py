"""Per-layer feature extraction: all layers in one pass vs one plain forward vs the reference's
per-layer re-extraction (the whole model over the whole data once per layer, L passes).

    pytest benchmarks/bench_extract.py --benchmark-only -q

Same data, same DataLoader batching, same run (``SLS_BENCH_N`` images, default 128;
``SLS_BENCH_THREADS`` torch threads); the ratios (extraction / plain forward and
per-layer / extraction) are printed after each model's last benchmark and stored in
``extra_info``. Targets (issue 3): extraction <= 1.15x a plain forward, and >= 0.8 x L times
faster than per-layer re-extraction.
"""
import os

import pytest
import timm
import torch
from torch.utils.data import DataLoader, TensorDataset

from sls_fast.models.families import family_of, find_blocks
from sls_fast.method.extract import extract_features, pool_output
from utils import machine

N_IMAGES = int(os.environ.get("SLS_BENCH_N", "128"))
if os.environ.get("SLS_BENCH_THREADS"):  # e.g. 1 on a shared machine, for steadier timings
    torch.set_num_threads(int(os.environ["SLS_BENCH_THREADS"]))
BATCH = 64
CASES = {
    # name: (timm name, kwargs, image size)
    "efficientnet_lite0@64": ("efficientnet_lite0", {}, 64),
    "vit_tiny@32": ("vit_tiny_patch16_224", {"img_size": 32}, 32),
}
_TIMES = {}


def _setup(case):
    name, kw, size = CASES[case]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kw).eval()
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(N_IMAGES, 3, size, size, generator=g),
                       torch.randint(0, 10, (N_IMAGES,), generator=g))
    return model, ds


def plain_forward(model, ds):
    with torch.inference_mode():
        for x, _ in DataLoader(ds, batch_size=BATCH):
            model(x)


def per_layer_reextraction(model, ds):
    """The reference's way: for each layer, hook it and run the whole model over all data."""
    layouts = [p.layout for p in family_of(model).probe(model)]  # the probed block layouts
    pool = "cls" if getattr(model, "cls_token", None) is not None else "mean"
    npt = getattr(model, "num_prefix_tokens", 0)
    out = []
    for blk, layout in zip(find_blocks(model), layouts):
        feats = []
        h = blk.module.register_forward_hook(
            lambda m, i, o, layout=layout: feats.append(
                pool_output(o, pool, layout=layout, num_prefix_tokens=npt).float()))
        try:
            plain_forward(model, ds)
        finally:
            h.remove()
        out.append(torch.cat(feats))
    return out


def _record(benchmark, case, kind):
    _TIMES[(case, kind)] = benchmark.stats.stats.median
    benchmark.extra_info.update(case=case, kind=kind, n_images=N_IMAGES, batch=BATCH,
                                timm=timm.__version__, **machine())


KINDS = ("plain", "extract", "per_layer")


@pytest.mark.parametrize("case,kind", [(c, k) for c in CASES for k in KINDS])  # one case at a time
def test_extract(benchmark, case, kind, capsys):
    model, ds = _setup(case)
    L = len(find_blocks(model))
    benchmark.group = f"extract {case}"
    if kind == "plain":
        benchmark.pedantic(plain_forward, args=(model, ds), rounds=7, warmup_rounds=1)
    elif kind == "extract":
        benchmark.pedantic(lambda: extract_features(model, ds, batch_size=BATCH, progress=False),
                           rounds=7, warmup_rounds=1)
    else:
        benchmark.pedantic(per_layer_reextraction, args=(model, ds), rounds=2, warmup_rounds=0)
    _record(benchmark, case, kind)
    if kind != "per_layer":
        return
    plain, ext, per = (_TIMES.get((case, k)) for k in KINDS)
    if plain and ext and per:
        r1, r2 = ext / plain, per / ext
        benchmark.extra_info.update(extract_over_plain=r1, per_layer_over_extract=r2, layers=L,
                                    speedup_target=0.8 * L)
        with capsys.disabled():
            print(f"\n[bench_extract] {case}: N={N_IMAGES}, L={L}, threads={torch.get_num_threads()}: "
                  f"plain {plain * 1e3:.1f} ms, extract {ext * 1e3:.1f} ms, per-layer {per * 1e3:.1f} ms; "
                  f"extract/plain = {r1:.3f} (target <= 1.15), per-layer/extract = {r2:.2f}x "
                  f"(target >= {0.8 * L:.1f}x)")


@pytest.mark.parametrize("layout", ["own", "channels_last"])
def test_conv_weight_layout(benchmark, layout, monkeypatch, capsys):
    """EfficientNet-Lite0 at 64 px on the CPU: extraction as shipped (4-D weights channels-last
    while it runs) against the model's own NCHW layout, same data, same run."""
    import sls_fast.method.extract as E

    case = "efficientnet_lite0@64"
    model, ds = _setup(case)
    if layout == "own":
        monkeypatch.setattr(E, "_channels_last_weights", lambda model, device: [])
    benchmark.group = f"extract {case}: weight layout"
    benchmark.pedantic(lambda: extract_features(model, ds, batch_size=BATCH, progress=False),
                       rounds=7, warmup_rounds=1)
    _record(benchmark, case, f"layout {layout}")
    own, cl = _TIMES.get((case, "layout own")), _TIMES.get((case, "layout channels_last"))
    if own and cl:
        benchmark.extra_info.update(own_over_channels_last=own / cl)
        with capsys.disabled():
            print(f"\n[bench_extract] {case}, N={N_IMAGES}: own layout {own * 1e3:.1f} ms, "
                  f"channels-last {cl * 1e3:.1f} ms: {own / cl:.2f}x")
