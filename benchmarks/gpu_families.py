"""One-call CUDA check of the family objects (issue 11): for every family, adapters + truncation
on the GPU, the adapted and cut model after torch.save / pickle, extraction with amp="auto",
throughput with the model given back, finetune leaving the caller's RNG alone, and torch.compile
of the adapted models (ViT: adapted block classes; ResNet: the adapter hook) against eager.

    python benchmarks/gpu_families.py        # about 2-4 minutes on an H100
"""
import copy
import io
import pickle
import time

import timm
import torch
from torch.utils.data import TensorDataset

import sls_fast

FAMILIES = {
    "vit": ("vit_small_patch16_224", {}, 224, 6),
    "swin": ("swin_tiny_patch4_window7_224", {}, 224, 5),
    "efficientnet": ("efficientnet_lite0", {}, 224, 6),
    "convnext": ("convnext_tiny", {}, 224, 6),
    "resnet": ("resnet50", {}, 224, 8),
}
COMPILE = ("vit", "resnet")


def main():
    assert torch.cuda.is_available(), "needs a CUDA device"
    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(dev)}, torch {torch.__version__}, timm {timm.__version__}")
    rows = []
    for fam, (name, kw, size, cut) in FAMILIES.items():
        t0 = time.perf_counter()
        torch.manual_seed(0)
        m = timm.create_model(name, pretrained=False, **kw).to(dev).eval()
        sls_fast.add_adapters(m, "convpass", num_classes=10, scale=0.5).eval()
        with torch.no_grad():
            for n, p in m.named_parameters():
                if ".adapter" in n:
                    p.normal_(0, 0.02)
        p = sls_fast.truncate(m, cut).eval()
        x = torch.randn(10, 3, size, size, device=dev)
        with torch.no_grad():
            ref_full, ref_cut = m(x), p(x)
        # round trips on the GPU
        same = []
        for model, ref in ((m, ref_full), (p, ref_cut)):
            buf = io.BytesIO()
            torch.save(model, buf)
            buf.seek(0)
            for other in (torch.load(buf, weights_only=False), pickle.loads(pickle.dumps(model)),
                          copy.deepcopy(model)):
                with torch.no_grad():
                    same.append(bool(torch.equal(other.eval()(x), ref)))
        # extraction in bf16 autocast vs fp32
        data = TensorDataset(x.cpu(), torch.arange(10) % 2)
        f32 = sls_fast.extract_features(m, data, progress=False)
        bf = sls_fast.extract_features(m, data, progress=False, amp="auto")
        a, b = f32[len(f32) - 1], bf[len(bf) - 1]
        a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
        rel = float((a - b).norm() / a.norm())
        # throughput gives the model back where it was
        p.cpu().train()
        r = sls_fast.measure_throughput(p, batch_size=8, image_size=size, compile=False,
                                        amp="auto", device="cuda", warmup=2, iters=5)
        back = next(p.parameters()).device.type == "cpu" and p.training
        p.to(dev).eval()
        # finetune leaves the caller's RNG state alone
        cpu_state, cuda_state = torch.get_rng_state(), torch.cuda.get_rng_state()
        sls_fast.finetune(p, TensorDataset(x.cpu(), torch.arange(10) % 10), None, epochs=1,
                          batch_size=4, progress=False, head_init="keep")
        rng_ok = torch.equal(torch.get_rng_state(), cpu_state) and torch.equal(
            torch.cuda.get_rng_state(), cuda_state)
        comp = "-"
        if fam in COMPILE:
            c = torch.compile(p.eval())
            with torch.no_grad():
                eager, compiled = p(x), c(x)
            comp = f"{float((eager - compiled).abs().max()):.1e}"
        rows.append((fam, name, all(same), f"{rel:.3f}", f"{r['images_per_s']:.0f}", back, rng_ok,
                     comp, f"{time.perf_counter() - t0:.1f}"))
        print(rows[-1], flush=True)
    print("\nfamily        model                          pickle=  bf16-rel  img/s(cut)  given-back  rng  compile-maxdiff  s")
    for r in rows:
        print("  ".join(str(v) for v in r))
    bad = [r[0] for r in rows if not (r[2] and r[5] and r[6])]
    print("ALL OK" if not bad else f"FAILED: {bad}")


if __name__ == "__main__":
    main()
