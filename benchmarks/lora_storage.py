"""LoRA (peft) on ViT-B/16 and a transformers ViT-B: artifact sizes and equality errors.

Run: python benchmarks/lora_storage.py [--depth K] [--rank R]. Random weights (nothing is
downloaded), float32, CPU by default. Prints, for timm ViT-B/16 with LoRA on qkv/proj/fc1/fc2 of
every block, cut to K blocks:

* bytes of the sls_fast artifact (index + kept blocks' LoRA + head), of peft's folder export,
  of the full adapted model and of a structurally pruned copy (the cut model, LoRA merged);
* max |difference| of outputs: artifact reloaded on a fresh base, peft's own loader, peft merge;

and for a transformers ViTForImageClassification with ViT-B's shape: the largest difference
between sls_fast's one-pass layer features and ``hidden_states[i + 1][:, 0]``.
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

    m = sls_fast.add_adapters(_vit(num_classes), "lora", rank=rank, alpha=2 * rank)
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


def hf_vit_features(n_img=4):
    import transformers

    import sls_fast

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(num_labels=10)  # ViT-B/16 at 224 (random weights)
    m = transformers.ViTForImageClassification(cfg).eval()
    x = torch.randn(n_img, 3, 224, 224)
    with torch.no_grad():
        hs = m(x, output_hidden_states=True).hidden_states
    f = sls_fast.extract_features(m, torch.utils.data.TensorDataset(x, torch.zeros(n_img)),
                                  progress=False)
    err = max((torch.as_tensor(f[i]) - hs[i + 1][:, 0]).abs().max().item() for i in range(12))
    return {"hf_feature_vs_hidden_states_max_abs": err, "layers": f.num_layers,
            "transformers": transformers.__version__}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--rank", type=int, default=8)
    a = ap.parse_args()
    import peft

    res = {"depth": a.depth, "rank": a.rank, "peft": peft.__version__, "torch": torch.__version__}
    res.update(timm_vit(a.depth, a.rank))
    res.update(hf_vit_features())
    print(json.dumps(res, indent=1))
