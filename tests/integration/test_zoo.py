"""The zoo (sls_fast.harness.support): every architecture through every step, none broken,
features checked against timm's own intermediates and transformers' hidden states, and the
README's support table equal to what this run found."""
import pathlib
import re

import pytest
import torch

from sls_fast.harness.support import (STEPS, ZOO, build, check_architecture,
                                      randomise_near_constant, support_matrix)
from sls_fast.method.extract import extract_features
from sls_fast.models.families import find_family
from sls_fast.models.families.probe import first_tensor

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULTS: dict = {}
TIMM = [k for k, v in ZOO.items() if v[0] != "hf"]
HF = [k for k, v in ZOO.items() if v[0] == "hf"]
# timm takes these intermediates after each stage's norm: they equal a block output put
# through that norm.
AFTER_NORM = {"pvt_v2"}


def test_the_zoo_is_broad():
    assert len(ZOO) >= 40 and len(HF) >= 4
    for label in ("eva02", "beit", "swinv2", "mixer", "regnet", "rexnet", "mobilenetv4", "levit",
                  "pvt_v2", "maxvit", "coatnet", "fastvit", "efficientvit", "caformer",
                  "poolformer", "davit", "mambaout", "focalnet", "hiera", "hf_swin",
                  "hf_convnext", "hf_deit", "hf_dinov2_registers"):
        assert label in ZOO, label


@pytest.mark.slow  # about 45 s for the whole zoo on one thread
@pytest.mark.parametrize("label", list(ZOO))
def test_every_step_is_ok_or_a_clear_refusal(label):
    res = check_architecture(label)
    RESULTS[label] = res
    broken = {s: o.message for s, o in res.items() if o.status == "broken"}
    assert not broken, broken
    assert set(res) == set(STEPS)


@pytest.mark.slow
def test_readme_zoo_table_is_this_runs_result():
    if set(RESULTS) != set(ZOO):
        pytest.skip("needs every architecture's run above (run the whole file)")
    table = support_matrix({k: RESULTS[k] for k in ZOO})
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- zoo-table:start -->\n(.*?)\n<!-- zoo-table:end -->", readme, re.S)
    assert m, "README.md lacks the zoo-table markers"
    assert m.group(1).strip() == table.strip(), (
        "README zoo table is out of date; paste sls_fast.harness.support.support_matrix() of "
        "this run:\n" + table)


def _raw_outputs(model, blocks, x):
    outs = {}
    hooks = [b.module.register_forward_hook(
        lambda m, a, o, i=i: outs.setdefault(i, first_tensor(o).detach().clone()))
        for i, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return [outs[i] for i in range(len(blocks))]


def _as_tokens(t, probe=None):
    """[B, positions, C] of a block output (prefix tokens dropped) or of an NCHW intermediate."""
    if probe is None:
        return t.flatten(2).transpose(1, 2) if t.ndim == 4 else t
    if probe.layout == "tokens":
        return t[:, probe.prefix:]
    if probe.layout == "nchw":
        return t.flatten(2).transpose(1, 2)
    if probe.layout == "nhwc":
        return t.reshape(t.shape[0], -1, t.shape[-1])
    return t[:, None]


def _apply(norm, t):
    try:
        with torch.no_grad():
            return norm(t)
    except Exception:  # noqa: BLE001 - a norm of another width
        return None


def _same(a, b):
    if a is None:
        return False
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("label", TIMM)
def test_features_match_timms_intermediates(label):
    """Each of timm's intermediates that is a raw block output (matched by value) is pooled by
    us, with the probed layout, to the mean of that intermediate over its positions."""
    model, size = build(label)
    fam = find_family(model)
    if fam is None or not hasattr(model, "forward_intermediates"):
        pytest.skip("refused by sls_fast, or no forward_intermediates")
    randomise_near_constant(model)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    blocks = fam.blocks(model)
    probes = fam.probe(model, x)
    raw = [_as_tokens(t, p) for t, p in zip(_raw_outputs(model, blocks, x), probes)]
    with torch.no_grad():
        inter = model.forward_intermediates(x, intermediates_only=True)
    lf = extract_features(model, torch.utils.data.TensorDataset(x, torch.zeros(2)),
                          pool="mean", progress=False, method="hooks")
    norms = [m for n, m in model.named_modules() if n.endswith(".norm")]
    matched = shaped = 0
    for t in inter:
        if isinstance(t, (tuple, list)):  # (spatial, prefix) or one per branch
            t = t[0]
        tok = _as_tokens(t)
        shaped += any(r.shape == tok.shape for r in raw)  # a stem or head conv has no block's
        hits = [i for i, r in enumerate(raw) if _same(r, tok)]
        if not hits and label in AFTER_NORM:  # the block output after its stage's norm
            normed = sum(_same(_apply(n, r), tok) for n in norms for r in raw)
            assert normed >= 1, (label, tuple(t.shape))
            matched += 1
            continue
        if not hits:
            continue  # a stem or head convolution, or taken after a norm: no block's output
        i = hits[-1]
        assert _same(lf.features[i].float(), tok.mean(dim=1).float()), (label, blocks[i].name)
        matched += 1
    assert shaped >= 1, f"{label}: no intermediate has the positions and width of a block"
    assert matched >= 1, f"{label}: no timm intermediate equals any block output"
    if label in AFTER_NORM:
        assert matched == len(inter), (label, matched, len(inter))


@pytest.mark.parametrize("label", HF)
def test_features_match_transformers_hidden_states(label):
    """Each hidden state of a transformers model (after the embeddings) is one block's output:
    our features equal its class token (models with one) or its mean over positions."""
    model, size = build(label)
    fam = find_family(model)
    randomise_near_constant(model)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        states = model(x, output_hidden_states=True).hidden_states[1:]
    lf = extract_features(model, torch.utils.data.TensorDataset(x, torch.zeros(2)),
                          progress=False)
    probes = fam.probe(model, x)
    cls = fam.default_pool(model) == "cls"
    feats = [lf.features[i] for i in range(len(probes))]
    matched = 0
    for h in states:
        want = h[:, 0] if cls else (h.flatten(2).mean(-1) if h.ndim == 4 else h.mean(dim=1))
        if any(_same(f.float(), want.float()) for f in feats):
            matched += 1
    flat = len({p.width for p in probes}) == 1 and probes[0].layout == "tokens" and cls
    assert matched == (len(states) if flat else matched) and matched >= 1, (label, matched)
    if flat:
        assert matched == len(probes)
