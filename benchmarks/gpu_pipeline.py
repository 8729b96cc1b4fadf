"""gpu_check section: the whole scoring pipeline and the public throughput API on CUDA.

End-to-end ``score_layers`` of ViT-B/16 (random weights) on 1,000 random images (extract in
bf16 -> batched Triton t-SNE -> Triton metrics -> depth), with its stage timings; then
``compare_throughput`` of ViT-B/16 full vs truncated to 6 blocks, batch 64, bf16, compiled.
A dry run: the CPU, ViT-tiny at 32 px, 60 images, eager."""
import time

import torch
from torch.utils.data import TensorDataset

SECTION = "pipeline"


def run(report, mode):
    import timm

    import sls_fast
    from utils import synchronize

    dev = mode.device
    n = mode.pick(1000, 200, 60)
    name, size = ("vit_tiny_patch16_224", 32) if mode.dry else ("vit_base_patch16_224", 224)
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, img_size=size).to(dev).eval()
    data = TensorDataset(torch.randn(n, 3, size, size), torch.arange(n) % 10)
    backend = "triton" if dev == "cuda" else "native"  # the CPU's own backend in a dry run
    if not mode.dry:  # warm-up: Triton compilation, cuDNN autotuning
        sls_fast.score_layers(model, TensorDataset(data.tensors[0][:64], data.tensors[1][:64]),
                              device=dev, amp="bf16", progress=False, max_iter=250,
                              perplexity=10.0)
    synchronize()
    t0 = time.perf_counter()
    rep = sls_fast.score_layers(model, data, device=dev, amp="bf16", progress=False,
                                batch_size=128, tsne_backend=backend,
                                **(dict(max_iter=250, perplexity=10.0) if mode.dry else {}))
    synchronize()
    total = (time.perf_counter() - t0) * 1e3
    ok = len(rep.scores["silhouette"]) == 12 and 1 <= rep.depth <= 12
    stages = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in rep.timings.items())
    report(SECTION, f"score_layers {name} random, {n} random images, bf16", ok=ok, ms=total,
           note=stages)

    pruned = sls_fast.truncate(model, 6)
    mname, bs = name, mode.pick(64, 64, 4)
    res = sls_fast.compare_throughput(model, pruned, batch_size=bs, amp="bf16",
                                      compile=not mode.dry, iters=mode.pick(60, 30, 3),
                                      warmup=mode.pick(10, 10, 1), device=dev)
    for which in ("full", "pruned"):
        r = res[which]
        report(SECTION, f"compare_throughput {mname} {which} bf16 b{bs}",
               ms=r["latency_ms"], note=f"{r['images_per_s']:.0f} img/s")
    # a dry run's tiny CPU timings are too noisy to judge
    report(SECTION, "compare_throughput speed-up 12 -> 6 blocks",
           ok=True if mode.dry else res["speedup"] > 1.0,
           note=f"{res['speedup']:.2f}x")
