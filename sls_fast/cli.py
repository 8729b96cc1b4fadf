"""The ``sls-fast`` command line: the SLS method end to end, offline.

    sls-fast run   [--out DIR] [--quick]          the main job on the embedded default
    sls-fast score --model NAME --data SPEC       score every block, write report + plots
    sls-fast prune --report DIR                   truncate at the reported depth, retrain, save
    sls-fast bench --model NAME [--depth K]       throughput of the full vs the pruned model

Every subcommand takes --device, --seed, --json (print the result as JSON) and --no-progress.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from typing import Optional

DEFAULT_DATA = "digits"
EPILOG = """\
examples:
  sls-fast run --out runs/default                 # EfficientNet-Lite0 (ImageNet weights) on digits
  sls-fast run --quick --out /tmp/sls             # a reduced run in about a minute
  sls-fast score --model vit_base_patch16_224 --checkpoint ViT-B_16.npz \\
                 --data vtab:/data/vtab-1k/eurosat --out runs/eurosat
  sls-fast prune --report runs/eurosat --strategy CLR --epochs 20
  sls-fast bench --model vit_small_patch16_224 --depth 6 --batch-size 8 --no-compile

data specs: digits | lfw | vtab:PATH/TO/TASK (train800.txt, val200.txt, test.txt) | folder:PATH
"""


# --------------------------------------------------------------------------- helpers
def _versions() -> dict:
    import numpy
    import sklearn
    import timm
    import torch

    from . import __version__

    v = dict(sls_fast=__version__, torch=torch.__version__, timm=timm.__version__,
             numpy=numpy.__version__, sklearn=sklearn.__version__, python=platform.python_version())
    try:
        import triton

        v["triton"] = triton.__version__
    except Exception:
        pass
    try:
        import openTSNE

        v["openTSNE"] = openTSNE.__version__
    except Exception:
        pass
    return v


def _device(args):
    import torch

    if args.device:
        return torch.device(args.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _device_name(dev) -> str:
    import torch

    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def _say(args, *msg):
    """Human-readable progress on stderr (stdout stays clean for --json)."""
    if not args.quiet:
        print(*msg, file=sys.stderr, flush=True)


def _emit(args, result: dict, text: str):
    if args.json:
        print(json.dumps(result, indent=1, default=float))
    else:
        print(text)


def _seed(seed: int):
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _write_json(path: str, obj: dict) -> None:
    """Write ``obj`` as JSON atomically (a reader never sees half a file)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=float)
    os.replace(tmp, path)


def _decision(report) -> dict:
    """The depth decision with its measured stability (the report.json fields)."""
    return dict(repeats=report.repeats, run_depths=list(report.run_depths),
                confidence=report.confidence, spread=[float(x) for x in report.spread],
                runs={k: v.tolist() for k, v in report.runs.items()})


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _table(rows, headers) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def _num_classes(ds) -> int:
    n = getattr(ds, "num_classes", None)
    if n:
        return int(n)
    import numpy as np

    labels = getattr(ds, "labels", None)
    if labels is None:
        labels = [ds[i][1] for i in range(len(ds))]
    return int(np.max(np.asarray(labels))) + 1


