"""finetune / evaluate: adapters + head only, schedules, best epoch on validation, head recipe."""
import copy

import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from sls_fast.models.adapters import add_adapters
from sls_fast.models.prune import truncate
from sls_fast.models.train import _lr_lambda, evaluate, finetune, probe_head


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits32():
    from sls_fast.io.datasets import digits

    return {s: digits(s, image_size=32) for s in ("train", "val")}


@pytest.fixture(scope="module")
def lite0_cut():
    """EfficientNet-Lite0 (real ImageNet weights, offline), Convpass, new 10-class head, cut to 6."""
    import warnings

    from sls_fast.models.zoo import load

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = load("efficientnet_lite0")
    return truncate(add_adapters(m, "convpass", num_classes=10), 6)


@pytest.mark.slow
def test_short_finetune_raises_validation_accuracy(digits32, lite0_cut):
    model = copy.deepcopy(lite0_cut)
    before = evaluate(model, digits32["val"])
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "adapter" not in k and "classifier" not in k}
    r = finetune(model, digits32["train"], digits32["val"], strategy="CLR", epochs=2, lr=1e-3, head_lr=1e-2,
                 batch_size=64, head_init="keep", progress=False)
    after = evaluate(model, digits32["val"])
    assert after == pytest.approx(r["best_val_acc"])  # the best epoch (by validation) is restored
    assert r["best_epoch"] >= 1 and len(r["history"]) == 2
    assert after > before + 0.3, (before, after, r["history"])
    for k, v in model.state_dict().items():  # the backbone (BN statistics included) never moved
        if k in frozen:
            torch.testing.assert_close(v, frozen[k], rtol=0, atol=0)


def test_probe_head_recipe(digits32, lite0_cut):
    model = copy.deepcopy(lite0_cut)
    assert model.sls_state.head_fresh
    acc = probe_head(model, digits32["train"])
    assert acc > 0.9
    assert evaluate(model, digits32["val"]) > 0.8
    assert not model.sls_state.head_fresh


def _tiny():
    import timm

    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=3)
    return add_adapters(m, "convpass")


def _tiny_data(n=24, classes=3):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % classes)


@pytest.mark.parametrize("strategy", ["FT", "TFS"])
def test_strategies_run(strategy):
    m = _tiny()
    ds = _tiny_data()
    state = torch.get_rng_state()
    r = finetune(m, ds, ds, strategy=strategy, epochs=1, batch_size=8, progress=False)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone
    assert r["strategy"] == strategy and len(r["history"]) == 1
    assert r["best_val_acc"] == pytest.approx(evaluate(m, ds))  # the best epoch is restored
    assert r["trainable"] == sum(p.numel() for p in m.parameters() if p.requires_grad)
    if strategy == "TFS":
        assert r["probe_train_acc"] is not None  # re-initialised head -> probe


def test_schedules():
    ft = _lr_lambda("FT", 100, 1e-5, 1e-5)
    assert ft(0) == ft(99) == 1.0
    clr = _lr_lambda("CLR", 100, 1e-3, 1e-5)
    assert clr(0) == pytest.approx(0.1) and clr(9) == pytest.approx(1.0)  # 10% warm-up
    assert clr(10) == pytest.approx(1.0) and clr(100) == pytest.approx(1e-2)  # cosine to 1e-5
    vals = [clr(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))


def test_errors():
    m = _tiny()
    few = _tiny_data(classes=2)
    with pytest.raises(ValueError, match="2 classes but the head has 3"):
        finetune(m, few, few, epochs=1, progress=False)
    sub = Subset(_tiny_data(), [0, 3, 6])  # only class 0
    with pytest.raises(ValueError, match="1 classes but the head has 3"):
        finetune(m, sub, sub, epochs=1, progress=False)
    with pytest.raises(ValueError, match="strategy"):
        finetune(m, _tiny_data(), None, strategy="SGD", epochs=1, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        finetune(m, _tiny_data(), None, epochs=0, progress=False)


def test_evaluate_matches_manual():
    m = _tiny().eval()
    ds = _tiny_data()
    x, y = ds.tensors
    with torch.no_grad():
        want = (m(x).argmax(-1) == y).float().mean().item()
    assert evaluate(m, ds, batch_size=5) == pytest.approx(want)
