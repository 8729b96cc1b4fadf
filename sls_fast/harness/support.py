"""Which architectures sls_fast supports, found by running them: the zoo.

:data:`ZOO` lists tiny configurations of popular timm and transformers architectures (random
weights, small images; each builds in well under a second). :func:`check_architecture` takes
one through every step a user's model meets:

* ``detect``: its family and blocks, every block's layout probed;
* ``features``: one-pass features of every block (:func:`sls_fast.extract_features`), equal to
  each block's output pooled as probed;
* ``score``: t-SNE + silhouette of every layer (:func:`sls_fast.score_features`);
* ``cut``: truncation to about half the blocks: fewer parameters, logits of the right shape,
  pickle round trip with equal outputs;
* ``convpass`` / ``repadapter`` / ``lora``: adapters equal to the base model at init, then the
  cut, the forward, pickle, and the artifact (only K, the adapters, the head and what the cut
  created) loaded onto a fresh base with equal outputs.

Each step ends "ok", "refused" (a ValueError / TypeError raised by sls_fast's own code, with
its message) or "broken" (anything else: an error inside torch or timm, or a check that failed).
Before the checks, near-constant parameters (norm weights, layer scales, batch-norm statistics)
are randomised, so that blocks initialised to do nothing (SwinV2's zero norms, DeiT III's 1e-6
layer scales) cannot hide a bug. :func:`support_matrix` renders the README's table from the
results; the zoo test (``tests/integration/test_zoo.py``) keeps the README equal to it, and
``benchmarks/gpu_families.py`` runs the same list on CUDA.
"""
from __future__ import annotations

import copy
import io
import os
import pickle
import tempfile
import traceback
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn

__all__ = ["ZOO", "STEPS", "Outcome", "build", "check_architecture", "support_matrix",
           "randomise_near_constant"]

STEPS = ("detect", "features", "score", "cut", "convpass", "repadapter", "lora")