# --------------------------------------------------------------------------- run
def cmd_run(args) -> dict:
    """The main job: adapt -> score -> select -> truncate -> retrain -> measure -> store."""
    import torch

    from . import (add_adapters, compare_throughput, evaluate, finetune, save_pruned,
                   score_layers, truncate)
    from .data import digits
    from .models import DEFAULT_MODEL, load
    from .storage import storage_report

    if args.quick:  # the reduced setting used by the test suite
        image_size, epochs, prune_epochs, max_iter, n_score = 32, 1, 1, 300, 400
        tp_iters, compile_ = 3, False
    else:
        image_size, epochs, prune_epochs, max_iter, n_score = args.image_size, args.epochs, \
            args.prune_epochs, args.tsne_iter, None
        tp_iters, compile_ = args.iters, not args.no_compile
    dev = _device(args)
    out = args.out
    os.makedirs(out, exist_ok=True)
    _seed(args.seed)
    timings = {}
    settings = dict(model=DEFAULT_MODEL, dataset="digits", image_size=image_size, epochs=epochs,
                    prune_epochs=prune_epochs, batch_size=args.batch_size, tsne_iter=max_iter,
                    alpha=args.alpha, strategy=args.strategy, compile=compile_, device=str(dev),
                    score_points=n_score or "all train", repeats=args.repeats)
    _say(args, "sls-fast run: " + ", ".join(f"{k}={v}" for k, v in settings.items()))

    t0 = time.perf_counter()
    model = load(DEFAULT_MODEL)  # real ImageNet weights, offline
    train = digits("train", image_size=image_size, seed=args.seed, model=model)
    val = digits("val", image_size=image_size, seed=args.seed, model=model)
    test = digits("test", image_size=image_size, seed=args.seed, model=model)
    num_classes = _num_classes(train)
    add_adapters(model, "convpass", dim=8, num_classes=num_classes)
    model.to(dev)
    timings["load"] = time.perf_counter() - t0

    _say(args, f"[1/6] adapting {DEFAULT_MODEL} (Convpass on every block + new head), "
               f"{epochs} epochs on {len(train)} digits, selected on {len(val)} val")
    t0 = time.perf_counter()
    fit_full = finetune(model, train, val, strategy="CLR", epochs=epochs, lr=1e-3,
                        batch_size=args.batch_size, progress=args.progress, seed=args.seed)
    timings["adapt"] = time.perf_counter() - t0
    acc_full = evaluate(model, test)

    _say(args, "[2/6] scoring every block (one pass, t-SNE of all layers, silhouette)")
    score_data = train
    if n_score:
        score_data = torch.utils.data.Subset(train, list(range(min(n_score, len(train)))))
    report = score_layers(model, score_data, alpha=args.alpha, seed=args.seed, max_iter=max_iter,
                          tsne_backend=args.tsne_backend, progress=args.progress, device=dev,
                          repeats=args.repeats)
    timings.update({f"score_{k}": v for k, v in report.timings.items()})
    depth, L = report.depth, report.num_layers

    _say(args, f"[3/6] SLS depth {depth} of {L}; truncating and retraining ({args.strategy}, "
               f"{prune_epochs} epochs)")
    t0 = time.perf_counter()
    pruned = truncate(model, depth, num_classes=num_classes)
    fit_pruned = finetune(pruned, train, val, strategy=args.strategy, epochs=prune_epochs,
                          batch_size=args.batch_size, progress=args.progress, seed=args.seed)
    timings["retrain"] = time.perf_counter() - t0
    acc_pruned = evaluate(pruned, test)

    _say(args, f"[4/6] throughput, full vs pruned (batch {args.batch_size}, "
               f"{'compiled' if compile_ else 'eager'})")
    t0 = time.perf_counter()
    tp = compare_throughput(model, pruned, batch_size=args.batch_size, image_size=image_size,
                            compile=compile_, iters=tp_iters, device=dev)
    timings["throughput"] = time.perf_counter() - t0

    _say(args, "[5/6] storing the pruning index + adapters + head")
    artifact = os.path.join(out, "pruned.safetensors")
    save_pruned(artifact, pruned, depth, dataset="digits", image_size=image_size)
    storage = storage_report(artifact, pruned, full_model=model)

    _say(args, "[6/6] writing the report and plots")
    report.meta.update(model=DEFAULT_MODEL, dataset="digits", image_size=image_size,
                       num_classes=num_classes, data="digits", title="EfficientNet-Lite0 on digits")
    report.to_json(os.path.join(out, "layers.json"))
    plots = report.plot(out)
    result = dict(
        model=DEFAULT_MODEL, dataset="digits", num_layers=L, depth=depth, alpha=args.alpha,
        layer_names=report.layer_names,
        scores={k: [float(x) for x in v] for k, v in report.scores.items()},
        **_decision(report),
        accuracy=dict(full=acc_full, pruned=acc_pruned,
                      full_val=fit_full["best_val_acc"], pruned_val=fit_pruned["best_val_acc"]),
        throughput=dict(full=tp["full"]["images_per_s"], pruned=tp["pruned"]["images_per_s"],
                        speedup=tp["speedup"], full_details=tp["full"], pruned_details=tp["pruned"]),
        storage=dict(artifact_bytes=storage["artifact_bytes"],
                     full_model_bytes=storage.get("full_model_bytes"),
                     pruned_model_bytes=storage["pruned_model_bytes"]),
        settings=settings, timings=timings, versions=_versions(), device=_device_name(dev),
        files=dict(report=os.path.join(out, "report.json"), artifact=artifact, plots=plots,
                   layers=os.path.join(out, "layers.json")))
    result["timings"]["total"] = sum(v for k, v in timings.items())
    _write_json(os.path.join(out, "report.json"), result)
    kept = f"{depth} of {L}"
    if report.repeats > 1:
        kept += (f" (mean of {report.repeats} runs; runs keep "
                 f"{' '.join(map(str, report.run_depths))}: confidence {report.confidence:.0%})")
    rows = [("layers kept", kept),
            ("silhouette (first -> last block)",
             f"{report.scores['silhouette'][0]:.3f} -> {report.scores['silhouette'][-1]:.3f}"),
            ("test accuracy full / pruned", f"{acc_full:.3f} / {acc_pruned:.3f}"),
            ("images/s full / pruned", f"{tp['full']['images_per_s']:.0f} / "
                                       f"{tp['pruned']['images_per_s']:.0f} ({tp['speedup']:.2f}x)"),
            ("artifact / full model bytes", f"{storage['artifact_bytes']:,} / "
                                            f"{storage.get('full_model_bytes', 0):,}"),
            ("wall time", f"{result['timings']['total']:.0f} s"),
            ("report", os.path.join(out, "report.json"))]
    text = report.summary() + "\n\n" + _table(rows, ("", "SLS on EfficientNet-Lite0 / digits"))
    _emit(args, result, text)
    return result


