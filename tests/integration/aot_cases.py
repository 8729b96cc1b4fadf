"""Ahead-of-time compilation of every Triton kernel of sls_fast.kernels for real GPUs, on a
machine without one: ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`` for
sm_80 and sm_90, one case per constexpr configuration and dtype that the launchers use.

Run by tests/test_aot.py in a subprocess without ``TRITON_INTERPRET`` (the kernels must be real
``JITFunction``s, not interpreted ones):

    python tests/aot_cases.py --json OUT.json [--jobs 2]

Each case: ``(module, kernel, label, signature, constexprs)``; the configuration space is read off
the launchers (block sizes and padded widths they can choose), so a launcher change that adds a
configuration must add it here: test_aot.py checks that every ``*_kernel`` is covered.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from sls_fast.kernels.tsne_forces import MAX_SPLIT  # the update kernel unrolls over splits

# CUDA targets: compute capability -> the most shared memory one block may use (bytes)
TARGETS = {80: 163 * 1024, 90: 227 * 1024}


def _p2_range(lo, hi):
    v = lo
    while v <= hi:
        yield v
        v *= 2


def _cases():
    out = []

    def add(module, kernel, label, signature, constexprs):
        out.append(dict(module=module, kernel=kernel, label=label, signature=signature,
                        constexprs=constexprs))

    # silhouette (kernels/silhouette.py): points float32 or float64; one-hot: KP = 16..128
    for ft in ("fp32", "fp64"):
        sig = dict(xt_ptr=f"*{ft}", off_ptr="*i64", own_ptr="*i32", size_ptr="*i32",
                   out_ptr="*fp64", N="i32", D="i32", K="i32", BLOCK_I="constexpr",
                   BLOCK_J="constexpr")
        add("silhouette", "_silhouette_segment_kernel", ft, sig, dict(BLOCK_I=64, BLOCK_J=64))
        sig = dict(xt_ptr=f"*{ft}", own_ptr="*i32", size_ptr="*i32", out_ptr="*fp64", N="i32",
                   D="i32", K="i32", BLOCK_I="constexpr", BLOCK_J="constexpr", KP="constexpr",
                   PRECISION="constexpr")
        for kp in _p2_range(16, 128):
            add("silhouette", "_silhouette_onehot_kernel", f"{ft}-KP{kp}", sig,
                dict(BLOCK_I=64, BLOCK_J=64, KP=kp, PRECISION="tf32x3"))
    # cluster statistics (kernels/cluster_stats.py): BLOCK_D = next power of 2 of D in 16..128
    for ft in ("fp32", "fp64"):
        sig = dict(x_ptr=f"*{ft}", off_ptr="*i64", cen_ptr="*fp64", sq_ptr="*fp64",
                   dist_ptr="*fp64", N="i32", D="i32", K="i32", BLOCK_N="constexpr",
                   BLOCK_D="constexpr")
        for bd in _p2_range(16, 128):
            add("cluster_stats", "_cluster_stats_kernel", f"{ft}-D{bd}", sig,
                dict(BLOCK_N=64, BLOCK_D=bd))
    # t-SNE forces (kernels/tsne_forces.py): dense P or compressed rows; the CUDA default tiles
    # 32 x 64 and the tiles benchmarks/gpu_tsne_forces.py sweeps (the split is a runtime value)
    sig = dict(y_ptr="*fp32", p_ptr="*fp32", rowptr_ptr="*i64", col_ptr="*i32", pv_ptr="*fp32",
               attr_ptr="*fp32", rep_ptr="*fp32", zpart_ptr="*fp32", N="i32", E="i32",
               NUM_BLOCKS="i32", P_LAYERS="i32", L="i32", J_PER_SPLIT="i32",
               DENSE="constexpr", BLOCK_I="constexpr", BLOCK_J="constexpr")
    for bi, bj in ((32, 64), (16, 64), (64, 64), (32, 128), (64, 32)):
        for dense in (True, False):
            add("tsne_forces", "_tsne_forces_kernel",
                f"{'dense' if dense else 'lists'}-{bi}x{bj}", sig,
                dict(DENSE=dense, BLOCK_I=bi, BLOCK_J=bj))
    # fused update: SPLIT partial sums (1..MAX_SPLIT, unrolled); NB_P2 = next power of 2 of
    # split x cdiv(N, 32), at least 16: every split at 16 and 256, one split up to 32,768 points
    sig = dict(y_ptr="*fp32", upd_ptr="*fp32", gains_ptr="*fp32", attr_ptr="*fp32",
               rep_ptr="*fp32", zpart_ptr="*fp32", N2="i32", NUM_Z="i32", L="i32",
               exaggeration="fp32", momentum="fp32", learning_rate="fp32", min_gain="fp32",
               SPLIT="constexpr", BLOCK="constexpr", NB_P2="constexpr")
    for split in range(1, MAX_SPLIT + 1):
        for nb in ((16, 256) if split > 1 else _p2_range(16, 1024)):
            add("tsne_forces", "_tsne_update_kernel", f"S{split}-NB{nb}", sig,
                dict(SPLIT=split, BLOCK=256, NB_P2=nb))
    # perplexity bisection (kernels/tsne_affinities.py): BLOCK_K = 16..2048, BLOCK_R = 2048 / it
    sig = dict(d2_ptr="*fp64", p_ptr="*fp32", R="i32", K="i32", target="fp32", tol="fp32",
               STEPS="constexpr", BLOCK_R="constexpr", BLOCK_K="constexpr")
    for bk in _p2_range(16, 2048):
        br = max(1, min(64, 2048 // bk))
        add("tsne_affinities", "_conditional_p_kernel", f"K{bk}", sig,
            dict(STEPS=100, BLOCK_R=br, BLOCK_K=bk))
    return out


CASES = _cases()


def case_id(case, cc):
    return f"{case['kernel']}-sm{cc}-{case['label']}"


def _compile_one(args):
    case, cc = args
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    try:
        mod = importlib.import_module(f"sls_fast.kernels.{case['module']}")
        fn = getattr(mod, case["kernel"])
        src = ASTSource(fn, case["signature"], constexprs=case["constexprs"])
        compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32))
        return dict(id=case_id(case, cc), ok=True, shared=int(compiled.metadata.shared),
                    cubin_bytes=len(compiled.asm["cubin"]),
                    unspecialized=[p.name for p in fn.params if p.do_not_specialize])
    except Exception as exc:  # reported per case by the test
        return dict(id=case_id(case, cc), ok=False, error=f"{type(exc).__name__}: {exc}"[:2000])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", required=True)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("aot_cases: unset TRITON_INTERPRET (the kernels must be JITFunctions)",
              file=sys.stderr)
        return 2
    work = [(c, cc) for cc in TARGETS for c in CASES]
    if args.jobs > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.jobs) as pool:
            results = pool.map(_compile_one, work, chunksize=1)
    else:
        results = [_compile_one(w) for w in work]
    tmp = args.json + ".tmp"
    with open(tmp, "w") as f:
        json.dump(dict(limits={str(k): v for k, v in TARGETS.items()}, results=results), f,
                  indent=1)
    os.replace(tmp, args.json)
    bad = [r for r in results if not r["ok"]]
    print(f"{len(results)} compiled, {len(bad)} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
