"""gpu_check section: the whole scoring pipeline and the public throughput API on CUDA.

End-to-end ``score_layers`` of ViT-B/16 (random weights) on 1,000 random images (extract in
bf16 -> batched Triton t-SNE -> Triton metrics -> depth), with its stage timings; then
``compare_throughput`` of ViT-B/16 full vs truncated to 6 blocks, batch 64, bf16, compiled."""
import time

import torch
from torch.utils.data import TensorDataset

SECTION = "pipeline"


def run(report, quick=False):
    import timm

    import sls_fast

    n = 200 if quick else 1000
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False).cuda().eval()
    data = TensorDataset(torch.randn(n, 3, 224, 224), torch.arange(n) % 10)
    sls_fast.score_layers(model, TensorDataset(data.tensors[0][:64], data.tensors[1][:64]),
                          device="cuda", amp="bf16", progress=False, max_iter=250,
                          perplexity=10.0)  # warm-up: Triton compilation, cuDNN autotuning
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    rep = sls_fast.score_layers(model, data, device="cuda", amp="bf16", progress=False,
                                batch_size=128)
    torch.cuda.synchronize()
    total = (time.perf_counter() - t0) * 1e3
    ok = len(rep.scores["silhouette"]) == 12 and 1 <= rep.depth <= 12
    stages = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in rep.timings.items())
    report(SECTION, f"score_layers ViT-B/16 random, {n} random images, bf16", ok=ok, ms=total,
           note=stages)

    pruned = sls_fast.truncate(model, 6)
    res = sls_fast.compare_throughput(model, pruned, batch_size=64, amp="bf16", compile=True,
                                      iters=30 if quick else 60, warmup=10, device="cuda")
    for name in ("full", "pruned"):
        r = res[name]
        report(SECTION, f"compare_throughput ViT-B/16 {name} bf16 compiled b64",
               ms=r["latency_ms"], note=f"{r['images_per_s']:.0f} img/s")
    report(SECTION, "compare_throughput speed-up 12 -> 6 blocks", ok=res["speedup"] > 1.0,
           note=f"{res['speedup']:.2f}x")