# --------------------------------------------------------------------------- score
def _size_kwargs(model_name: str, image_size) -> dict:
    """Patch-token models are built for one input size: pass ``--image-size`` to timm for
    them (convolutional models take any size and need nothing)."""
    fixed = ("vit", "deit", "eva", "swin", "beit")
    if image_size and model_name.split("_")[0].startswith(fixed):
        return {"img_size": image_size}
    return {}


def _load_model_and_data(args, split: str, *, num_classes=None):
    from .data import from_spec
    from .models import load

    kw = _size_kwargs(args.model, args.image_size)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        model = load(args.model, checkpoint=args.checkpoint, num_classes=num_classes, **kw)
    data = from_spec(args.data, split, image_size=args.image_size, model=model, seed=args.seed)
    return model, data


def cmd_score(args) -> dict:
    from . import score_layers

    _seed(args.seed)
    dev = _device(args)
    model, data = _load_model_and_data(args, args.split)
    _say(args, f"scoring {args.model} on {args.data} ({len(data)} images, split {args.split})")
    report = score_layers(model, data, alpha=args.alpha, seed=args.seed, max_iter=args.tsne_iter,
                          tsne_backend=args.tsne_backend, progress=args.progress, device=dev,
                          batch_size=args.batch_size, repeats=args.repeats, pool=args.pool)
    report.meta.update(model=args.model, checkpoint=args.checkpoint, data=args.data,
                       split=args.split, image_size=args.image_size, seed=args.seed,
                       title=f"{args.model} on {args.data}")
    os.makedirs(args.out, exist_ok=True)
    report.to_json(os.path.join(args.out, "layers.json"))
    plots = report.plot(args.out)
    result = dict(model=args.model, dataset=args.data, num_layers=report.num_layers,
                  depth=report.depth, alpha=args.alpha, layer_names=report.layer_names,
                  scores={k: [float(x) for x in v] for k, v in report.scores.items()},
                  **_decision(report),
                  timings=report.timings, versions=_versions(), device=_device_name(dev),
                  files=dict(layers=os.path.join(args.out, "layers.json"), plots=plots))
    _write_json(os.path.join(args.out, "report.json"), result)
    _emit(args, result, report.summary() + f"\nwritten: {args.out}/report.json, " + ", ".join(plots))
    return result


