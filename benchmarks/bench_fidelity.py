"""Fidelity of sls_fast's depth decision to the authors' pipeline, judged as distributions.

A t-SNE run is one draw: row order, seed, thread count and the CPU's arithmetic move every
layer's silhouette, and the threshold moves with the last layer's. So fidelity is not "one run
of ours equals one run of theirs" but "our runs and theirs are draws from the same
distribution, and the decision on the mean curve is the same". On real offline profiles:

* **authors**: their pipeline restated, independently of sls_fast: scikit-learn
  ``TSNE(n_components=2, init="pca", random_state=0)`` per layer, per-axis min-max, scikit-learn's
  silhouette, their walk from the last layer down (``prune.py``), over S row orders (their data
  loader reshuffles for every layer; order 0 is the data order);
* each fast backend with ``repeats=S`` (``sls_fast.tsne`` + ``sls_fast.silhouette_score`` +
  ``sls_fast.select_depth``).

Reported per profile: the per-run depth distributions, both mean-curve depths, the total
variation distance between the two depth distributions, the last layer's score (mean +- sd)
and the per-layer spread (mean over layers of the per-layer sd, and the ratio ours / theirs).

``--diversity`` adds, on the first profile, what makes our runs differ: the per-layer sd of the
native backend's silhouette over S runs that differ by (a) the seed only, (b) the row order,
(c) the perturbed start that ``repeats`` uses, against the authors' over row orders.

    python benchmarks/bench_fidelity.py                       # all profiles, native + torch
    python benchmarks/bench_fidelity.py --profiles lite0-frozen/digits-240 --backends native
    python benchmarks/bench_fidelity.py --resume              # reuse finished rows in --out

Everything runs on one thread (``--threads``): the machine is shared, and OpenMP spin-waits on
a busy core cost more than the second thread gains at these sizes. N is kept small (200-480
points) so that the authors' pipeline (16 layers x 8 row orders of scikit-learn per profile)
finishes in minutes; results go to ``benchmarks/results/fidelity.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections import Counter

import numpy as np
import torch

from utils import machine

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "fidelity.json")
PROFILES = {
    # name: (model, dataset, number of training images scored, image size)
    "lite0-frozen/digits-240": ("frozen", "digits", 240, 64),
    "lite0-frozen/digits-480": ("frozen", "digits", 480, 64),
    "lite0-adapted/digits-240": ("adapted", "digits", 240, 64),
    "lite0-frozen/lfw-200": ("frozen", "lfw", 200, 64),
}
ALPHA = 0.3


# ------------------------------------------------------------------------------- profiles
def profile_features(name: str):
    """Per-layer features ``[N, D_i]`` (float32) and labels of a profile, from real weights."""
    import sls_fast
    from sls_fast.method.extract import extract_features

    kind, dataset, n, size = PROFILES[name]
    model = sls_fast.models.load("efficientnet_lite0")  # real ImageNet weights, offline
    load = getattr(sls_fast.data, dataset)
    if dataset == "lfw":  # 200 images in all: score every one of them
        data = load("all", image_size=size, model=model)
    else:
        data = load("train", image_size=size, model=model)
    if kind == "adapted":  # Convpass on every block + a new head, 3 epochs on the train split
        train = load("train", image_size=size, model=model)
        val = load("val", image_size=size, model=model)
        sls_fast.add_adapters(model, "convpass", dim=8, num_classes=train.num_classes)
        sls_fast.finetune(model, train, val, strategy="CLR", epochs=3, lr=1e-3, progress=False)
    sub = torch.utils.data.Subset(data, list(range(min(n, len(data)))))
    feats = extract_features(model, sub, progress=False).to_numpy()
    return [np.ascontiguousarray(f, dtype=np.float32) for f in feats.features], \
        np.asarray(feats.labels, dtype=np.int64)


# ------------------------------------------------------------------------------- pipelines
def authors_walk(scores, alpha=ALPHA):
    """Their loop (prune.py), restated: top layer first with best = 0, then alpha x score[L];
    the last written target wins; ``None`` if none was written (last score < 0)."""
    target, best = None, 0.0
    L = len(scores)
    for i in range(L):
        layer = L - i
        if scores[layer - 1] >= alpha * best:
            target = layer
        else:
            break
        if i == 0:
            best = scores[layer - 1]
    return target


def authors_runs(feats, labels, S):
    """``[S, L]`` silhouettes of the authors' pipeline over S row orders (0 = data order)."""
    from sklearn.manifold import TSNE
    from sklearn.metrics import silhouette_score

    n = len(labels)
    curves = []
    for r in range(S):
        perm = np.arange(n) if r == 0 else np.random.default_rng(1000 + r).permutation(n)
        row = []
        for f in feats:
            e = TSNE(n_components=2, init="pca", random_state=0).fit_transform(f[perm])
            e = (e - e.min(0)) / (e.max(0) - e.min(0))
            row.append(float(silhouette_score(e, labels[perm])))
        curves.append(row)
        print(f"    authors: row order {r + 1}/{S}", file=sys.stderr, flush=True)
    return np.array(curves)


