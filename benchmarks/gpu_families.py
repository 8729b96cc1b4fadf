"""gpu_check section: the family objects on the device (issue 11). For every family: adapters +
truncation, the adapted and the cut model after torch.save / pickle / deepcopy, extraction with
amp="auto" against fp32, throughput giving the model back where it was, finetune leaving the
caller's RNG alone, and torch.compile of the adapted models (ViT: adapted block classes; ResNet:
the adapter hook) against eager. Called by benchmarks/gpu_check.py as ``run(report, mode)``; a
dry run takes tiny configurations on the CPU and skips torch.compile.

Then the zoo (:func:`zoo`): every architecture of ``sls_fast.harness.support.ZOO`` through
every step on the device (a few in the dry run).

    python benchmarks/gpu_check.py --only gpu_families        # about 2-4 minutes on an H100
"""
import copy
import io
import pickle
import time

SECTION = "families"
# family -> (timm name, options, image size, blocks kept)
FAMILIES = {
    "vit": ("vit_small_patch16_224", {}, 224, 6),
    "swin": ("swin_tiny_patch4_window7_224", {}, 224, 5),
    "efficientnet": ("efficientnet_lite0", {}, 224, 6),
    "convnext": ("convnext_tiny", {}, 224, 6),
    "resnet": ("resnet50", {}, 224, 8),
}
DRY_CUT = {"vit": 2, "swin": 3, "efficientnet": 6, "convnext": 4, "resnet": 3}
COMPILE = ("vit", "resnet")


def run(report, mode):
    import timm
    import torch
    from torch.utils.data import TensorDataset

    import sls_fast

    dev = torch.device(mode.device)
    cuda = dev.type == "cuda"
    from sls_fast.models.zoo import TINY  # the CPU dry run: the unit tests' tiny configurations

    dry = {fam: (*TINY[fam], cut) for fam, cut in DRY_CUT.items()}
    for fam, (name, kw, size, cut) in (dry if mode.dry else FAMILIES).items():
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
        same = []  # round trips on the device
        for model, ref in ((m, ref_full), (p, ref_cut)):
            buf = io.BytesIO()
            torch.save(model, buf)
            buf.seek(0)
            for other in (torch.load(buf, weights_only=False), pickle.loads(pickle.dumps(model)),
                          copy.deepcopy(model)):
                with torch.no_grad():
                    same.append(bool(torch.equal(other.eval()(x), ref)))
        report(SECTION, f"{fam}: save / pickle / deepcopy give equal outputs", ok=all(same),
               note=name)
        data = TensorDataset(x.cpu(), torch.arange(10) % 2)  # extraction: amp vs fp32
        f32 = sls_fast.extract_features(m, data, progress=False, device=dev)
        low = sls_fast.extract_features(m, data, progress=False, device=dev, amp="auto")
        a = torch.as_tensor(f32[len(f32) - 1]).float()
        b = torch.as_tensor(low[len(low) - 1]).float()
        rel = float((a - b).norm() / a.norm())
        report(SECTION, f"{fam}: extraction amp='auto' vs fp32 (last layer)", ok=rel < 0.05,
               max_err=rel)
        p.cpu().train()  # throughput gives the model back where it was
        r = sls_fast.measure_throughput(p, batch_size=mode.pick(8, 4, 2), image_size=size,
                                        compile=False, amp="auto", device=mode.device,
                                        warmup=mode.pick(2, 1, 1), iters=mode.pick(5, 2, 1))
        back = next(p.parameters()).device.type == "cpu" and p.training
        report(SECTION, f"{fam}: throughput gives the model back", ok=back,
               note=f"{r['images_per_s']:.0f} img/s (cut)")
        p.to(dev).eval()
        cpu_state = torch.get_rng_state()  # finetune leaves the caller's RNG state alone
        cuda_state = torch.cuda.get_rng_state() if cuda else None
        sls_fast.finetune(p, TensorDataset(x.cpu(), torch.arange(10) % 10), None, epochs=1,
                          batch_size=4, progress=False, head_init="keep", device=dev)
        rng_ok = torch.equal(torch.get_rng_state(), cpu_state) and (
            not cuda or torch.equal(torch.cuda.get_rng_state(), cuda_state))
        report(SECTION, f"{fam}: finetune leaves the caller's RNG alone", ok=rng_ok)
        if fam in COMPILE and not mode.dry:  # minutes on a 2-core CPU: the GPU run does it
            c = torch.compile(p.eval())
            with torch.no_grad():
                diff = float((p(x) - c(x)).abs().max())
            report(SECTION, f"{fam}: torch.compile vs eager (cut model)", ok=diff < 1e-3,
                   max_err=diff)
        report(SECTION, f"{fam}: wall time", ms=(time.perf_counter() - t0) * 1e3)
    zoo(report, mode)


# the CPU dry run: a few architectures of each kind; the device runs them all
DRY_ZOO = ("vit", "eva02", "mambaout", "focalnet", "pvt_v2", "hf_swin")


def zoo(report, mode):
    """The zoo (sls_fast.harness.support, the same list as tests/integration/test_zoo.py) on
    the device: every architecture through every step, none broken."""
    from sls_fast.harness.support import ZOO, check_architecture

    labels = mode.pick(list(ZOO), list(ZOO), list(DRY_ZOO))
    for label in labels:
        t0 = time.perf_counter()
        try:
            res = check_architecture(label, device=mode.device)
        except ImportError as exc:  # transformers missing on the device
            report(SECTION, f"zoo {label}", ok=None, note=f"skipped: {exc}")
            continue
        broken = {s: o.message for s, o in res.items() if o.status == "broken"}
        refused = sorted(s for s, o in res.items() if o.status == "refused")
        note = (f"broken: {broken}" if broken else
                f"refused: {', '.join(refused)}" if refused else "all steps ok")
        report(SECTION, f"zoo {label}", ok=not broken, ms=(time.perf_counter() - t0) * 1e3,
               note=note[:300])
