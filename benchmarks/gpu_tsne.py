"""gpu_check section: batched t-SNE on CUDA (sls_fast.kernels.tsne, sls_fast.tsne).

1. The Triton force kernel (dense P and kNN P) and the fused update kernel against the torch
   reference on CUDA (float64 reference; gradient and Z to 1e-5 relative).
2. A full 12 x 1,000 x 768 run: ours (Triton) against the same algorithm with the torch forces on
   CUDA, both timed, trustworthiness of each (n_neighbors=10, mean over layers).
3. Ours at 12 x 10,000 x 768 (kNN P; the torch reference is timed per iteration only).
4. cuML's TSNE at the same sizes when cuML is importable.

Goal: all 12 layers at N = 1,000 in under 1 s on an H100/H200.
"""
from __future__ import annotations

import time

from utils import cuda_time_ms, mean_trustworthiness, rel_err, synchronize, vit_like_features

SECTION = "tsne"
DEVICE = "cuda"  # run() sets the mode's device ("cpu" in a dry run, with TRITON_INTERPRET=1)
L, D, CLASSES = 12, 768, 10


def _features(n, seed=0, device=None, layers=L):
    """The shared ViT-B-like problem (benchmarks/utils.py) on the section's device."""
    x, labels = vit_like_features(n, layers=layers, dim=D, classes=CLASSES, seed=seed)
    return x.to(device or DEVICE), labels


def _check_kernels(report, sizes=((777, True), (2500, False))):
    import torch

    from sls_fast.kernels import tsne as K

    gen = torch.Generator(device="cpu").manual_seed(5)
    cases = ((3001, 91, 30.0), (257, 1999, 50.0)) if DEVICE == "cuda" else ((61, 23, 5.0),)
    for rows, k, perp in cases:
        d2 = (torch.rand(rows, k, generator=gen, dtype=torch.float64) * 40).to(DEVICE)
        ref = K.conditional_p_torch(d2, perp)
        got = K.conditional_p_triton(d2, perp)
        err = rel_err(got, ref)
        # the bisection stops within its entropy tolerance (1e-5): the rows' stopping steps may
        # differ by one (Triton passes target and tolerance as float32), so compare at 1e-4
        report(SECTION, f"perplexity bisection triton vs torch, {rows}x{k}", ok=err < 1e-4,
               max_err=err)

    for n, dense in sizes:
        x, _ = _features(n, seed=n)
        red = K.pca_project(x[:3], 50)
        aff = K.joint_probabilities(red, 30.0, dense=dense)
        gen = torch.Generator(device="cpu").manual_seed(1)
        y = (torch.randn(3, n, 2, generator=gen) * 5).to(DEVICE)
        if dense:
            ref = K.tsne_forces_torch(y.double(), aff.double())
            got = K.tsne_forces_triton(y, aff)
        else:
            ref = K.tsne_forces_torch(y.double(), None, aff[0], aff[1].double())
            got = K.tsne_forces_triton(y, None, aff[0], aff[1])
        kind = "dense P" if dense else "kNN P"
        for ex in (12.0, 1.0):
            err = rel_err(K.gradient_from_forces(*got, ex), K.gradient_from_forces(*ref, ex))
            report(SECTION, f"forces triton vs torch, {kind}, 3x{n}, exag {ex:g}: gradient",
                   ok=err < 1e-5, max_err=err)
        err = rel_err(got[2], ref[2])
        report(SECTION, f"forces triton vs torch, {kind}, 3x{n}: Z", ok=err < 1e-5, max_err=err)
        args = (aff,) if dense else (None, aff[0], aff[1])
        a, r, zpart = K.tsne_forces_triton(y, *args, return_partials=True)
        upd = torch.randn_like(y) * 1e-3
        gains = torch.rand_like(y) + 0.5
        want = [t.clone() for t in (y, upd, gains)]
        K.tsne_step_torch(*want, a.sum(0), r.sum(0), zpart.sum(1), exaggeration=12.0,
                          momentum=0.5, learning_rate=50.0)  # partials: [split, L, N, 2]
        have = [t.clone() for t in (y, upd, gains)]
        K.tsne_step_triton(*have, a, r, zpart, exaggeration=12.0, momentum=0.5, learning_rate=50.0)
        err = max(rel_err(h, w) for h, w in zip(have, want))
        report(SECTION, f"update triton vs torch, {kind}, 3x{n}", ok=err < 1e-5, max_err=err)