def our_runs(feats, labels, backend, S):
    """``[S, L]`` silhouettes of ``repeats=S`` runs of one of our backends."""
    import sls_fast

    emb = sls_fast.tsne(feats, backend=backend, repeats=S)  # [S, L, N, 2], min-max normalised
    L = len(feats)
    sil = sls_fast.silhouette_score(emb.reshape(S * L, *emb.shape[2:]), labels)
    return np.asarray(sil, np.float64).reshape(S, L)


def depth_of(curve):
    """The authors' depth; their code writes none when the last score is < 0: all layers."""
    k = authors_walk(list(curve))
    return len(curve) if k is None else k


def summarise(curves):
    curves = np.asarray(curves)
    depths = [depth_of(c) for c in curves]
    mean_depth = depth_of(curves.mean(0))
    sd = curves.std(0, ddof=1)
    return dict(curves=curves.tolist(), depths=depths, mean_depth=mean_depth,
                distribution={int(k): v / len(depths) for k, v in sorted(Counter(depths).items())},
                confidence=float(np.mean(np.array(depths) == mean_depth)),
                last_mean=float(curves[:, -1].mean()), last_sd=float(sd[-1]),
                layer_sd=sd.tolist(), mean_layer_sd=float(sd.mean()),
                threshold=float(ALPHA * curves[:, -1].mean()))


def tv_distance(p: dict, q: dict) -> float:
    # depths as string keys on both sides (a resumed row comes back from JSON with str keys)
    p = {str(k): v for k, v in p.items()}
    q = {str(k): v for k, v in q.items()}
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys)


# ------------------------------------------------------------------------------- diversity
def diversity(feats, labels, S):
    """Per-layer sd of the native backend's silhouette over S runs differing by seed only,
    by row order only, and by the perturbed start that ``repeats`` uses."""
    import sls_fast

    def sil(emb):
        return np.asarray(sls_fast.silhouette_score(emb, labels), np.float64)

    n = len(labels)
    out = {}
    out["seed"] = [sil(sls_fast.tsne(feats, backend="native", seed=s)) for s in range(S)]
    rows = []
    for r in range(S):
        perm = np.arange(n) if r == 0 else np.random.default_rng(1000 + r).permutation(n)
        inv = np.argsort(perm)
        rows.append(sil(sls_fast.tsne([f[perm] for f in feats], backend="native")[:, inv]))
    out["row order"] = rows
    out["repeats (perturbed start)"] = list(our_runs(feats, labels, "native", S))
    return {k: summarise(v) for k, v in out.items()}


# ------------------------------------------------------------------------------- report
def gap(ours: dict, theirs: dict) -> tuple:
    """Largest per-layer gap between the two mean curves: ``(|gap|, its z = gap / standard
    error from both sets of runs, layer 1-based)`` at the layer of largest |z|."""
    a, b = np.asarray(ours["curves"]), np.asarray(theirs["curves"])
    se = np.sqrt(a.var(0, ddof=1) / len(a) + b.var(0, ddof=1) / len(b))
    d = a.mean(0) - b.mean(0)
    z = np.abs(d) / np.maximum(se, 1e-12)
    i = int(np.argmax(z))
    return float(abs(d[i])), float(z[i]), i + 1