# --------------------------------------------------------------------------- prune
def cmd_prune(args) -> dict:
    from . import LayerReport, add_adapters, evaluate, finetune, save_pruned, truncate
    from .data import from_spec
    from .models import load
    from .storage import storage_report

    path = os.path.join(args.report, "layers.json")
    if not os.path.exists(path):
        raise SystemExit(f"sls-fast prune: {path} not found; run 'sls-fast score --out {args.report}' first")
    report = LayerReport.from_json(path)
    meta = report.meta
    if not meta.get("model") or not meta.get("data"):
        raise SystemExit(f"sls-fast prune: {path} does not say which model/data it scored")
    _seed(args.seed)
    dev = _device(args)
    model = load(meta["model"], checkpoint=meta.get("checkpoint"))
    size = meta.get("image_size")
    train = from_spec(meta["data"], "train", image_size=size, model=model, seed=args.seed)
    val = from_spec(meta["data"], "val", image_size=size, model=model, seed=args.seed)
    test = from_spec(meta["data"], "test", image_size=size, model=model, seed=args.seed)
    num_classes = _num_classes(train)
    depth = args.depth or report.depth
    add_adapters(model, args.adapter, dim=8)
    pruned = truncate(model, depth, num_classes=num_classes)
    pruned.to(dev)
    _say(args, f"pruning {meta['model']} to {depth} of {report.num_layers} blocks; retraining "
               f"({args.strategy}, {args.epochs} epochs)")
    fit = finetune(pruned, train, val, strategy=args.strategy, epochs=args.epochs,
                   batch_size=args.batch_size, progress=args.progress, seed=args.seed)
    acc = evaluate(pruned, test)
    artifact = os.path.join(args.report, "pruned.safetensors")
    save_pruned(artifact, pruned, depth, dataset=meta["data"])
    storage = storage_report(artifact, pruned, full_model=model)
    result = dict(model=meta["model"], dataset=meta["data"], depth=depth,
                  num_layers=report.num_layers, strategy=args.strategy, epochs=args.epochs,
                  accuracy=dict(pruned=acc, pruned_val=fit["best_val_acc"]),
                  storage=storage, artifact=artifact, device=_device_name(dev))
    _emit(args, result, _table([("depth", f"{depth} of {report.num_layers}"),
                                ("test accuracy", f"{acc:.4f}"),
                                ("artifact bytes", f"{storage['artifact_bytes']:,}"),
                                ("artifact", artifact)], ("", "pruned")))
    return result


