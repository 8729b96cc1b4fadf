"""Step 8 of SLS: throughput (images/s) of a model, eager or compiled, measured honestly.

Compilation and warm-up are outside the timed region; CUDA is timed with events; inputs are
random (never zeros); the median latency per batch and its 20th/80th percentiles are reported.

A speed-up is a measurement, so :func:`compare_throughput` reports it with its uncertainty and
checks it against what arithmetic allows:

* the two models are timed in alternating rounds; the speed-up is the ratio of the median
  latencies, with a 95 % bootstrap interval over the timed batches;
* it is ``noisy`` when the interval is wider than ``NOISY_WIDTH`` of the ratio or either model
  had fewer than ``MIN_TIMED_BATCHES`` timed batches;
* its bound is the largest of the two models' cost ratios on one image: floating-point
  operations (torch's ``FlopCounterMode``), weight bytes read, activation bytes written. Time is
  a sum of terms proportional to these (a small input on a CPU is bound by weight reorders and
  per-layer overheads, not by arithmetic), and a ratio of such sums never exceeds its largest
  term ratio; for blocks of equal cost each ratio is at most L/K. A speed-up whose interval
  lies wholly above ``BOUND_SLACK`` x the bound is a measurement error and is not reported as a
  result (``speedup`` None);
* a cut that keeps every block (K = L) reports no speed-up: "not pruned".
"""
from __future__ import annotations

import contextlib
import copy
import platform
import resource
import statistics
import time
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import torch

from sls_fast.common.checks import check_choice
from sls_fast.common.utils import autocast, check_amp, model_device, proc_bytes

__all__ = ["measure_throughput", "compare_throughput", "sweep_batch_sizes", "model_image_size",
           "speedup_verdict", "forward_costs", "CONVENTIONS", "MIN_TIMED_BATCHES", "NOISY_WIDTH", "BOUND_SLACK"]

# Named timing conventions: what each community reports. "authors": the SLS authors' script
# (batch 1, fp32, eager, 50 warm-up and 100 timed passes, latency); "timm": timm's benchmark
# (batch 256, AMP where supported, channels-last for conv nets, compiled); "default": ours.
CONVENTIONS: Dict[str, Dict[str, Any]] = {
    "default": dict(batch_size=64, amp=None, compile=True, channels_last=False, warmup=None,
                    iters=None),
    "authors": dict(batch_size=1, amp=None, compile=False, channels_last=False, warmup=50,
                    iters=100),
    "timm": dict(batch_size=256, amp="auto", compile=True, channels_last=True, warmup=None,
                 iters=None),
}
MIN_TIMED_BATCHES = 10  # fewer timed batches per model: the speed-up is flagged noisy
NOISY_WIDTH = 0.10  # a 95 % interval wider than this fraction of the speed-up: noisy
BOUND_SLACK = 1.10  # cache effects may beat the operation count a little, never by more


def model_image_size(model) -> int:
    """Input side length: the patch embedding's image size (ViT/Swin), else the pretrained
    config (timm), else a clear error."""
    patch = getattr(model, "patch_embed", None)  # fixed-size models: what they were built for
    if patch is not None and getattr(patch, "img_size", None):
        return int(patch.img_size[-1])
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None) or {}
        size = cfg.get("input_size") if isinstance(cfg, dict) else None
        if size:
            return int(size[-1])
    raise ValueError(f"cannot tell the input size of {type(model).__name__}: pass image_size=")


def _fresh_compiler(compile: bool) -> None:
    """Before compiling models for a timing: drop what torch.compile compiled earlier in this
    process. Dynamo compiles one code object (a model class's ``forward``) at most
    ``recompile_limit`` (8) times and then runs it eager without an error, so the ninth model
    structure timed in one process (a sweep's worker, a loop over depths) would be timed eager
    against a compiled full model: measured 0.41-0.74x instead of 1.3-1.9x on Lite0 cuts.
    Models compiled before recompile on their next call; nothing else changes."""
    if compile:
        torch._dynamo.reset()