def run(report, mode):
    import torch

    from sls_fast.method.embed import tsne
    from sls_fast.kernels import tsne as K

    global DEVICE
    DEVICE = mode.device
    quick = mode.quick
    _check_kernels(report, sizes=mode.pick(((777, True), (2500, False)),
                                           ((777, True), (2500, False)),
                                           ((67, True), (95, False))))
    # the dry run (interpreted Triton) checks that the code runs, not what t-SNE gives
    max_iter = mode.pick(1000, 300, 4)
    n = mode.pick(1000, 1000, 40)
    nl = mode.pick(L, L, 2)
    forces = "triton"  # the kernels under test (interpreted in a dry run)

    # 12 x 1,000: ours (Triton) vs the torch forces on CUDA
    x, _ = _features(n, layers=nl)

    def ours():
        return K.tsne_batched(x, max_iter=max_iter, forces=forces)

    ms = cuda_time_ms(ours, warmup=1, iters=3 if quick else 5)
    emb = ours()
    trust = mean_trustworthiness(x, emb)
    goal = "" if quick else (" (goal < 300 ms: " + ("met)" if ms < 300 else "MISSED)"))
    report(SECTION, f"ours triton {nl}x{n}x768, {max_iter} it", ms=ms,
           ok=bool(torch.isfinite(emb).all()), note=f"trust {trust:.4f}{goal}")
    if DEVICE == "cuda":
        api_ms = cuda_time_ms(lambda: tsne(x, backend="triton", max_iter=max_iter, normalize=None),
                              warmup=1, iters=3)
        report(SECTION, f"sls_fast.tsne API (checks + normalise) {nl}x{n}", ms=api_ms)
    t0 = time.time()
    ref = K.tsne_batched(x, max_iter=max_iter, forces="torch")
    synchronize()
    ref_ms = (time.time() - t0) * 1e3
    ref_trust = mean_trustworthiness(x, ref)
    report(SECTION, f"torch reference on {DEVICE} {nl}x{n}x768, {max_iter} it", ms=ref_ms,
           ok=trust >= ref_trust - 0.01,
           note=f"trust {ref_trust:.4f}; ours {ref_ms / ms:.1f}x faster")

    # phases of ours: affinities (distances + perplexity bisection) vs the optimisation loop
    layers = list(x.unbind(0))
    aff_ms = cuda_time_ms(lambda: K.affinities_by_width(layers, 30.0, None), warmup=1, iters=3)
    P = K.affinities_by_width(layers, 30.0, None)
    y0_eager = K.initial_embedding(K.reduce_layers(layers, 0, 2), "pca", 0)
    eager_ms = cuda_time_ms(lambda: K.tsne_optimize(y0_eager.clone(), P, max_iter=max_iter,
                                                    forces=forces, cuda_graph=False),
                            warmup=1, iters=3) if DEVICE == "cuda" else None
    y0 = K.initial_embedding(K.reduce_layers(layers, 0, 2), "pca", 0)
    opt_ms = cuda_time_ms(lambda: K.tsne_optimize(y0.clone(), P, max_iter=max_iter, forces=forces),
                          warmup=1, iters=3)
    report(SECTION, f"phase: affinities {nl}x{n}x768 (neighbour lists)", ms=aff_ms)
    report(SECTION, f"phase: optimise {nl}x{n}, {max_iter} it ({forces}, CUDA graphs)",
           ms=opt_ms, note=f"{opt_ms * 1e3 / max_iter:.0f} us/iteration")
    if eager_ms is not None:
        report(SECTION, f"phase: optimise {nl}x{n}, {max_iter} it ({forces}, eager launches)",
               ms=eager_ms, note=f"graphs {eager_ms / opt_ms:.2f}x faster")
    del P, y0

    # S x L = 8 x 12 layers at once (the repeats of a decision-stability run)
    reps = mode.pick(8, 2, 2)
    xs = x.repeat(reps, 1, 1)
    ms_s = cuda_time_ms(lambda: K.tsne_batched(xs, max_iter=max_iter, forces=forces), warmup=1,
                        iters=2)
    goal = "" if quick else (" (goal < 1000 ms: " + ("met)" if ms_s < 1000 else "MISSED)"))
    report(SECTION, f"ours {reps}x{nl} layers x {n} at once, {max_iter} it", ms=ms_s,
           note=f"{ms_s / ms:.2f}x the {nl}-layer time{goal}")
    del xs

    # 12 x 10,000: ours end to end; both force paths per iteration
    if not quick:
        x10, _ = _features(10_000, seed=1)
        ms10 = cuda_time_ms(lambda: tsne(x10, backend="triton", normalize=None), warmup=1, iters=2)
        emb10 = tsne(x10, backend="triton", normalize=None)
        report(SECTION, "ours triton 12x10000x768, 1000 it", ms=ms10,
               ok=bool(torch.isfinite(emb10).all()), note="kNN P (N > dense bound)")
        red = K.pca_project(x10, 50)
        nbr, pval = K.joint_probabilities(red, 30.0, dense=False)
        y = K.initial_embedding(red, "pca", 0) * 1e4
        it_tri = cuda_time_ms(lambda: K.tsne_forces_triton(y, None, nbr, pval), warmup=2, iters=10)
        it_ref = cuda_time_ms(lambda: K.tsne_forces_torch(y, None, nbr, pval), warmup=1, iters=3)
        report(SECTION, "forces per iteration 12x10000: triton", ms=it_tri)
        report(SECTION, "forces per iteration 12x10000: torch reference", ms=it_ref,
               note=f"triton {it_ref / it_tri:.1f}x faster")
        del x10, emb10, red, nbr, pval, y

    # cuML, layer by layer
    try:
        import cuml  # noqa: F401
    except Exception:
        report(SECTION, "cuml", note="cuML not importable: skipped")
        return
    ms_c = cuda_time_ms(lambda: tsne(x, backend="cuml", max_iter=max_iter, normalize=None),
                        warmup=1, iters=2)
    emb_c = tsne(x, backend="cuml", max_iter=max_iter, normalize=None)
    report(SECTION, f"cuml 12x1000x768 (serial), {max_iter} it", ms=ms_c,
           note=f"trust {mean_trustworthiness(x, emb_c):.4f}; ours {ms_c / ms:.1f}x faster")
    if not quick:
        x10, _ = _features(10_000, seed=1)
        ms_c10 = cuda_time_ms(lambda: tsne(x10, backend="cuml", normalize=None), warmup=0, iters=1)
        report(SECTION, "cuml 12x10000x768 (serial), 1000 it", ms=ms_c10,
               note=f"ours {ms_c10 / ms10:.2f}x faster")
