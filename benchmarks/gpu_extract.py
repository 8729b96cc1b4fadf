"""gpu_check section: per-layer feature extraction on CUDA.

1. Correctness: ViT-tiny, Swin-tiny, EfficientNet-Lite0 (small images, random weights) extracted
   on CUDA (CuPy buffers when CuPy imports, else torch CUDA tensors) against the CPU
   hook-per-block reference, float32 with TF32 off; then bf16 autocast against the same
   reference with a loose tolerance; the memory refusal (max_bytes).
2. Timing: ViT-B/16 (random weights), 1,000 random 224x224 images resident on the GPU, bf16
   autocast, float32 CuPy buffers: all 12 layers in one pass vs one plain forward vs the
   reference's per-layer re-extraction (12 full passes), same data, same batching.

Called by benchmarks/gpu_check.py as ``run(report, mode)`` (a dry run: the CPU, ViT-tiny at
32 px instead of ViT-B/16).
"""
from __future__ import annotations


import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

SECTION = "extract"


def _time_ms(fn, *, warmup=1, iters=3):
    from utils import cuda_time_ms  # this file's directory is on sys.path (gpu_check.py)

    return cuda_time_ms(fn, warmup=warmup, iters=iters)


class _GpuBatches(Dataset):
    """Images already on the GPU; ``__getitems__`` slices a whole batch (no per-item copies)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def __getitems__(self, idx):
        idx = torch.as_tensor(idx, device=self.x.device)
        return [(self.x[idx], self.y[idx])]


def _first(batch):
    return batch[0]


def _reference(model, x, batch):
    """CPU, float32: hook every block, full forward, pool by hand."""
    from sls_fast.models.families import family_of, find_blocks
    from sls_fast.method.extract import pool_output

    layouts = [p.layout for p in family_of(model).probe(model)]  # the probed block layouts
    pool = "cls" if getattr(model, "cls_token", None) is not None else "mean"
    npt = getattr(model, "num_prefix_tokens", 0)
    blocks = find_blocks(model)
    outs = [[] for _ in blocks]
    hooks = [b.module.register_forward_hook(
        lambda m, i, o, k=k: outs[k].append(
            pool_output(o, pool, layout=layouts[k], num_prefix_tokens=npt).float()))
        for k, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            for s in range(0, x.shape[0], batch):
                model(x[s:s + batch])
    finally:
        for h in hooks:
            h.remove()
    return [torch.cat(o) for o in outs]


def _as_torch_list(lf):
    f = lf.to_torch()
    return [f[i].float().cpu() for i in range(len(f))]


def check_correctness(report, mode):
    import timm

    from sls_fast.method.extract import extract_features

    cases = [("vit_tiny_patch16_224", dict(img_size=32), 32),
             ("swin_tiny_patch4_window7_224", dict(img_size=32, window_size=2), 32),
             ("efficientnet_lite0", {}, 64)]
    try:
        import cupy  # noqa: F401

        lib = "cupy" if mode.device == "cuda" else "torch"
    except Exception:  # noqa: BLE001
        lib = "torch"
    n, batch = mode.pick((40, 16), (12, 5), (7, 3))
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    for name, kw, size in cases:
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, **kw).eval()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, 3, size, size, generator=g)
        y = torch.randperm(n, generator=g)
        ref = _reference(model, x, batch)
        scale = max(r.abs().max().item() for r in ref)
        model.to(mode.device)
        try:
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            lf = extract_features(model, TensorDataset(x, y), batch_size=batch, progress=False)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        got_lib = type(lf.features if lf.stacked else lf.features[0]).__module__.split(".")[0]
        got = _as_torch_list(lf)
        err = max((a - b).abs().max().item() for a, b in zip(got, ref)) / scale
        labels_ok = torch.equal(torch.as_tensor(lf.to_numpy().labels), y)
        report(SECTION, f"{name} fp32 vs CPU hooks (rel)", ok=err < 1e-4 and labels_ok and got_lib == lib,
               max_err=err, note=f"buffers={got_lib}, L={len(lf)}, stacked={lf.stacked}, labels ok={labels_ok}")
        lf = extract_features(model, TensorDataset(x, y), batch_size=batch, progress=False,
                              amp="bf16", device=mode.device)
        err = max((a - b).abs().max().item() for a, b in zip(_as_torch_list(lf), ref)) / scale
        report(SECTION, f"{name} bf16 autocast vs CPU hooks (rel)", ok=err < 0.1, max_err=err)
        model.cpu()
        del model
    # memory refusal before any allocation
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32)
    model = model.to(mode.device).eval()
    try:
        extract_features(model, TensorDataset(torch.randn(4, 3, 32, 32), torch.zeros(4)), max_bytes=100,
                         progress=False)
        report(SECTION, "max_bytes refusal", ok=False, note="no error raised")
    except ValueError as exc:
        report(SECTION, "max_bytes refusal", ok="max_bytes" in str(exc))


def time_vit_b16(report, mode):
    import timm

    from sls_fast.models.families import find_blocks
    from sls_fast.method.extract import extract_features, pool_output

    n = mode.pick(1000, 200, 10)
    batch = mode.pick(128, 128, 4)
    name, size = ("vit_tiny_patch16_224", 32) if mode.dry else ("vit_base_patch16_224", 224)
    dtype = torch.bfloat16
    with torch.device(mode.device):
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, img_size=size).eval()
        x = torch.randn(n, 3, size, size)
        y = torch.randint(0, 10, (n,))
    loader = DataLoader(_GpuBatches(x, y), batch_size=batch, collate_fn=_first)
    L = len(find_blocks(model))

    def plain():
        with torch.inference_mode(), torch.autocast(mode.device, dtype=dtype):
            for xb, _ in loader:
                model(xb)

    def extract():
        return extract_features(model, loader, amp="bf16", progress=False, device=mode.device)

    def per_layer():
        for blk in find_blocks(model):
            feats = []
            h = blk.module.register_forward_hook(
                lambda m, i, o: feats.append(pool_output(o, "cls").float()))
            try:
                plain()
            finally:
                h.remove()
            torch.cat(feats)

    lf = extract()
    lib = type(lf.features).__module__.split(".")[0]
    ok_shape = tuple(lf.features.shape) == (L, n, model.embed_dim)
    t_plain = _time_ms(plain, warmup=2, iters=5)
    t_ext = _time_ms(extract, warmup=2, iters=5)
    t_per = _time_ms(per_layer, warmup=1, iters=2 if mode.quick else 3)
    if mode.dry:  # host timings of tiny CPU runs: too noisy to judge, the path ran
        r1, r2 = t_ext / t_plain, t_per / t_ext
        report(SECTION, f"{name} extract {L} layers (dry run)", ok=ok_shape, ms=t_ext,
               note=f"extract/plain = {r1:.2f}, per-layer/extract = {r2:.1f}x (not judged)")
        return
    r1, r2 = t_ext / t_plain, t_per / t_ext
    report(SECTION, f"ViT-B/16 plain forward bf16, {n} imgs", ms=t_plain, note=f"{n / t_plain * 1e3:.0f} img/s")
    report(SECTION, f"ViT-B/16 extract {L} layers bf16 -> {lib} fp32", ok=ok_shape and r1 <= 1.15, ms=t_ext,
           note=f"extract/plain = {r1:.3f} (<= 1.15)")
    report(SECTION, f"ViT-B/16 per-layer re-extraction ({L} passes)", ok=r2 >= 0.8 * L, ms=t_per,
           note=f"per-layer/extract = {r2:.1f}x (>= {0.8 * L:.1f}x)")
    del x, y, lf


def run(report, mode):
    check_correctness(report, mode)
    time_vit_b16(report, mode)
    try:  # hand CuPy's pooled blocks back before the next section
        import cupy

        cupy.get_default_memory_pool().free_all_blocks()
    except Exception:  # noqa: BLE001 - no CuPy
        pass


if __name__ == "__main__":  # standalone: python benchmarks/gpu_extract.py [--quick]
    import sys

    def _print(section, name, *, ok=None, max_err=None, ms=None, note=""):
        print(section, name, ok, max_err, ms, note)

    from gpu_check import Mode

    run(_print, Mode(quick="--quick" in sys.argv))