# label -> (source, name, options, image size). timm: timm.create_model(name, **options);
# timm-class: the timm model class ``name`` itself (for models whose registered names fix the
# sizes), options naming classes as "timm.models.<module>.<Class>" strings;
# hf: transformers.<name>(<options["config"]>(**the other options)), built offline.
_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2)
_STAGED = dict(depths=(1, 1, 2, 1))
ZOO: Dict[str, Tuple[str, str, Dict[str, Any], int]] = {
    # plain transformers and MLPs (flat blocks)
    "vit": ("timm", "vit_tiny_patch16_224", _VIT, 32),
    "deit": ("timm", "deit_tiny_patch16_224", _VIT, 32),
    "deit_distilled": ("timm", "deit_tiny_distilled_patch16_224", _VIT, 32),
    "deit3": ("timm", "deit3_small_patch16_224", _VIT, 32),
    "vit_registers": ("timm", "vit_medium_patch16_reg4_gap_256", _VIT, 32),
    "eva02": ("timm", "eva02_tiny_patch14_224", _VIT, 32),
    "eva": ("timm", "eva_giant_patch14_224", dict(_VIT, mlp_ratio=4.0), 32),
    "beit": ("timm", "beit_base_patch16_224", _VIT, 32),
    "beitv2": ("timm", "beitv2_base_patch16_224", _VIT, 32),
    "cait": ("timm", "cait_xxs24_224", dict(_VIT, depth_token_only=2), 32),
    "xcit": ("timm", "xcit_nano_12_p16_224", dict(_VIT, cls_attn_layers=2), 32),
    "mixer": ("timm-class", "timm.models.mlp_mixer.MlpMixer", dict(
        img_size=32, patch_size=8, num_blocks=4, embed_dim=32), 32),
    "resmlp": ("timm-class", "timm.models.mlp_mixer.MlpMixer", dict(
        img_size=32, patch_size=8, num_blocks=4, embed_dim=32, mlp_ratio=4,
        block_layer="timm.models.mlp_mixer.ResBlock", norm_layer="timm.models.mlp_mixer.Affine"), 32),
    "convmixer": ("timm-class", "timm.models.convmixer.ConvMixer", dict(
        dim=32, depth=4, kernel_size=3, patch_size=4), 32),
    # hierarchical transformers
    "swin": ("timm", "swin_tiny_patch4_window7_224",
             dict(img_size=64, embed_dim=24, num_heads=(1, 2, 2, 4), window_size=4, **_STAGED), 64),
    "swinv2": ("timm", "swinv2_tiny_window8_256",
               dict(img_size=64, embed_dim=24, num_heads=(1, 2, 2, 4), window_size=4, **_STAGED), 64),
    "swinv2_cr": ("timm", "swinv2_cr_tiny_224",
                  dict(img_size=64, embed_dim=24, num_heads=(1, 2, 2, 4), window_size=4, **_STAGED), 64),
    "hiera": ("timm", "hiera_tiny_224", dict(img_size=(64, 64), embed_dim=16, num_heads=1,
                                             stages=(1, 1, 2, 1)), 64),
    "pvt_v2": ("timm", "pvt_v2_b0", dict(embed_dims=(24, 48, 72, 96), num_heads=(1, 1, 2, 2),
                                         **_STAGED), 64),
    "twins_pcpvt": ("timm", "twins_pcpvt_small", dict(img_size=64, embed_dims=(24, 48, 72, 96),
                                                      num_heads=(1, 2, 2, 4), **_STAGED), 64),
    "twins_svt": ("timm", "twins_svt_small", dict(img_size=64, embed_dims=(24, 48, 72, 96),
                                                  num_heads=(1, 2, 2, 4), wss=(2, 2, 2, 2),
                                                  **_STAGED), 64),
    "levit": ("timm", "levit_128s", dict(img_size=64, embed_dim=(32, 48, 64), depth=(2, 1, 1),
                                         num_heads=(2, 2, 2), key_dim=8), 64),
    "levit_conv": ("timm", "levit_conv_128s", dict(img_size=64, embed_dim=(32, 48, 64),
                                                   depth=(2, 1, 1), num_heads=(2, 2, 2),
                                                   key_dim=8), 64),
    "maxvit": ("timm", "maxvit_rmlp_pico_rw_256", dict(img_size=64, embed_dim=(24, 48, 72, 96),
                                                       depths=(1, 2, 1, 1), stem_width=(8, 16),
                                                       transformer_dim_head=8), 64),
    "coatnet": ("timm", "coatnet_nano_rw_224", dict(img_size=64, embed_dim=(24, 48, 72, 96),
                                                    stem_width=(8, 16), transformer_dim_head=8,
                                                    **_STAGED), 64),
    "davit": ("timm", "davit_tiny", dict(embed_dims=(24, 48, 72, 96), num_heads=(1, 2, 3, 4),
                                         window_size=2, **_STAGED), 64),
    "focalnet": ("timm-class", "timm.models.focalnet.FocalNet", dict(embed_dim=24, **_STAGED), 64),
    "tiny_vit": ("timm", "tiny_vit_5m_224", dict(embed_dims=(24, 48, 72, 96),
                                                 num_heads=(1, 2, 3, 4), window_sizes=(2, 2, 2, 2),
                                                 depths=(1, 2, 1, 1)), 64),
    "nextvit": ("timm", "nextvit_small", dict(depths=(1, 1, 5, 1), stem_chs=(16, 16, 16)), 64),
    "volo": ("timm-class", "timm.models.volo.VOLO", dict(
        img_size=64, layers=(1, 1, 2, 1), embed_dims=(32, 64, 64, 64), num_heads=(2, 2, 2, 2)), 64),
    "gcvit": ("timm-class", "timm.models.gcvit.GlobalContextVit", dict(
        img_size=64, embed_dim=24, num_heads=(1, 2, 2, 4), **_STAGED), 64),
    "nest": ("timm-class", "timm.models.nest.Nest", dict(
        img_size=32, patch_size=4, embed_dims=(24, 48, 96), depths=(1, 1, 2), num_heads=(1, 2, 2)),
        32),
    "visformer": ("timm", "visformer_tiny", dict(img_size=32, init_channels=8, embed_dim=32,
                                                 depth=(1, 2, 1), num_heads=2), 32),
    "efficientformer": ("timm", "efficientformer_l1", dict(depths=(1, 1, 1, 2),
                                                           embed_dims=(24, 48, 72, 96),
                                                           num_vit=1), 224),
    "efficientformerv2": ("timm", "efficientformerv2_s0", dict(img_size=64, depths=(1, 1, 2, 2),
                                                               embed_dims=(24, 48, 72, 96),
                                                               num_vit=1), 64),
    "efficientvit": ("timm", "efficientvit_b0", dict(widths=(8, 24, 40, 56, 72),
                                                     depths=(1, 1, 1, 2, 1), head_dim=8,
                                                     head_widths=(64, 80)), 64),
    "efficientvit_msra": ("timm", "efficientvit_m0", dict(img_size=64, embed_dim=(24, 48, 72),
                                                          depth=(1, 2, 1), num_heads=(2, 2, 2),
                                                          window_size=(2, 2, 2),
                                                          key_dim=(8, 8, 8)), 64),
    "mobilevit": ("timm", "mobilevit_xxs", {}, 64),
    "mobilevitv2": ("timm", "mobilevitv2_050", {}, 64),
    # MetaFormer family
    "caformer": ("timm-class", "timm.models.metaformer.MetaFormer", dict(
        dims=(24, 48, 96, 128), token_mixers=["timm.models.metaformer.SepConv"] * 2
        + ["timm.models.metaformer.Attention"] * 2,
        norm_layers=["timm.models.metaformer.LayerNorm2dNoBias"] * 2
        + ["timm.models.metaformer.LayerNormNoBias"] * 2, **_STAGED), 64),
    "convformer": ("timm-class", "timm.models.metaformer.MetaFormer", dict(
        dims=(24, 48, 96, 128), token_mixers="timm.models.metaformer.SepConv",
        norm_layers="timm.models.metaformer.LayerNorm2dNoBias", **_STAGED), 64),
    "poolformer": ("timm-class", "timm.models.metaformer.MetaFormer", dict(
        dims=(24, 48, 96, 128), downsample_norm=None, mlp_bias=True,
        norm_layers="timm.models.metaformer.GroupNorm1", layer_scale_init_values=1e-5,
        res_scale_init_values=None, use_mlp_head=False, **_STAGED), 64),
    "poolformerv2": ("timm-class", "timm.models.metaformer.MetaFormer", dict(
        dims=(24, 48, 96, 128), norm_layers="timm.models.metaformer.GroupNorm1NoBias",
        use_mlp_head=False, **_STAGED), 64),
    "mambaout": ("timm", "mambaout_femto", dict(dims=(24, 48, 72, 96), **_STAGED), 64),
    "inception_next": ("timm", "inception_next_atto", dict(dims=(24, 48, 72, 96), **_STAGED), 64),
    "edgenext": ("timm", "edgenext_xx_small", dict(dims=(24, 48, 72, 96), heads=(2, 2, 2, 2),
                                                   **_STAGED), 64),
    # convolutional
    "convnext": ("timm", "convnext_atto", dict(dims=(24, 48, 72, 96), **_STAGED), 32),
    "fastvit": ("timm", "fastvit_t8", dict(layers=(1, 1, 2, 1), embed_dims=(8, 16, 32, 64)), 64),
    "fastvit_sa": ("timm", "fastvit_sa12", dict(layers=(1, 1, 2, 1), embed_dims=(8, 16, 32, 64)),
                   64),
    "repvit": ("timm", "repvit_m0_9", dict(embed_dim=(24, 48, 72, 96), depth=(1, 1, 2, 1)), 64),
    "hgnet": ("timm", "hgnetv2_b0", {}, 32),
    "resnet": ("timm", "resnet18", {}, 64),
    "resnet50": ("timm", "resnet50", dict(layers=(1, 1, 2, 1), channels=(24, 48, 96, 192),
                                          stem_width=16), 32),
    "regnet": ("timm", "regnetx_002", {}, 32),
    "rexnet": ("timm", "rexnet_100", dict(width_mult=0.5, depth_mult=0.5), 48),
    "mobilenetv3": ("timm", "mobilenetv3_small_050", {}, 48),
    "mobilenetv4": ("timm", "mobilenetv4_conv_small_035", {}, 48),
    "efficientnet_lite": ("timm", "efficientnet_lite0", {}, 48),
    "efficientnet": ("timm", "efficientnet_b0", {}, 48),
    "ghostnet": ("timm", "ghostnet_050", {}, 64),
    "dla": ("timm", "dla46_c", {}, 32),
    "densenet": ("timm", "densenet121", dict(growth_rate=8, block_config=(2, 2, 2, 2)), 48),
    # transformers
    "hf_vit": ("hf", "ViTForImageClassification", dict(
        config="ViTConfig", hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
        intermediate_size=64, image_size=32, patch_size=8, num_labels=10), 32),
    "hf_deit": ("hf", "DeiTForImageClassification", dict(
        config="DeiTConfig", hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
        intermediate_size=64, image_size=32, patch_size=8, num_labels=10), 32),
    "hf_dinov2": ("hf", "Dinov2ForImageClassification", dict(
        config="Dinov2Config", hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
        mlp_ratio=2, image_size=32, patch_size=8, num_labels=10), 32),
    "hf_dinov2_registers": ("hf", "Dinov2WithRegistersForImageClassification", dict(
        config="Dinov2WithRegistersConfig", hidden_size=32, num_hidden_layers=4,
        num_attention_heads=2, mlp_ratio=2, image_size=32, patch_size=8, num_register_tokens=4,
        num_labels=10), 32),
    "hf_clip": ("hf", "CLIPForImageClassification", dict(
        config="CLIPConfig", vision_config=dict( hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
        intermediate_size=64, image_size=32, patch_size=8), num_labels=10), 32),
    "hf_swin": ("hf", "SwinForImageClassification", dict(
        config="SwinConfig", image_size=64, patch_size=4, embed_dim=24, depths=[1, 1, 2, 1],
        num_heads=[1, 2, 2, 4], window_size=2, num_labels=10), 64),
    "hf_convnext": ("hf", "ConvNextForImageClassification", dict(
        config="ConvNextConfig", hidden_sizes=[24, 48, 72, 96], depths=[1, 1, 2, 1],
        num_labels=10), 32),
}


