"""Model families: registry, one object per family doing blocks / pool / adapters / truncate /
trainable, ResNet truncation, and adapted + truncated models that pickle, deepcopy and
torch.save with equal outputs."""
import copy
import io
import pathlib
import pickle
import re

import pytest
import timm
import torch
import torch.nn as nn

import sls_fast
from sls_fast.models.families import FAMILIES, Family, family_of, find_blocks, register, support_table
from sls_fast.models.state import SLSState
from sls_fast.models.zoo import TINY

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = pathlib.Path(__file__).resolve().parents[2]


def _make(name):
    torch.manual_seed(0)
    timm_name, options, _ = TINY[name]
    return timm.create_model(timm_name, pretrained=False, **options).eval()


SIZES = {name: size for name, (_, _, size) in TINY.items()}
BLOCKS = {"vit": 4, "swin": 12, "efficientnet": 16, "convnext": 12, "resnet": 8}
CUT = {"vit": 2, "swin": 3, "efficientnet": 6, "convnext": 4, "resnet": 3}


@pytest.mark.parametrize("name", list(SIZES))
def test_each_family_detects_blocks_and_pools(name):
    m = _make(name)
    fam = family_of(m)
    assert fam.name == name and isinstance(fam, Family)
    blocks = fam.blocks(m)
    assert len(blocks) == BLOCKS[name] == len(find_blocks(m))
    outs = {}
    h = blocks[-1].module.register_forward_hook(lambda mod, i, o: outs.setdefault("o", o))
    m(torch.randn(2, 3, SIZES[name], SIZES[name]))
    h.remove()
    layout = fam.probe(m)[-1].layout
    assert layout == {"vit": "tokens", "swin": "nhwc"}.get(name, "nchw")
    pooled = fam.pool(outs["o"], fam.default_pool(m), model=m, layout=layout)
    assert pooled.shape[0] == 2 and pooled.ndim == 2 and torch.isfinite(pooled).all()


@pytest.mark.parametrize("name", list(SIZES))
def test_adapt_truncate_trainable_every_family(name):
    m = _make(name)
    x = torch.randn(2, 3, SIZES[name], SIZES[name])
    sls_fast.add_adapters(m, "convpass", num_classes=5)
    p = sls_fast.truncate(m, CUT[name]).eval()
    assert len(find_blocks(p)) == CUT[name]
    assert sum(t.numel() for t in p.parameters()) < sum(t.numel() for t in m.parameters())
    assert p(x).shape == (2, 5)
    fam = family_of(p)
    trained = fam.trainable(p)
    want = {n for n, t in p.named_parameters() if t.requires_grad}
    got = {f"{pre}.{n}" for pre in trained for n, _ in p.get_submodule(pre).named_parameters()}
    assert got == want and any(".adapter" in n for n in got)
    st = p.sls_state
    assert isinstance(st, SLSState) and st.family == name and st.depth == CUT[name]
    assert st.num_blocks == BLOCKS[name] and st.adapters.layers == list(range(CUT[name]))


def test_resnet_truncates_at_block_granularity():
    m = _make("resnet")
    x = torch.randn(2, 3, 64, 64)
    blocks = find_blocks(m)
    p = sls_fast.truncate(m, 3, num_classes=4).eval()  # resnet18: 2 + 2 + 2 + 2 blocks
    assert [len(p.layer1), len(p.layer2)] == [2, 1]
    assert isinstance(p.layer3, nn.Identity) and isinstance(p.layer4, nn.Identity)
    assert p.fc.in_features == 128 and p.num_features == 128 and p(x).shape == (2, 4)
    outs = {}
    h = blocks[2].module.register_forward_hook(lambda mod, i, o: outs.setdefault("b", o))
    m(x)
    h.remove()
    torch.testing.assert_close(p.forward_head(p.forward_features(x), pre_logits=True),
                               outs["b"].mean((2, 3)), rtol=1e-5, atol=1e-6)
    assert family_of(p).name == "resnet" and len(find_blocks(p)) == 3


def _roundtrips(model):
    yield "deepcopy", copy.deepcopy(model)
    yield "pickle", pickle.loads(pickle.dumps(model))
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    yield "torch.save", torch.load(buf, weights_only=False)


@pytest.mark.parametrize("name,kind", [("vit", "convpass"), ("vit", "repadapter"),
                                       ("swin", "convpass"), ("swin", "repadapter"),
                                       ("efficientnet", "convpass"), ("convnext", "convpass"),
                                       ("resnet", "convpass")])
def test_adapted_and_truncated_models_pickle(name, kind):
    m = sls_fast.add_adapters(_make(name), kind, num_classes=3, scale=0.7)
    with torch.no_grad():  # non-trivial adapters: a lost adapter or scale would show
        for n, t in m.named_parameters():
            if ".adapter" in n:
                t.normal_(0, 0.05)
    x = torch.randn(2, 3, SIZES[name], SIZES[name])
    for model in (m.eval(), sls_fast.truncate(m, CUT[name]).eval()):
        want = model(x)
        for how, other in _roundtrips(model):
            other.eval()
            torch.testing.assert_close(other(x), want, rtol=0, atol=0, msg=how)
            assert other.sls_state == model.sls_state, how
    # no classes made at run time: every class in the model is importable by its name
    for mod in m.modules():
        t = type(mod)
        found = __import__(t.__module__, fromlist=[t.__qualname__])
        assert getattr(found, t.__qualname__) is t


def test_registry_errors_and_register():
    with pytest.raises(ValueError, match="supported layouts: .*model.blocks"):
        family_of(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(TypeError):
        register(object())
    with pytest.raises(ValueError, match="already registered"):
        register(type(FAMILIES[0])())


def test_readme_support_table_is_generated_from_the_registry():
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- support-table:start -->\n(.*?)\n<!-- support-table:end -->", readme, re.S)
    assert m, "README.md lacks the support-table markers"
    assert m.group(1).strip() == support_table().strip(), (
        "README support table is out of date; paste sls_fast.models.families.support_table()")


def test_no_family_branches_outside_families():
    """Pipeline code dispatches to the family object; it never compares family names."""
    pattern = re.compile(r"family\s*(==|!=|in\s*\()|\.name\s*(==|!=)\s*['\"](vit|swin|efficientnet|"
                         r"convnext|resnet)['\"]")
    offenders = []
    for path in (ROOT / "sls_fast").rglob("*.py"):
        if "families" in path.parts:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
