"""LoRA (peft) on ViT-B/16 and the transformers families at base size: artifact sizes and
equality errors.

Run: python benchmarks/bench_lora_storage.py [--depth K] [--rank R], or under pytest
(``pytest benchmarks/bench_lora_storage.py --benchmark-only``: the timm part, checked and recorded
in ``extra_info``). Random weights (nothing is downloaded), float32, CPU by default. Prints, for timm ViT-B/16 with LoRA on qkv/proj/fc1/fc2 of
every block, cut to K blocks:

* bytes of the sls_fast artifact (index + kept blocks' LoRA + head), of peft's folder export,
  of the full adapted model and of a structurally pruned copy (the cut model, LoRA merged);
* max |difference| of outputs: artifact reloaded on a fresh base, peft's own loader, peft merge;

and for transformers ViT-B/16, DINOv2-base and CLIP ViT-B/16 (vision) classifiers: the largest
difference between sls_fast's one-pass layer features and ``hidden_states[i + 1][:, 0]``, between
the model cut to K and its head rule on the full model's ``hidden_states[K]``, and of the
RepAdapter merge.
"""
import argparse
import copy
import json
import os
import tempfile

import torch


def _bytes(sd):
    return sum(v.numel() * v.element_size() for v in sd.values())


def _vit(num_classes):
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=num_classes).eval()


def timm_vit(depth, rank, n_img=4, num_classes=10):
    import peft

    import sls_fast

    m = sls_fast.add_adapters(_vit(num_classes), "lora", rank=rank, lora_alpha=2 * rank)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # trained-like LoRA and head
        for p in m.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    p = sls_fast.truncate(m, depth)
    x = torch.randn(n_img, 3, 224, 224, generator=g)
    out = {}
    with tempfile.TemporaryDirectory() as d, torch.no_grad():
        ref = p(x)
        art = os.path.join(d, "task.safetensors")
        sls_fast.save_pruned(art, p, depth)
        q = sls_fast.load_pruned(art, _vit(num_classes))
        out["artifact_reload_max_abs"] = (q(x) - ref).abs().max().item()
        folder = os.path.join(d, "peft")
        sls_fast.save_pruned(folder, p, depth, format="peft")
        r = peft.PeftModel.from_pretrained(sls_fast.truncate(_vit(num_classes), depth), folder).eval()
        out["peft_load_max_abs"] = (r(x) - ref).abs().max().item()
        merged = sls_fast.merge_adapters(copy.deepcopy(p))
        out["merge_max_abs"] = (merged(x) - ref).abs().max().item()
        out["merge_max_rel"] = out["merge_max_abs"] / ref.abs().max().item()
        out["lora_params_after_merge"] = sum(v.numel() for k, v in merged.state_dict().items()
                                             if ".lora_" in k)
        out["artifact_bytes"] = os.path.getsize(art)
        out["peft_folder_bytes"] = sum(os.path.getsize(os.path.join(folder, f))
                                       for f in os.listdir(folder))
        out["full_adapted_model_bytes"] = _bytes(m.state_dict())
        out["full_base_model_bytes"] = _bytes(_vit(num_classes).state_dict())
        out["structurally_pruned_copy_bytes"] = _bytes(merged.state_dict())
    out["artifact_vs_full"] = out["artifact_bytes"] / out["full_base_model_bytes"]
    out["artifact_vs_pruned_copy"] = out["artifact_bytes"] / out["structurally_pruned_copy_bytes"]
    return out


def _hf_models(transformers):
    """Random-weight transformers classifiers of the base shapes (12 layers, width 768, 224 px)
    and the head rule of each: its logits from the full model's hidden_states[K]."""
    vit = transformers.ViTForImageClassification(transformers.ViTConfig(num_labels=10))
    dino = transformers.Dinov2ForImageClassification(
        transformers.Dinov2Config(image_size=224, num_labels=10))  # dinov2-base, 16 x 16 patches
    clip = transformers.CLIPForImageClassification(transformers.CLIPConfig(
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12, image_size=224, patch_size=16),
        num_labels=10))  # CLIP ViT-B/16's vision tower

    def dino_head(m, h):
        h = m.dinov2.layernorm(h)
        return m.classifier(torch.cat([h[:, 0], h[:, 1:].mean(dim=1)], dim=1))

    return {"hf-vit": (vit, lambda m, h: m.classifier(m.vit.layernorm(h)[:, 0])),
            "hf-dinov2": (dino, dino_head),
            "hf-clip": (clip, lambda m, h: m.classifier(h[:, 1:].mean(dim=1)))}


def hf_features(n_img=4, depth=6):
    """Per transformers family: one-pass features against hidden_states[i + 1][:, 0], the cut
    model's logits against the head rule on the full model's hidden_states[K], and the RepAdapter
    merge (max abs differences, float32)."""
    import transformers

    import sls_fast

    torch.manual_seed(0)
    x = torch.randn(n_img, 3, 224, 224)
    data = torch.utils.data.TensorDataset(x, torch.zeros(n_img))
    out = {"transformers": transformers.__version__}
    for name, (m, head) in _hf_models(transformers).items():
        m.eval()
        with torch.no_grad():
            hs = m(x, output_hidden_states=True).hidden_states
            f = sls_fast.extract_features(m, data, progress=False)
            L = f.num_layers
            feat = max((torch.as_tensor(f[i]) - hs[i + 1][:, 0]).abs().max().item()
                       for i in range(L))
            cut = (sls_fast.truncate(m, depth)(x).logits - head(m, hs[depth])).abs().max().item()
            r = sls_fast.add_adapters(m, "repadapter", dim=8, layers=list(range(depth)))
            for n_, p_ in r.named_parameters():
                if ".adapter_" in n_:
                    p_.add_(torch.randn_like(p_) * 0.05)
            p = sls_fast.truncate(r, depth)
            ref = p(x).logits
            merge = (sls_fast.merge_adapters(p)(x).logits - ref).abs().max().item()
        out[name] = {"layers": L, "feature_vs_hidden_states_max_abs": feat,
                     "cut_vs_head_rule_max_abs": cut, "repadapter_merge_max_abs": merge}
    return out


def test_lora_storage_timm_vit(benchmark):
    """ViT-B/16 + LoRA r=8 cut to 6: the artifact reloads, peft loads its export, the merge is
    exact to float32 rounding, and the artifact is a small fraction of the model."""
    pytest = __import__("pytest")
    pytest.importorskip("peft")
    benchmark.group = "LoRA storage: ViT-B/16, r = 8, cut to 6"
    out = benchmark.pedantic(timm_vit, args=(6, 8), rounds=1, iterations=1)
    benchmark.extra_info.update(out)
    assert out["artifact_reload_max_abs"] == 0.0 and out["peft_load_max_abs"] < 1e-4
    assert out["merge_max_rel"] < 1e-4 and out["lora_params_after_merge"] == 0
    assert out["artifact_vs_full"] < 0.05


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--rank", type=int, default=8)
    a = ap.parse_args()
    import peft

    res = {"depth": a.depth, "rank": a.rank, "peft": peft.__version__, "torch": torch.__version__}
    res.update(timm_vit(a.depth, a.rank))
    res.update(hf_features(depth=a.depth))
    print(json.dumps(res, indent=1))