@dataclass(frozen=True)
class Outcome:
    """One step's result: "ok", "refused" (sls_fast's own clear error) or "broken"."""

    status: str
    message: str = ""

    def cell(self) -> str:
        return {"ok": "ok", "refused": "refused", "broken": "**broken**"}[self.status]


def build(label: str) -> Tuple[nn.Module, int]:
    """The zoo's model ``label`` (random weights, eval mode) and its image size."""
    source, name, options, size = ZOO[label]
    torch.manual_seed(0)
    if source == "timm":
        import timm

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = timm.create_model(name, pretrained=False, **options)
    elif source == "timm-class":
        model = _resolve(name)(**{k: _resolve(v) for k, v in options.items()})
    else:
        import transformers

        if not hasattr(transformers, name) or not hasattr(transformers, options["config"]):
            raise ImportError(f"transformers {transformers.__version__} has no {name}")
        config_class = getattr(transformers, options["config"])
        model = getattr(transformers, name)(config_class(**{k: v for k, v in options.items()
                                                             if k != "config"}))
    return model.eval(), size


def _resolve(value: Any) -> Any:
    """A "timm.models.<module>.<Name>" string as the object it names (lists: each item)."""
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(v) for v in value)
    if isinstance(value, str) and value.startswith("timm.models."):
        import importlib

        module, _, attr = value.rpartition(".")
        return getattr(importlib.import_module(module), attr)
    return value