def table(results) -> str:
    S = results.get("repeats", 8)
    head = (f"| profile (N) | pipeline | per-run depths (S = {S}) | mean-curve depth | confidence "
            f"| TV vs authors | last layer mean +- sd | mean per-layer sd (vs authors) "
            f"| largest mean-curve gap: value, z, layer |")
    lines = [head, "|" + "---|" * 9]
    for name, res in results["profiles"].items():
        a = res.get("authors")
        for key, r in res.items():
            if not isinstance(r, dict) or "depths" not in r:
                continue
            label = "authors (sklearn, row orders)" if key == "authors" else key
            tv = ratio = gp = ""
            if key != "authors" and a is not None:
                tv = f"{tv_distance(r['distribution'], a['distribution']):.2f}"
                ratio = f" ({r['mean_layer_sd'] / a['mean_layer_sd']:.2f}x)"
                g, z, layer = gap(r, a)
                gp = f"{g:.3f}, {z:.1f}, {layer}"
            lines.append(f"| {name} ({res['n']}) | {label} | {' '.join(map(str, r['depths']))} | "
                         f"**{r['mean_depth']}** | {r['confidence']:.0%} | {tv} | "
                         f"{r['last_mean']:.3f} +- {r['last_sd']:.3f} | "
                         f"{r['mean_layer_sd']:.3f}{ratio} | {gp} |")
    if "diversity" in results:
        prof = results["diversity"]["profile"]
        a = results["profiles"][prof]["authors"]
        lines += ["", f"| runs differ by (native, {prof}) | per-run depths | mean-curve depth | "
                  "mean per-layer sd | vs authors | per-layer sd, layers 1..L |",
                  "|---|---|---|---|---|---|",
                  f"| authors: row order (sklearn) | {' '.join(map(str, a['depths']))} | "
                  f"{a['mean_depth']} | {a['mean_layer_sd']:.3f} | 1.00x | "
                  f"{' '.join(f'{v:.3f}' for v in a['layer_sd'])} |"]
        for k, r in results["diversity"]["modes"].items():
            lines.append(f"| {k} | {' '.join(map(str, r['depths']))} | {r['mean_depth']} | "
                         f"{r['mean_layer_sd']:.3f} | {r['mean_layer_sd'] / a['mean_layer_sd']:.2f}x"
                         f" | {' '.join(f'{v:.3f}' for v in r['layer_sd'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", default=",".join(PROFILES), help="comma-separated, of: "
                    + ", ".join(PROFILES))
    ap.add_argument("--backends", default="native,torch",
                    help="our backends to compare (native, torch, opentsne, sklearn, cuml)")
    ap.add_argument("--repeats", type=int, default=8, help="S, runs per pipeline")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--diversity", action="store_true", help="the diversity table (first profile)")
    ap.add_argument("--resume", action="store_true", help="keep finished rows of --out")
    ap.add_argument("--out", default=RESULTS)
    ap.add_argument("--table", action="store_true", help="only print the table of --out")
    args = ap.parse_args(argv)
    if args.table:
        with open(args.out) as f:
            print(table(json.load(f)))
        return 0
    from threadpoolctl import threadpool_limits

    names = [p for p in args.profiles.split(",") if p]
    unknown = [p for p in names if p not in PROFILES]
    if unknown:
        print(f"bench_fidelity: error: unknown profiles {unknown}; choose from {list(PROFILES)}",
              file=sys.stderr)
        return 2
    results = dict(machine=machine(), repeats=args.repeats, threads=args.threads, profiles={})
    if args.resume and os.path.exists(args.out):
        with open(args.out) as f:
            results = json.load(f)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    S = args.repeats
    with threadpool_limits(args.threads):
        for name in names:
            res = results["profiles"].setdefault(name, {})
            todo = [k for k in ["authors"] + args.backends.split(",") if k not in res]
            if not todo and not (args.diversity and name == names[0]):
                continue
            print(f"{name}: features", file=sys.stderr, flush=True)
            feats, labels = profile_features(name)
            res.update(n=len(labels), num_layers=len(feats))
            for key in todo:
                t0 = time.perf_counter()
                curves = authors_runs(feats, labels, S) if key == "authors" else \
                    our_runs(feats, labels, key, S)
                res[key] = summarise(curves)
                res[key]["seconds"] = time.perf_counter() - t0
                print(f"{name}: {key}: depths {res[key]['depths']}, mean-curve depth "
                      f"{res[key]['mean_depth']} ({res[key]['seconds']:.0f} s)",
                      file=sys.stderr, flush=True)
                _save(args.out, results)
            if args.diversity and name == names[0] and "diversity" not in results:
                results["diversity"] = dict(profile=name, modes=diversity(feats, labels, S))
                _save(args.out, results)
    print(table(results))
    return 0


def _save(path, results):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, path)


def test_fidelity_one_profile(benchmark, tmp_path):
    """The harness's entry (``pytest benchmarks/ --benchmark-only``): one profile (frozen
    Lite0 on 200 lfw images), S = 4 runs of the native backend against the authors' pipeline,
    the same code as the script. The full study: ``python benchmarks/bench_fidelity.py``."""
    out = str(tmp_path / "fidelity.json")
    argv = ["--profiles", "lite0-frozen/lfw-200", "--backends", "native", "--repeats", "4",
            "--out", out]
    benchmark.group = "fidelity: lite0-frozen/lfw-200, S = 4"
    assert benchmark.pedantic(main, args=(argv,), rounds=1, iterations=1) == 0
    with open(out) as f:
        res = json.load(f)["profiles"]["lite0-frozen/lfw-200"]
    benchmark.extra_info.update(authors_depths=res["authors"]["depths"],
                                native_depths=res["native"]["depths"],
                                tv=tv_distance(res["authors"]["distribution"],
                                               res["native"]["distribution"]))
    assert len(res["native"]["depths"]) == 4 == len(res["authors"]["depths"])


if __name__ == "__main__":
    sys.exit(main())