class _Runner:
    """A model prepared for timing: on its device, eval mode, optionally compiled and warmed up."""

    def __init__(self, model, *, batch_size, image_size, compile, compile_mode, amp, device,
                 warmup, channels=3, seed=0, channels_last=False):
        check_amp(amp)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = model_device(model, device)
        self.model = model.to(self.device).eval()
        self.image_size = int(image_size or model_image_size(model))
        g = torch.Generator(device="cpu").manual_seed(seed)
        self.x = torch.randn(batch_size, channels, self.image_size, self.image_size,
                             generator=g).to(self.device)
        if channels_last and any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
            # a copy: the caller's model keeps its memory format
            self.model = copy.deepcopy(self.model).to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.amp = amp
        self.compiled = bool(compile)
        self.fn = torch.compile(self.model, mode=compile_mode) if compile else self.model
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        for _ in range(max(1, warmup)):  # the first call compiles
            self.step()
        self._sync()
        self.warmup_s = time.perf_counter() - t0

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step(self):
        with torch.inference_mode(), autocast(self.amp, self.device):
            return self.fn(self.x)

    def _reset_peak(self) -> bool:
        """Start a new peak-memory window; False when the CPU's cannot be reset here."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return True
        try:  # Linux: "5" resets the process's peak resident set (VmHWM)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def _read_peak(self, reset: bool) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        peak = proc_bytes("/proc/self/status", "VmHWM") if reset else None
        return peak or int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

    def time(self, iters: int) -> List[float]:
        """Seconds per batch for ``iters`` batches; the peak memory of this window is kept."""
        reset = self._reset_peak()
        out = []
        if self.device.type == "cuda":
            for _ in range(iters):
                a = torch.cuda.Event(enable_timing=True)
                b = torch.cuda.Event(enable_timing=True)
                a.record()
                self.step()
                b.record()
                torch.cuda.synchronize(self.device)
                out.append(a.elapsed_time(b) / 1000.0)
        else:
            for _ in range(iters):
                t0 = time.perf_counter()
                self.step()
                out.append(time.perf_counter() - t0)
        self.peak = max(getattr(self, "peak", 0), self._read_peak(reset))
        return out

    def result(self, times: List[float]) -> dict:
        times = sorted(times)
        q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else times * 9
        med = statistics.median(times)
        peak = getattr(self, "peak", 0)
        if self.device.type == "cuda":
            device = torch.cuda.get_device_name(self.device)
        else:
            device = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
        bs = self.x.shape[0]
        return dict(images_per_s=bs / med, latency_ms=med * 1e3, latency_ms_p20=q[1] * 1e3,
                    latency_ms_p80=q[7] * 1e3, batch_size=bs, image_size=self.image_size,
                    compiled=self.compiled, amp=self.amp, device=device, iters=len(times),
                    warmup_s=self.warmup_s, peak_memory_bytes=int(peak))


@contextlib.contextmanager
def _restored(*models):
    """Give each model back as it came: on its device, with its training flags."""
    saved = [(m, model_device(m), [s for s in m.modules() if s.training]) for m in models]
    try:
        yield
    finally:
        for m, dev, training in saved:
            m.to(dev)
            m.eval()
            for sub in training:
                sub.training = True


def _defaults(device: torch.device, warmup, iters):
    cuda = device.type == "cuda"
    return (warmup if warmup is not None else (10 if cuda else 3),
            iters if iters is not None else (50 if cuda else 10))


def measure_throughput(model: torch.nn.Module, *, batch_size: int = 64,
                       image_size: Optional[int] = None, compile: bool = True,
                       compile_mode: str = "default", amp: Optional[str] = None,
                       warmup: Optional[int] = None, iters: Optional[int] = None,
                       device: Union[str, torch.device, None] = None) -> dict:
    """Images per second of ``model`` on random ``[batch_size, 3, S, S]`` inputs.

    Args:
        model: any ``nn.Module`` taking images.
        batch_size: images per forward.
        image_size: side length S; ``None`` reads the model's pretrained config.
        compile: wrap with ``torch.compile(mode=compile_mode)`` (compilation is not timed;
            torch.compile's caches are reset first, so that every call times a compiled model).
        amp: autocast: ``None`` (off), ``"auto"``, ``"bf16"`` or ``"fp16"``.
        warmup, iters: untimed and timed batches (defaults: 3/10 on CPU, 10/50 on CUDA).
        device: where to run (default: the model's device). The model is given back on its
            own device with its own training flags.

    Returns:
        dict with ``images_per_s``, ``latency_ms`` (median per batch), ``latency_ms_p20``,
        ``latency_ms_p80``, ``batch_size``, ``image_size``, ``compiled``, ``amp``, ``device``,
        ``peak_memory_bytes`` (the peak while this model was timed: CUDA peak allocated; CPU
        the process's peak resident memory, reset before each timed block on Linux), ``iters``,
        ``warmup_s``.

    Example:
        >>> import timm, sls_fast
        >>> m = timm.create_model("resnet18", pretrained=False)
        >>> r = sls_fast.measure_throughput(m, batch_size=8, image_size=64, compile=False,
        ...                                 warmup=1, iters=3)
        >>> r["images_per_s"] > 0
        True
    """
    dev = model_device(model, device)
    warmup, iters = _defaults(dev, warmup, iters)
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    _fresh_compiler(compile)
    with _restored(model):
        runner = _Runner(model, batch_size=batch_size, image_size=image_size, compile=compile,
                         compile_mode=compile_mode, amp=amp, device=dev, warmup=warmup)
        return runner.result(runner.time(iters))


def sweep_batch_sizes(model: torch.nn.Module, batch_sizes: Iterable[int] = (1, 8, 32, 64, 128),
                      **kwargs: Any) -> List[dict]:
    """:func:`measure_throughput` at each batch size (one dict per size)."""
    return [measure_throughput(model, batch_size=b, **kwargs) for b in batch_sizes]


def forward_costs(model: torch.nn.Module, x: torch.Tensor) -> Dict[str, Optional[int]]:
    """What one forward of ``model`` on ``x`` has to do: floating-point operations (torch's
    ``FlopCounterMode``; None when not countable), bytes of weights read, bytes of activations
    written (the outputs of every leaf module; None when the forward fails on ``x``, e.g. a
    fixed-size model given another size)."""
    from torch.utils.flop_counter import FlopCounterMode

    written: List[Optional[int]] = [0]

    def count(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        for t in (output if isinstance(output, (tuple, list)) else [output]):
            if isinstance(t, torch.Tensor) and written[0] is not None:
                written[0] += t.numel() * t.element_size()

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if not any(True for _ in m.children())]
    flops: Optional[int] = None
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(x)
        flops = int(counter.get_total_flops()) or None
    except Exception:  # noqa: BLE001 - the counter could not trace an op, or the forward fails
        written[0] = 0
        try:
            with torch.inference_mode():
                model(x)
        except Exception:  # noqa: BLE001 - the forward itself fails on x: nothing measured
            written[0] = None
    finally:
        for h in hooks:
            h.remove()
    weights = sum(t.numel() * t.element_size()
                  for t in (*model.parameters(), *model.buffers()))
    return dict(flops=flops, weight_bytes=int(weights) or None,
                activation_bytes=written[0] or None)


def _bound(full: Dict[str, Optional[int]], pruned: Dict[str, Optional[int]]) -> Optional[float]:
    """The largest speed-up the cut allows. A forward's time is a sum of terms, each
    proportional to one of the costs (operations, weight bytes, activation bytes, fixed
    overheads per module growing with them), and a ratio of such sums is at most the largest
    ratio of its terms. None when the operations could not be counted."""
    if not (full["flops"] and pruned["flops"]):
        return None
    return max(full[k] / pruned[k] for k in full if full[k] and pruned[k])  # type: ignore[operator]


def _bootstrap_ci(full: List[float], pruned: List[float], *, resamples: int = 1000,
                  seed: int = 0) -> Optional[Tuple[float, float]]:
    """95 % interval of median(full) / median(pruned), resampling each model's batches."""
    if len(full) < 2 or len(pruned) < 2:
        return None
    g = torch.Generator().manual_seed(seed)
    f, p = torch.tensor(full, dtype=torch.float64), torch.tensor(pruned, dtype=torch.float64)
    fi = torch.randint(0, len(f), (resamples, len(f)), generator=g)
    pi = torch.randint(0, len(p), (resamples, len(p)), generator=g)
    ratios = f[fi].median(dim=1).values / p[pi].median(dim=1).values
    lo, hi = torch.quantile(ratios, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return float(lo), float(hi)


def speedup_verdict(speedup: float, ci: Optional[Tuple[float, float]], *, timed: int,
                    bound: Optional[float], kept: Optional[int] = None,
                    total: Optional[int] = None) -> Dict[str, Any]:
    """What a measured speed-up may be reported as: ``status`` "ok", "noisy", "not pruned" or
    "measurement error", the ``speedup`` to report (None unless ok or noisy), ``noisy`` and a
    ``note`` for people. ``timed``: the fewer timed batches of the two models; ``bound``: the
    largest speed-up the cut allows (None: unknown); ``kept`` / ``total``: K and L."""
    lo, hi = ci if ci is not None else (speedup, speedup)
    if kept is not None and total is not None and kept >= total:
        return dict(status="not pruned", speedup=None, noisy=False,
                    note=f"not pruned (all {total} blocks kept): no speed-up to report")
    if bound is not None and lo > BOUND_SLACK * bound:
        return dict(status="measurement error", speedup=None, noisy=True,
                    note=f"measurement error: {speedup:.2f}x (95% interval {lo:.2f}-{hi:.2f}) "
                         f"exceeds what the cut allows ({bound:.2f}x, its largest cost ratio); "
                         "time with more iterations on a quiet machine")
    reasons = []
    if timed < MIN_TIMED_BATCHES:
        reasons.append(f"{timed} timed batches < {MIN_TIMED_BATCHES}")
    if ci is None or (hi - lo) > NOISY_WIDTH * speedup:
        reasons.append("interval " + (f"{lo:.2f}-{hi:.2f} wider than {NOISY_WIDTH:.0%}"
                                      if ci is not None else "unknown"))
    if reasons:
        return dict(status="noisy", speedup=speedup, noisy=True,
                    note=f"noisy ({'; '.join(reasons)})")
    return dict(status="ok", speedup=speedup, noisy=False, note="")


def compare_throughput(full: torch.nn.Module, pruned: torch.nn.Module, *, rounds: int = 3,
                       batch_size: Optional[int] = None,
                       image_size: Optional[int] = None, compile: Optional[bool] = None,
                       compile_mode: str = "default", amp: Optional[str] = None,
                       warmup: Optional[int] = None, iters: Optional[int] = None,
                       device: Union[str, torch.device, None] = None,
                       blocks: Optional[Tuple[int, int]] = None,
                       convention: str = "default") -> dict:
    """Throughput of ``full`` and ``pruned`` in one run, timed in alternating rounds so that
    both see the same machine state.

    Args:
        full, pruned: the two models; the rest as :func:`measure_throughput` (``iters``: timed
            batches per model, split over ``rounds``).
        blocks: ``(K, L)``, the blocks the cut keeps and the model's; K = L reports
            "not pruned".
        convention: ``"default"`` (batch 64, compiled), ``"authors"`` (batch 1, fp32, eager,
            50 + 100 passes) or ``"timm"`` (batch 256, AMP, channels-last conv nets, compiled)
            (:data:`CONVENTIONS`); ``batch_size``, ``compile``, ``amp``, ``warmup`` and ``iters``
            given here override it.

    Returns:
        ``{"full": {...}, "pruned": {...}}`` (:func:`measure_throughput`'s records) and
        ``speedup`` (pruned images/s / full images/s; None when not pruned or a measurement
        error), ``measured_speedup`` (the ratio as measured), ``speedup_ci`` (95 % interval or
        None), ``bound`` (the largest cost ratio, None when not countable), ``costs`` (each
        model's ``flops``, ``weight_bytes`` and ``activation_bytes`` on one image), ``status``,
        ``noisy`` and ``note`` (:func:`speedup_verdict`).
    """
    check_choice(convention, "convention", tuple(CONVENTIONS))
    conv = CONVENTIONS[convention]
    batch_size = conv["batch_size"] if batch_size is None else batch_size
    compile = conv["compile"] if compile is None else compile
    amp = conv["amp"] if amp is None else amp
    dev = model_device(full, device)
    warmup, iters = _defaults(dev, conv["warmup"] if warmup is None else warmup,
                              conv["iters"] if iters is None else iters)
    size = image_size or model_image_size(full)
    kw = dict(batch_size=batch_size, image_size=size, compile=compile, compile_mode=compile_mode,
              amp=amp, device=dev, warmup=warmup, channels_last=conv["channels_last"])
    _fresh_compiler(compile)
    with _restored(full, pruned):
        runners = {"full": _Runner(full, **kw), "pruned": _Runner(pruned, **kw)}
        times: Dict[str, List[float]] = {k: [] for k in runners}
        per_round = -(-iters // max(1, rounds))  # at least ``iters`` timed batches in all
        for _ in range(max(1, rounds)):
            for k, r in runners.items():
                times[k] += r.time(per_round)
        out: Dict[str, Any] = {k: runners[k].result(times[k]) for k in runners}
        x1 = runners["full"].x[:1]
        costs = {k: forward_costs(r.model, x1) for k, r in runners.items()}
    measured = out["pruned"]["images_per_s"] / out["full"]["images_per_s"]
    bound = _bound(costs["full"], costs["pruned"])
    ci = _bootstrap_ci(times["full"], times["pruned"])
    kept, total = blocks if blocks else (None, None)
    out.update(convention=convention, measured_speedup=measured,
               speedup_ci=list(ci) if ci else None, bound=bound,
               costs=costs, **speedup_verdict(measured, ci, timed=min(map(len, times.values())),
                                              bound=bound, kept=kept, total=total))
    return out