@torch.no_grad()
def randomise_near_constant(model: nn.Module, seed: int = 0) -> None:
    """Norm weights and biases, layer scales and batch-norm statistics drawn at random (in
    place), so no block starts as the identity."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.ndim != 1:
            continue
        leaf = name.rsplit(".", 1)[-1]
        noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
        if leaf == "bias" or "bias" in leaf:
            p.copy_(0.1 * noise)
        else:
            p.copy_(1.0 + 0.3 * noise)
    for m in model.modules():
        var, mean = getattr(m, "running_var", None), getattr(m, "running_mean", None)
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and var is not None and mean is not None:
            var.copy_(torch.rand(var.shape, generator=g) + 0.5)
            mean.copy_(0.1 * torch.randn(mean.shape, generator=g))


def _sls_raised(exc: BaseException) -> bool:
    """True when ``exc`` is a ValueError / TypeError raised by sls_fast's own code."""
    if not isinstance(exc, (ValueError, TypeError)):
        return False
    frames = traceback.extract_tb(exc.__traceback__)
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(pkg + os.sep)


def _run(step: Callable[[], Optional[str]]) -> Outcome:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            note = step()
    except Exception as exc:  # noqa: BLE001 - the outcome records it
        status = "refused" if _sls_raised(exc) else "broken"
        return Outcome(status, f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}")
    return Outcome("ok", note or "")


