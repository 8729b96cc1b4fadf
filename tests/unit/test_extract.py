"""sls_fast.method.extract: one forward per batch, features equal to a hook-per-block reference."""
import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from sls_fast.models.families import find_blocks
import sls_fast.method.extract as extract_module
from sls_fast.method.extract import LayerFeatures, estimate_bytes, extract_features

N_IMAGES = 10
BATCH = 4  # 3 batches, the last one short


def _vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32).eval()


def _swin():
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32,
                             window_size=2).eval()


def _effnet():
    torch.manual_seed(0)
    return timm.create_model("efficientnet_lite0", pretrained=False).eval()


MODELS = {"vit": (_vit, 32), "swin": (_swin, 32), "efficientnet": (_effnet, 64)}


@pytest.fixture(scope="module")
def models():
    return {k: (fn(), size) for k, (fn, size) in MODELS.items()}


def _data(size, n=N_IMAGES, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randperm(n, generator=g) % 7  # labels out of order, with repeats
    return x, y


def reference(model, x, *, pool="auto"):
    """Hook on every block, run the whole model on every image, pool by hand: [L] x [N, D_i].
    The model runs in the weight layout extraction gives it on the CPU (a conv net's weights and
    inputs channels-last), so the comparison sees hooks, pooling and buffers, not the rounding of
    another convolution kernel (the two layouts are compared in
    test_conv_weights_channels_last_during_extraction_then_restored)."""
    blocks = find_blocks(model)
    outs = {i: [] for i in range(len(blocks))}
    hooks = [b.module.register_forward_hook(lambda m, inp, o, i=i: outs[i].append(o))
             for i, b in enumerate(blocks)]
    converted = extract_module._channels_last_weights(model, torch.device("cpu"))
    try:
        with torch.no_grad():
            for s in range(0, x.shape[0], BATCH):
                xb = x[s:s + BATCH]
                model(xb.contiguous(memory_format=torch.channels_last) if converted else xb)
    finally:
        extract_module._restore_weights(converted)
        for h in hooks:
            h.remove()
    cls = getattr(model, "cls_token", None) is not None
    npt = getattr(model, "num_prefix_tokens", 0)
    res = []
    for i in range(len(blocks)):
        o = torch.cat(outs[i])
        if o.ndim == 3:
            res.append(o[:, 0] if (pool == "cls" or (pool == "auto" and cls)) else o[:, npt:].mean(1))
        elif getattr(model, "output_fmt", "NCHW") == "NHWC":  # Swin: [B, H, W, C]
            res.append(o.mean((1, 2)))
        else:
            res.append(o.mean((2, 3)))
    return [b.name for b in blocks], res


def _assert_close(lf, ref, tol=1e-5):
    assert len(lf) == len(ref)
    for i, r in enumerate(ref):
        got = torch.as_tensor(np.asarray(lf.to_numpy()[i]))
        assert got.shape == r.shape, f"layer {i}: {tuple(got.shape)} vs {tuple(r.shape)}"
        assert torch.isfinite(got).all(), f"layer {i} has non-finite values"
        err = (got - r).abs().max().item()
        assert err <= tol, f"layer {i} ({lf.layer_names[i]}): max abs error {err:.2e}"


@pytest.mark.parametrize("family,method", [("vit", "auto"), ("vit", "hooks"), ("swin", "auto"),
                                           ("efficientnet", "auto")])
def test_matches_hook_reference(models, family, method):
    model, size = models[family]
    x, y = _data(size)
    names, ref = reference(model, x)
    lf = extract_features(model, TensorDataset(x, y), batch_size=BATCH, progress=False, method=method)
    assert isinstance(lf, LayerFeatures)
    assert lf.layer_names == names
    assert lf.widths == [r.shape[1] for r in ref]
    assert lf.stacked == (len(set(lf.widths)) == 1)
    assert torch.equal(torch.as_tensor(lf.labels), y)
    _assert_close(lf, ref)
    assert not model.training


def test_one_forward_per_batch_and_head_not_run(models):
    for family, (model, size) in models.items():
        x, y = _data(size)
        blocks = find_blocks(model)
        calls = {"first": 0, "last": 0, "head": 0}

        def counter(key):
            def hook(m, inp, out):
                calls[key] += 1
            return hook

        head = model.get_classifier()
        hooks = [blocks[0].module.register_forward_hook(counter("first")),
                 blocks[-1].module.register_forward_hook(counter("last")),
                 head.register_forward_hook(counter("head"))]
        try:
            extract_features(model, TensorDataset(x, y), batch_size=BATCH, progress=False)
        finally:
            for h in hooks:
                h.remove()
        n_batches = -(-N_IMAGES // BATCH)
        assert calls == {"first": n_batches, "last": n_batches, "head": 0}, (family, calls)


def test_dataloader_order_and_pools(models):
    model, size = models["vit"]
    x, y = _data(size, n=9)
    loader = DataLoader(TensorDataset(x, y), batch_size=5, shuffle=False)
    lf = extract_features(model, loader, pool="mean", progress=True)
    assert lf.pool == ["mean"] * 12
    assert torch.equal(lf.labels, y)
    _, ref = reference(model, x, pool="mean")
    _assert_close(lf, ref)
    with pytest.raises(ValueError, match="class token"):
        extract_features(models["efficientnet"][0], loader, pool="cls", progress=False)
    with pytest.raises(ValueError, match="pool"):
        extract_features(model, loader, pool="max", progress=False)


def test_explicit_layers_and_unknown_length(models):
    model, size = models["efficientnet"]
    x, y = _data(size, n=7)
    names, ref = reference(model, x)
    picked = [names[3], find_blocks(model)[10].module, names[1]]
    lf = extract_features(model, TensorDataset(x, y), layers=picked, batch_size=BATCH, progress=False)
    assert lf.layer_names == [names[3], names[10], names[1]]
    _assert_close(lf, [ref[3], ref[10], ref[1]])

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(zip(x, y))

    with pytest.warns(RuntimeWarning, match="no length"):
        lf2 = extract_features(model, Stream(), batch_size=BATCH, progress=False)
    assert lf2.num_samples == 7
    _assert_close(lf2, ref)


def test_float16_buffers_and_numpy(models):
    model, size = models["swin"]
    x, y = _data(size, n=5)
    lf = extract_features(model, TensorDataset(x, y), batch_size=5, dtype=torch.float16,
                          progress=False)
    assert all(f.dtype == torch.float16 for f in lf.features)
    _, ref = reference(model, x)
    _assert_close(lf, ref, tol=2e-2 * max(r.abs().max().item() for r in ref))
    arr = lf.to_numpy()
    assert isinstance(arr.labels, np.ndarray) and all(isinstance(f, np.ndarray) for f in arr.features)


def test_amp_bf16_cpu(models):
    model, size = models["vit"]
    x, y = _data(size, n=4)
    lf = extract_features(model, TensorDataset(x, y), amp="bf16", progress=False)
    _, ref = reference(model, x)
    for i, r in enumerate(ref):
        assert (lf[i] - r).abs().max().item() < 0.1 * r.abs().max().item() + 0.1


def test_memory_budget(models):
    model, size = models["vit"]
    x, y = _data(size)
    need = estimate_bytes(N_IMAGES, [192] * 12)
    assert need == N_IMAGES * 192 * 12 * 4 + 8 * N_IMAGES
    with pytest.raises(ValueError, match="max_bytes"):
        extract_features(model, TensorDataset(x, y), max_bytes=need - 1, progress=False)
    lf = extract_features(model, TensorDataset(x, y), max_bytes=need, progress=False)
    assert lf.features.shape == (12, N_IMAGES, 192)


def test_error_cases(models):
    vit, size = models["vit"]
    x, y = _data(size)
    # no recognisable blocks
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3))
    with pytest.raises(ValueError, match="no recognisable blocks"):
        extract_features(plain, TensorDataset(x, y), progress=False)
    lf = extract_features(plain, TensorDataset(x, y), layers=[plain[0], plain[2]], progress=False)
    assert lf.layer_names == ["0", "2"] and lf.widths == [4, 5]
    with pytest.raises(ValueError, match="not a submodule"):
        extract_features(plain, TensorDataset(x, y), layers=[nn.Conv2d(3, 4, 3)], progress=False)
    # empty data
    empty = TensorDataset(torch.empty(0, 3, size, size), torch.empty(0, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        extract_features(vit, empty, progress=False)

    class Nothing(IterableDataset):
        def __iter__(self):
            return iter(())

    with pytest.raises(ValueError, match="empty"):
        extract_features(vit, Nothing(), progress=False)
    # wrong image size / channels
    with pytest.raises(ValueError, match="expects"):
        extract_features(vit, TensorDataset(torch.randn(2, 3, 48, 48), torch.zeros(2)), progress=False)
    with pytest.raises(ValueError, match="channels"):
        extract_features(vit, TensorDataset(torch.randn(2, 1, 32, 32), torch.zeros(2)), progress=False)
    # wrong types
    with pytest.raises(TypeError, match="DataLoader or Dataset"):
        extract_features(vit, [x, y], progress=False)
    with pytest.raises(TypeError, match="dtype"):
        extract_features(vit, TensorDataset(x, y), dtype=torch.int32, progress=False)
    with pytest.raises(ValueError, match="amp"):
        extract_features(vit, TensorDataset(x, y), amp="fp8", progress=False)
    assert not vit.training


@pytest.mark.cuda
def test_cuda_buffers(models):
    model, size = models["vit"]
    x, y = _data(size)
    _, ref = reference(model, x)
    model.cuda()
    try:
        lf = extract_features(model, TensorDataset(x, y), batch_size=BATCH, progress=False)
    finally:
        model.cpu()
    try:
        import cupy  # noqa: F401

        assert type(lf.features).__module__.startswith("cupy")
    except ImportError:
        assert lf.features.is_cuda
    _assert_close(lf, ref, tol=1e-4)


def test_training_flags_restored(models):
    model, size = models["vit"]
    x, y = _data(size, n=2)
    model.train()
    model.blocks[1].eval()  # a partly frozen model keeps its exact per-module modes
    try:
        seen = []
        h = model.blocks[0].register_forward_hook(lambda m, i, o: seen.append(m.training))
        extract_features(model, TensorDataset(x, y), progress=False)
        h.remove()
        assert seen == [False]
        assert model.training and model.blocks[0].training and not model.blocks[1].training
        assert not model.blocks[1].attn.training
    finally:
        model.eval()


def test_swin_merged_pool_is_the_authors_features(models):
    """pool="merged": every block of stages 1-3 pooled after the PatchMerging that follows its
    stage (width 2C), the last stage raw: the authors' forward_Swin_features, restated."""
    model, size = models["swin"]
    x, y = _data(size)
    blocks = find_blocks(model)
    stages = list(model.layers)
    outs = {i: [] for i in range(len(blocks))}
    hooks = [b.module.register_forward_hook(lambda m, inp, o, i=i: outs[i].append(o))
             for i, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    ref = []
    with torch.no_grad():
        for i, b in enumerate(blocks):
            o = outs[i][0]
            if b.stage + 1 < len(stages):
                o = stages[b.stage + 1].downsample(o)
            ref.append(o.mean(dim=(1, 2)))
    lf = extract_features(model, TensorDataset(x, y), pool="merged", batch_size=BATCH,
                          progress=False)
    assert [f.shape[1] for f in lf.features] == [r.shape[1] for r in ref]
    C = stages[0].blocks[0].norm1.normalized_shape[0]
    assert lf.features[0].shape[1] == 2 * C  # stage 1 scored at width 2C, not C
    for f, r in zip(lf.features, ref):
        torch.testing.assert_close(f, r, rtol=1e-4, atol=1e-5)
    raw = extract_features(model, TensorDataset(x, y), batch_size=BATCH, progress=False)
    assert raw.features[0].shape[1] == C
    torch.testing.assert_close(raw.features[-1], lf.features[-1])  # last stage: the same


def test_merged_pool_needs_swin(models):
    model, size = models["vit"]
    x, y = _data(size)
    with pytest.raises(ValueError, match="merged.*Swin"):
        extract_features(model, TensorDataset(x, y), pool="merged", progress=False)


def test_conv_weights_channels_last_during_extraction_then_restored(models, monkeypatch):
    """On the CPU a conv net's 4-D weights are channels-last while it extracts (faster oneDNN
    convolutions), and the model gets its own layout back afterwards, also when extraction
    fails midway."""
    model, size = models["efficientnet"]
    x, y = _data(size, n=6)
    seen = []
    h = model.conv_stem.register_forward_pre_hook(
        lambda m, inp: seen.append((m.weight.is_contiguous(memory_format=torch.channels_last),
                                    inp[0].is_contiguous(memory_format=torch.channels_last))))
    try:
        lf = extract_features(model, TensorDataset(x, y), batch_size=4, progress=False)
        assert seen == [(True, True), (True, True)]
        assert all(p.is_contiguous() for p in model.parameters())
        # the same features as the model's own layout, up to float32 rounding of other
        # convolution kernels (measured: <= 1.3e-6 of a layer's largest |value|, Lite0, 16 blocks)
        monkeypatch.setattr(extract_module, "_channels_last_weights", lambda model, device: [])
        own = extract_features(model, TensorDataset(x, y), batch_size=4, progress=False)
        monkeypatch.undo()
        for i, (a, b) in enumerate(zip(lf.features, own.features)):
            assert (a - b).abs().max() <= 1e-5 * b.abs().max(), f"layer {i}"

        def fail(m, inp, out):
            raise RuntimeError("stop")

        h2 = model.blocks[2].register_forward_hook(fail)
        try:
            with pytest.raises(RuntimeError, match="stop"):
                extract_features(model, TensorDataset(x, y), batch_size=4, progress=False)
        finally:
            h2.remove()
        assert all(p.is_contiguous() for p in model.parameters())
    finally:
        h.remove()