# --------------------------------------------------------------------------- bench
def cmd_bench(args) -> dict:
    from . import compare_throughput, truncate
    from .blocks import find_blocks
    from .models import load

    dev = _device(args)
    kw = _size_kwargs(args.model, args.image_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights are fine for timing
        model = load(args.model, checkpoint=args.checkpoint, **kw)
    L = len(find_blocks(model))
    depth = args.depth or max(1, L // 2)
    pruned = truncate(model, depth)
    _say(args, f"timing {args.model}: {L} blocks vs {depth}, batch {args.batch_size}, "
               f"{'compiled' if args.compile else 'eager'}, device {dev}")
    res = compare_throughput(model, pruned, batch_size=args.batch_size, image_size=args.image_size,
                             compile=args.compile, amp=args.amp, iters=args.iters, device=dev)
    result = dict(model=args.model, num_layers=L, depth=depth, full=res["full"],
                  pruned=res["pruned"], speedup=res["speedup"], device=_device_name(dev))
    rows = [(name, f"{r['images_per_s']:.1f}", f"{r['latency_ms']:.2f}",
             f"[{r['latency_ms_p20']:.2f}, {r['latency_ms_p80']:.2f}]")
            for name, r in (("full", res["full"]), (f"pruned ({depth}/{L})", res["pruned"]))]
    _emit(args, result, _table(rows, ("model", "images/s", "median ms/batch", "p20-p80 ms"))
          + f"\nspeed-up {res['speedup']:.2f}x")
    return result


# --------------------------------------------------------------------------- parser
def _common(p):
    g = p.add_argument_group("common options")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--seed", type=int, default=0, help="random seed (data split, training, t-SNE)")
    g.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    g.add_argument("--quiet", action="store_true", help="no progress messages on stderr")


def _scoring_options(p):
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--alpha", type=float, default=0.3, help="threshold = alpha x last layer's score")
    p.add_argument("--tsne-backend", default="auto",
                   help="auto | native | torch | opentsne | sklearn | cuml (sklearn = the paper's "
                        "exact settings)")
    p.add_argument("--tsne-iter", type=int, default=1000, help="t-SNE iterations")
    p.add_argument("--repeats", type=_positive_int, default=1, metavar="S",
                   help="t-SNE runs per layer (default 1, the paper). With S > 1 the depth is "
                        "taken on the mean silhouette curve and the report gives every run's "
                        "depth and the confidence (the share of runs that agree); 8 is a good "
                        "choice: one run is one draw from a distribution")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="sls-fast", description="SLS (Straightforward Layer-wise Pruning): score every block "
        "of an adapted vision model by how well its features separate the classes (t-SNE + "
        "silhouette), keep the blocks up to where that score collapses, delete the rest, and "
        "store only the pruning index, adapters and head.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    r = sub.add_parser("run", help="the main job on the embedded default (offline)",
                       description="EfficientNet-Lite0 (real ImageNet weights) on scikit-learn's "
                       "digits: adapt (Convpass + head) -> score every block -> select the depth -> "
                       "truncate -> retrain -> test accuracy, compiled throughput and storage of "
                       "full vs pruned. Writes DIR/report.json, DIR/scores.png, "
                       "DIR/tsne_layers.png and DIR/pruned.safetensors.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("--out", default="sls_run", help="output folder")
    r.add_argument("--quick", action="store_true", help="reduced setting (32 px, 1 epoch, 400 "
                   "scored images, eager timing): about a minute on 2 cores")
    r.add_argument("--image-size", type=int, default=64, help="digits are upscaled to this size")
    r.add_argument("--epochs", type=int, default=10, help="epochs to adapt the full model")
    r.add_argument("--prune-epochs", type=int, default=4, help="epochs to retrain the pruned model")
    r.add_argument("--strategy", default="CLR", choices=("FT", "CLR", "TFS"),
                   help="retraining strategy of the pruned model")
    _scoring_options(r)
    r.add_argument("--no-compile", action="store_true", help="time the eager models only")
    r.add_argument("--iters", type=int, default=None, help="timed batches per model")
    _common(r)
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("score", help="score every block of a model on a data set (no pruning)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="One pass over the data, t-SNE of every block, silhouette / "
                       "Calinski-Harabasz / Davies-Bouldin per block, the SLS depth. Writes "
                       "OUT/report.json, OUT/layers.json and two plots.")
    s.add_argument("--model", required=True, help="timm model name (efficientnet_lite0 has "
                   "bundled ImageNet weights; other names need --checkpoint for real weights)")
    s.add_argument("--checkpoint", default=None, help="local .npz / .pth / .safetensors weights")
    s.add_argument("--data", default=DEFAULT_DATA, help="digits | lfw | vtab:PATH | folder:PATH")
    s.add_argument("--split", default="train", help="which split to score")
    s.add_argument("--out", default="sls_score", help="output folder")
    s.add_argument("--image-size", type=int, default=None, help="default: the model's input size")
    s.add_argument("--pool", default="auto", choices=("auto", "cls", "mean", "merged"),
                   help="per-block feature: auto (class token, else mean over tokens), or "
                        "merged (Swin: stages 1-3 after the next PatchMerging, the authors' way)")
    _scoring_options(s)
    _common(s)
    s.set_defaults(func=cmd_score)

    p = sub.add_parser("prune", help="truncate at a report's depth, retrain, evaluate, save",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Reads REPORT/layers.json (from 'sls-fast score'), rebuilds "
                       "the model, adds adapters, truncates at the reported depth, retrains "
                       "adapters + head (checkpoint chosen on the val split), reports test "
                       "accuracy and writes REPORT/pruned.safetensors.")
    p.add_argument("--report", required=True, help="folder written by 'sls-fast score'")
    p.add_argument("--depth", type=int, default=None, help="override the reported depth")
    p.add_argument("--strategy", default="CLR", choices=("FT", "CLR", "TFS"))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--adapter", default="convpass", choices=("convpass", "repadapter"))
    p.add_argument("--batch-size", type=int, default=64)
    _common(p)
    p.set_defaults(func=cmd_prune)

    b = sub.add_parser("bench", help="throughput of the full vs the pruned model",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Random inputs; warm-up and compilation excluded; both models "
                       "timed alternately in one run. Random weights are fine for timing.")
    b.add_argument("--model", required=True, help="timm model name")
    b.add_argument("--checkpoint", default=None)
    b.add_argument("--depth", type=int, default=None, help="blocks kept (default: half)")
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--image-size", type=int, default=None, help="default: the model's input size")
    b.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="torch.compile both models")
    b.add_argument("--amp", default=None, choices=("bf16", "fp16"))
    b.add_argument("--iters", type=int, default=None, help="timed batches per model")
    _common(b)
    b.set_defaults(func=cmd_bench)
    return ap


def main(argv: Optional[list] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"sls-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
