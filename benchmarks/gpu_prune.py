"""gpu_check section: truncation, adapters and torch.compile on CUDA.

ViT-B/16 (random weights, 224 px) truncated to 6 of 12 blocks: the compiled (``torch.compile``)
pruned model must match eager on CUDA, with and without Convpass adapters; a RepAdapter merge must
be exact on CUDA; timings of full vs pruned, eager vs compiled. Called by benchmarks/gpu_check.py
as ``run(report, mode)`` (a dry run: the CPU, ViT-tiny at 32 px, no compilation).
"""
from __future__ import annotations

import time

from utils import cuda_time_ms, rel_err, synchronize

SECTION = "prune"


def _randomize_adapters(model, std=0.02):
    import torch

    from sls_fast.models.adapters import adapter_modules

    with torch.no_grad():
        for a in adapter_modules(model).values():
            for p in a.parameters():
                p.normal_(0, std)


def run(report, mode):
    import timm
    import torch

    from sls_fast.models.adapters import add_adapters, merge_adapters
    from sls_fast.models.prune import truncate

    dev = torch.device(mode.device)
    # a dry run skips torch.compile (minutes on a 2-core CPU); eager stands in for it
    maybe_compile = (lambda m: m) if mode.dry else torch.compile
    prev_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # exactness checks in true fp32
    torch.backends.cudnn.allow_tf32 = False
    try:
        torch.manual_seed(0)
        bs = mode.pick(32, 4, 2)
        name, size = ("vit_tiny_patch16_224", 32) if mode.dry else ("vit_base_patch16_224", 224)
        kw = dict(pretrained=False, num_classes=10, img_size=size)
        full = timm.create_model(name, **kw).to(dev).eval()
        x = torch.randn(bs, 3, size, size, device=dev)
        n_full = sum(p.numel() for p in full.parameters())

        # 1. plain truncation 12 -> 6, compiled vs eager
        pruned = truncate(full, 6).eval()
        n_pruned = sum(p.numel() for p in pruned.parameters())
        report(SECTION, f"{name} truncate 12->6 blocks", ok=len(pruned.blocks) == 6 and n_pruned < n_full,
               note=f"params {n_full / 1e6:.1f}M -> {n_pruned / 1e6:.1f}M")
        with torch.no_grad():
            eager = pruned(x)
            t0 = time.time()
            compiled = maybe_compile(pruned)
            out = compiled(x)
            synchronize()
            compile_s = time.time() - t0
        err = rel_err(out, eager)
        report(SECTION, f"pruned {name}/6 compiled vs eager (fp32)", ok=err < 1e-3, max_err=err,
               note=f"compile {compile_s:.0f} s, rel. to max |y|")

        # 2. with Convpass adapters (class-swapped blocks must compile too)
        torch.manual_seed(1)
        adapted = add_adapters(timm.create_model(name, **kw), "convpass",
                               dim=8, scale=1.0).to(dev)
        _randomize_adapters(adapted)
        pa = truncate(adapted, 6).eval()
        with torch.no_grad():
            eager_a = pa(x)
            out_a = maybe_compile(pa)(x)
        err = rel_err(out_a, eager_a)
        report(SECTION, f"pruned {name}/6 + Convpass compiled vs eager", ok=err < 1e-3, max_err=err)

        # 3. RepAdapter merge exact on CUDA
        torch.manual_seed(2)
        rep = add_adapters(timm.create_model(name, **kw), "repadapter").to(dev)
        _randomize_adapters(rep, 0.05)
        rep = truncate(rep, 6).eval()
        with torch.no_grad():
            before = rep(x)
            merge_adapters(rep)
            after = rep(x)
        err = rel_err(after, before)
        n_rep = sum(p.numel() for p in rep.parameters())
        report(SECTION, f"RepAdapter merge ({name}/6) merged vs unmerged", ok=err < 1e-4 and n_rep == n_pruned,
               max_err=err, note=f"params {n_rep / 1e6:.2f}M, pruned base {n_pruned / 1e6:.2f}M")

        # 4. timings (bf16 autocast, the deployment setting), full vs pruned, eager vs compiled
        with torch.no_grad(), torch.autocast(mode.device, dtype=torch.bfloat16):
            ms_full = cuda_time_ms(lambda: full(x))
            ms_pruned = cuda_time_ms(lambda: pruned(x))
            ms_comp = cuda_time_ms(lambda: compiled(x))
        report(SECTION, f"{name} full eager bf16 (batch {bs})", ms=ms_full,
               note=f"{bs / ms_full * 1e3:.0f} img/s")
        report(SECTION, f"{name}/6 pruned eager bf16 (batch {bs})", ms=ms_pruned,
               note=f"{bs / ms_pruned * 1e3:.0f} img/s, x{ms_full / ms_pruned:.2f} vs full")
        report(SECTION, f"{name}/6 pruned compiled bf16 (batch {bs})", ms=ms_comp,
               note=f"{bs / ms_comp * 1e3:.0f} img/s, x{ms_full / ms_comp:.2f} vs full eager")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev_tf32