def _close(a: torch.Tensor, b: torch.Tensor, what: str, tol: float = 1e-4) -> None:
    if a.shape != b.shape:
        raise AssertionError(f"{what}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
    err = (a.float() - b.float()).abs().max().item()
    scale = max(1.0, b.float().abs().max().item())
    if not err <= tol * scale:
        raise AssertionError(f"{what}: outputs differ by {err:.3g}")


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from sls_fast.common.utils import logits_of
    from sls_fast.models.families.probe import first_tensor

    with torch.no_grad():
        out = first_tensor(logits_of(model(x)))
    assert out is not None
    return out


def check_architecture(label: str, *, device: str = "cpu", images: int = 24,
                       classes: int = 3) -> Dict[str, Outcome]:
    """Run the zoo's model ``label`` through every step of :data:`STEPS`."""
    from sls_fast.io.artifacts import load_pruned, save_pruned
    from sls_fast.method.extract import extract_features
    from sls_fast.method.score import score_features
    from sls_fast.models.adapters import add_adapters
    from sls_fast.models.families import family_of
    from sls_fast.models.prune import truncate

    base, size = build(label)
    randomise_near_constant(base)
    base.to(device)
    g = torch.Generator().manual_seed(1)
    x_all = torch.randn(images, 3, size, size, generator=g).to(device)
    y_all = torch.arange(images) % classes
    x = x_all[:2]
    results: Dict[str, Outcome] = {}
    state: Dict[str, Any] = {}

    def detect() -> str:
        fam = family_of(base)
        state["probes"] = fam.probe(base, x)
        state["L"] = len(state["probes"])
        state["K"] = max(1, state["L"] // 2)
        return f"{fam.name}, {state['L']} blocks"

    def features() -> None:
        from torch.utils.data import TensorDataset

        lf = extract_features(base, TensorDataset(x_all.cpu(), y_all), progress=False,
                              batch_size=8, device=device)
        widths = [p.width for p in state["probes"]]
        if list(lf.widths) != widths:
            raise AssertionError(f"feature widths {lf.widths} differ from the probed {widths}")
        feats = lf.features if lf.stacked else None
        first = (feats[0] if feats is not None else lf.features[0]).float()
        if not torch.isfinite(first).all():
            raise AssertionError("non-finite features")
        state["features"] = lf

    def score() -> None:
        score_features(state["features"], perplexity=5, max_iter=250, progress=False,
                       tsne_backend="auto")

    def cut() -> None:
        ref = copy.deepcopy(base)
        p = truncate(ref, state["K"], num_classes=5, inplace=True).eval()
        _check_cut(base, p, x, state["K"])

    def adapted(kind: str) -> Callable[[], Optional[str]]:
        def step() -> None:
            m = copy.deepcopy(base)
            add_adapters(m, kind, dim=4)
            m.eval()
            _close(_logits(m, x), _logits(base, x), f"{kind} at init vs the base model")
            p = truncate(m, state["K"], num_classes=5, inplace=True).eval()
            _check_cut(base, p, x, state["K"])
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "task.safetensors")
                save_pruned(path, p, state["K"])
                q = load_pruned(path, copy.deepcopy(base)).eval()
                _close(_logits(q, x), _logits(p, x), f"{kind} artifact reloaded")
        return step

    steps: Dict[str, Callable[[], Optional[str]]] = dict(detect=detect, features=features, score=score,
                                                cut=cut, convpass=adapted("convpass"),
                                                repadapter=adapted("repadapter"),
                                                lora=adapted("lora"))
    for name in STEPS:
        if results and results.get("detect", Outcome("ok")).status != "ok":
            results[name] = Outcome("refused", "not detected")
            continue
        if name == "score" and results.get("features", Outcome("ok")).status != "ok":
            results[name] = Outcome("refused", "no features")
            continue
        results[name] = _run(steps[name])
    return results


def _check_cut(base: nn.Module, p: nn.Module, x: torch.Tensor, depth: int) -> None:
    from sls_fast.models.families import find_blocks

    if len(find_blocks(p)) != depth:
        raise AssertionError(f"the cut model has {len(find_blocks(p))} blocks, not {depth}")
    n_base = sum(t.numel() for t in base.parameters())
    n_cut = sum(t.numel() for t in p.parameters())
    if not n_cut < n_base:
        raise AssertionError(f"the cut did not drop parameters ({n_cut} >= {n_base})")
    y = _logits(p, x)
    if tuple(y.shape) != (x.shape[0], 5):
        raise AssertionError(f"the cut model's logits are {tuple(y.shape)}, not {(x.shape[0], 5)}")
    buf = io.BytesIO()
    torch.save(p, buf)
    buf.seek(0)
    again = pickle.loads(pickle.dumps(p)).eval()
    _close(_logits(again, x), y, "pickle round trip")


def support_matrix(results: Mapping[str, Mapping[str, Outcome]]) -> str:
    """The README's zoo table (Markdown): one row per architecture, one column per step, and
    the family that took it."""
    head = "| architecture | model | family | " + " | ".join(STEPS) + " |"
    rows = [head, "|" + "---|" * (len(STEPS) + 3)]
    for label, res in results.items():
        source, name, _, _ = ZOO[label]
        name = name.rpartition(".")[2] if source == "timm-class" else name
        source = "timm" if source == "timm-class" else source
        detected = res["detect"]
        fam_name = detected.message.split(",")[0] if detected.status == "ok" else "-"
        cells = " | ".join(res[s].cell() for s in STEPS)
        rows.append(f"| {label} | `{name}` ({source}) | {fam_name} | {cells} |")
    return "\n".join(rows)
