"""Retraining of an adapted (and possibly truncated) model: adapters + head only (docs/design.md,
step 6).

Strategies of the reference:

* ``"FT"``: start from the adapted weights, constant learning rate (1e-5 by default);
* ``"CLR"``: start from the adapted weights, 10% linear warm-up then cosine from ``lr`` (1e-3) to 1e-5;
* ``"TFS"``: re-initialise adapters and head, then the CLR schedule.

The best epoch by **validation** accuracy is kept (test data never enters the loop).

Head recipe for the new head of a truncated model. A fresh linear head on the pooled features of
an intermediate block learns slowly: EfficientNet-Lite0 (ImageNet weights) adapted with Convpass on
digits (64 px) and cut to 6 of 16 blocks reached 0.71 test accuracy after 6 epochs of AdamW 1e-3 on
adapters + a fresh head (0.48 in our rerun; 0.89 with a 10x head learning rate), while a logistic
regression on the same frozen block-6 features reaches 0.96. So when :func:`sls_fast.truncate`
created the head (``model.sls_state.head_fresh``; also after the TFS re-initialisation), ``head_init="auto"``
first sets it to a linear probe (:func:`probe_head`): multinomial logistic regression on the
standardised pooled features of the training set, full-batch L-BFGS on the device, L2 ``probe_l2``
(1e-3; 1e-1 and 1 were worse: 0.94 / 0.89 test), the standardisation folded into the head's weights.
Measured (same setting, CLR lr 1e-3, batch 64): 3 epochs -> 0.964 val / 0.969 test; TFS 3 epochs ->
0.964 / 0.967; FT (lr 1e-5) 2 epochs -> 0.961 / 0.964. The head of the *full* model
(``add_adapters(num_classes=...)``) is not probed by default: there the probe's near-perfect training
fit starves the adapters of gradient (0.917 val / 0.897 test after 4 epochs, against 0.947 / 0.911
from a random head). ``head_lr`` gives the head and new modules their own learning rate.
"""
from __future__ import annotations

import math
import time
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from sls_fast.common.utils import (as_loader, autocast, check_amp, logits_of, model_device, progress_bar,
                     split_batch)
from sls_fast.models.adapters import adapter_modules, set_trainable
from sls_fast.models.families import family_of
from sls_fast.models.petl.lora import reset_lora
from sls_fast.models.petl.modules import ADAPTER_TYPES
from sls_fast.models.state import classifier_name, classifier_names, get_state

__all__ = ["finetune", "evaluate", "probe_head", "STRATEGIES"]

STRATEGIES = ("FT", "CLR", "TFS")
_MIN_LR = 1e-5


def _labels_of(data) -> Optional[np.ndarray]:
    """Labels of a Dataset / Subset / DataLoader without loading images, or None if unknown."""
    from torch.utils.data import DataLoader, Subset

    if isinstance(data, DataLoader):
        return _labels_of(data.dataset)
    if isinstance(data, Subset):
        base = _labels_of(data.dataset)
        return None if base is None else base[np.asarray(data.indices, dtype=np.int64)]
    for attr in ("labels", "targets", "y"):
        v = getattr(data, attr, None)
        if v is not None and not callable(v):
            try:
                arr = np.asarray(v.cpu() if torch.is_tensor(v) else v).reshape(-1)
                if len(arr) == len(data):
                    return arr.astype(np.int64)
            except Exception:
                pass
    tensors = getattr(data, "tensors", None)
    if tensors is not None:
        return tensors[-1].cpu().numpy().astype(np.int64).reshape(-1)
    return None


@torch.no_grad()
def evaluate(model: nn.Module, data: Union[DataLoader, Dataset], *, batch_size: int = 256,
             device: Union[str, torch.device, None] = None, amp: Optional[str] = "auto",
             progress: bool = False) -> float:
    """Top-1 accuracy of ``model`` on ``data`` (Dataset or DataLoader of ``(x [3, H, W], label)``).

    The model is run in eval mode; its training mode is restored afterwards.

    Example:
        >>> import timm, sls_fast
        >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=10)
        >>> acc = sls_fast.evaluate(m, sls_fast.data.digits("val", image_size=32))
        >>> 0.0 <= acc <= 1.0
        True
    """
    device = model_device(model, device)
    loader = as_loader(data, batch_size)
    was = model.training
    model.eval()
    correct = total = 0
    try:
        for batch in progress_bar(loader, progress, desc="evaluate", leave=False):
            x, y = split_batch(batch)
            x, y = x.to(device, non_blocking=True), torch.as_tensor(y).to(device)
            with autocast(amp, device):
                out = logits_of(model(x))
            correct += (out.argmax(-1) == y).sum().item()
            total += y.numel()
    finally:
        model.train(was)
    if total == 0:
        raise ValueError("evaluate: data yielded no samples")
    return correct / total


@torch.no_grad()
def _pooled_features(model: nn.Module, loader, device, amp, progress: bool):
    feats, labels = [], []
    was = model.training
    model.eval()
    try:
        for batch in progress_bar(loader, progress, desc="probe features", leave=False):
            x, y = split_batch(batch)
            x = x.to(device, non_blocking=True)
            with autocast(amp, device):
                f = family_of(model).pre_logits(model, x)
            feats.append(f.float().reshape(f.shape[0], -1))
            labels.append(torch.as_tensor(y).to(device))
    finally:
        model.train(was)
    return torch.cat(feats), torch.cat(labels).long()


def fit_logistic(z: torch.Tensor, y: torch.Tensor, classes: int, *, l2: float = 1e-3,
                 max_iter: int = 200) -> Tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regressions, one per group: ``z`` ``[G, n, D]`` (standardised
    features), ``y`` ``[n]``; minimises mean cross-entropy + ``l2 / 2 |W|^2`` for every group
    at once (their sum: the groups do not interact), full-batch L-BFGS. Returns ``W``
    ``[G, D, C]`` and ``b`` ``[G, 1, C]`` (logits ``z @ W + b``), detached. Used by
    :func:`probe_head` (one group) and the linear-probe criterion (a group per layer)."""
    G = z.shape[0]
    w = torch.zeros(G, z.shape[-1], classes, dtype=z.dtype, device=z.device, requires_grad=True)
    b = torch.zeros(G, 1, classes, dtype=z.dtype, device=z.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe")
    yg = y.to(z.device).repeat(G)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy((z @ w + b).reshape(-1, classes), yg, reduction="sum") / len(y)
        loss = loss + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def probe_head(model: nn.Module, data, *, l2: float = 1e-3, max_iter: int = 200, batch_size: int = 256,
               device=None, amp="auto", progress: bool = False) -> float:
    """Set the classifier of ``model`` to a linear probe fitted on frozen pooled features.

    Multinomial logistic regression on the standardised pre-logits features
    (``model.forward_head(model.forward_features(x), pre_logits=True)``, shape [N, D]) with L2
    penalty ``l2`` (on the mean loss), full-batch L-BFGS on the model's device; the standardisation
    is folded into the head: ``W' = W / sigma``, ``b' = b - W' mu``. Returns the probe's training
    accuracy.

    Example:
        >>> acc = probe_head(pruned, sls_fast.data.digits("train"))  # doctest: +SKIP
    """
    clf_name = classifier_name(model)
    head = model.get_submodule(clf_name) if clf_name else None
    if not isinstance(head, nn.Linear):
        raise TypeError(f"probe_head needs a linear classifier (get_classifier()), got {type(head).__name__}")
    device = model_device(model, device)
    X, y = _pooled_features(model, as_loader(data, batch_size), device, amp, progress)
    C = head.out_features
    if X.shape[1] != head.in_features:
        raise ValueError(f"pooled features have width {X.shape[1]}, head expects {head.in_features}")
    if int(y.max()) >= C or int(y.min()) < 0:
        raise ValueError(f"labels must be in 0..{C - 1} for a head of {C} classes, got "
                         f"{int(y.min())}..{int(y.max())}")
    X = X.double()
    mu, sd = X.mean(0), X.std(0).clamp_min(1e-6)
    Z = (X - mu) / sd
    w, b1 = fit_logistic(Z[None], y, C, l2=l2, max_iter=max_iter)
    W, b = w[0].T, b1[0, 0]
    with torch.no_grad():
        Wf = W / sd
        bf = b - Wf @ mu
        for name in classifier_names(model):  # DeiT's distilled models: both heads
            clf = model.get_submodule(name)
            if isinstance(clf, nn.Linear) and clf.weight.shape == Wf.shape:
                clf.weight.copy_(Wf.to(clf.weight.dtype))
                if clf.bias is not None:
                    clf.bias.copy_(bf.to(clf.bias.dtype))
        acc = ((Z @ W.T + b).argmax(1) == y).double().mean().item()
    _set_head_fresh(model, False)
    return acc


def _set_head_fresh(model: nn.Module, fresh: bool) -> None:
    st = get_state(model)
    if st is not None:
        st.head_fresh = fresh


def _new_modules(model: nn.Module) -> List[str]:
    st = get_state(model)
    return list(st.new_modules if st is not None else ())


def _head_modules(model: nn.Module, clf_name: str) -> List[str]:
    return [clf_name] + _new_modules(model)


def _lr_lambda(strategy: str, total_steps: int, lr: float, min_lr: float):
    if strategy == "FT":
        return lambda step: 1.0
    warm = max(1, int(round(0.1 * total_steps)))

    def f(step):
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total_steps - warm)
        return (min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(1.0, t)))) / lr

    return f


def _reinit(model: nn.Module) -> None:
    reset_lora(model)  # peft's LoRA parts have no reset_parameters of their own
    for m in adapter_modules(model).values():
        if isinstance(m, ADAPTER_TYPES):
            m.reset_parameters()
    for name in classifier_names(model):
        head = model.get_submodule(name)
        if isinstance(head, nn.Linear):
            nn.init.trunc_normal_(head.weight, std=0.02)
            if head.bias is not None:
                nn.init.zeros_(head.bias)
        elif hasattr(head, "reset_parameters"):
            head.reset_parameters()  # type: ignore[operator]  # the head's own (hasattr above)
    for n in _new_modules(model):
        for m in model.get_submodule(n).modules():
            if m is not model.get_submodule(n) and hasattr(m, "reset_parameters"):
                m.reset_parameters()  # type: ignore[operator]  # the module's own (hasattr above)
    _set_head_fresh(model, True)


def finetune(model: nn.Module, train_data: Union[DataLoader, Dataset],
             val_data: Union[DataLoader, Dataset, None], *, strategy: str = "CLR", epochs: int = 10,
             lr: Optional[float] = None, weight_decay: float = 1e-4, batch_size: int = 64,
             amp: Optional[str] = "auto", progress: bool = True, head_lr: Optional[float] = None,
             head_init: str = "auto", probe_l2: float = 1e-3, min_lr: float = _MIN_LR,
             device: Union[str, torch.device, None] = None, seed: int = 0) -> Dict:
    """Train the adapters and the head of ``model`` (in place) with AdamW; keep the best epoch.

    Args:
        model: adapted model (:func:`sls_fast.add_adapters`), truncated or not. Everything except
            adapters, classifier and modules new from truncation is frozen here.
        train_data, val_data: Datasets or DataLoaders of ``(x [3, H, W], int label)``. The epoch with
            the best ``val_data`` accuracy is restored at the end (``val_data=None``: the last one).
        strategy: ``"FT"`` (constant ``lr``, default 1e-5), ``"CLR"`` (10% warm-up, cosine from ``lr``,
            default 1e-3, to ``min_lr`` 1e-5) or ``"TFS"`` (re-initialise adapters and head, then CLR).
        epochs, batch_size, weight_decay: AdamW settings.
        lr: peak learning rate (default 1e-5 for FT, 1e-3 otherwise).
        head_lr: learning rate of the head and new modules (default: ``lr``).
        head_init: ``"auto"`` (probe-initialise the head when it is new: ``model.sls_state.head_fresh``),
            ``"probe"`` (always), ``"keep"`` (never). See :func:`probe_head`.
        amp: autocast: "auto" (bf16 on CUDA when supported, off on CPU), None (off), "bf16", "fp16".
        seed: seeds the shuffling (a local generator) and, inside a forked RNG state, the
            re-initialisation and dropout; the caller's global RNG state is left as it was.
        progress: tqdm progress bars.

    Returns a dict: ``best_val_acc``, ``best_epoch`` (1-based, 0 = the starting weights),
    ``history`` (per epoch: ``loss``, ``train_acc``, ``val_acc``, ``lr``, ``seconds``),
    ``probe_train_acc`` (or None), ``trainable`` (parameter count), ``seconds``.

    Raises ValueError when the training labels do not cover the head's classes (fewer classes
    than the head) or exceed them.

    Example:
        >>> import timm, sls_fast
        >>> m = sls_fast.add_adapters(timm.create_model("efficientnet_lite0"), num_classes=10)
        >>> r = sls_fast.finetune(m, sls_fast.data.digits("train"), sls_fast.data.digits("val"),
        ...                       strategy="CLR", epochs=4, lr=1e-3, batch_size=64)  # doctest: +SKIP
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if head_init not in ("auto", "probe", "keep"):
        raise ValueError(f"head_init must be 'auto', 'probe' or 'keep', got {head_init!r}")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    check_amp(amp)
    lr = float(lr) if lr is not None else (1e-5 if strategy == "FT" else 1e-3)
    head_lr = float(head_lr) if head_lr is not None else lr
    min_lr = min(float(min_lr), lr)
    device = model_device(model, device)
    model.to(device)
    clf_name = classifier_name(model)
    if clf_name is None:
        raise TypeError(f"{type(model).__name__} has no classifier (get_classifier())")
    head = model.get_submodule(clf_name)
    n_cls = head.out_features if isinstance(head, nn.Linear) else int(getattr(model, "num_classes", 0))

    labels = _labels_of(train_data)
    if labels is not None:
        present = np.unique(labels)
        if present.min() < 0 or present.max() >= n_cls:
            raise ValueError(f"training labels span {present.min()}..{present.max()} but the head has "
                             f"{n_cls} classes (0..{n_cls - 1})")
        if len(present) < n_cls:
            raise ValueError(f"the training data has {len(present)} classes but the head has {n_cls}: "
                             f"classes {sorted(set(range(n_cls)) - set(present.tolist()))[:10]} never "
                             f"occur; give the model a head of {len(present)} classes "
                             f"(truncate(..., num_classes=) or add_adapters(..., num_classes=))")

    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # seeded here, the caller's RNG state restored
        torch.manual_seed(seed)
        return _train(model, train_data, val_data, strategy=strategy, epochs=epochs, lr=lr,
                      weight_decay=weight_decay, batch_size=batch_size, amp=amp, progress=progress,
                      head_lr=head_lr, head_init=head_init, probe_l2=probe_l2, min_lr=min_lr,
                      device=device, seed=seed, clf_name=clf_name)


def _head_fresh(model: nn.Module) -> bool:
    st = get_state(model)
    return bool(st is not None and st.head_fresh)


def _train(model, train_data, val_data, *, strategy, epochs, lr, weight_decay, batch_size, amp,
           progress, head_lr, head_init, probe_l2, min_lr, device, seed, clf_name) -> Dict:
    t_start = time.time()
    if strategy == "TFS":
        _reinit(model)
    set_trainable(model)
    train_loader = as_loader(train_data, batch_size, shuffle=True, seed=seed)
    val_loader = as_loader(val_data, max(batch_size, 256), shuffle=False) if val_data is not None else None

    probe_acc = None
    if head_init == "probe" or (head_init == "auto" and _head_fresh(model)):
        probe_acc = probe_head(model, as_loader(train_data, max(batch_size, 256), shuffle=False),
                               l2=probe_l2, device=device, amp=amp, progress=progress)

    head_names = _head_modules(model, clf_name)
    head_params = {id(p) for n in head_names for p in model.get_submodule(n).parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: the model has no trainable parameters")
    body = [p for p in params if id(p) not in head_params]
    head = [p for p in params if id(p) in head_params]
    groups = [g for g in ({"params": body, "lr": lr}, {"params": head, "lr": head_lr}) if g["params"]]
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    total_steps = epochs * len(train_loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(strategy, total_steps, lr, min_lr))

    def snapshot():
        return {n: t.detach().clone() for n, t in model.state_dict().items()
                if n in trainable_keys}

    trainable_keys = {n for n, p in model.named_parameters() if p.requires_grad}
    fp16 = amp == "fp16" and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=fp16)
    best_acc, best_epoch, best_state = -1.0, 0, None
    if val_loader is not None:
        best_acc = evaluate(model, val_loader, device=device, amp=amp)
        best_state = snapshot()
    history: List[dict] = []
    for ep in progress_bar(range(1, epochs + 1), progress, desc=f"finetune {strategy}"):
        t0 = time.time()
        model.train()
        loss_sum: float = 0
        correct = seen = 0
        for batch in progress_bar(train_loader, progress, desc=f"epoch {ep}", leave=False):
            x, y = split_batch(batch)
            x, y = x.to(device, non_blocking=True), torch.as_tensor(y).to(device)
            with autocast(amp, device):
                out = logits_of(model(x))
                loss = F.cross_entropy(out.float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            loss_sum += loss.item() * y.numel()
            correct += (out.argmax(-1) == y).sum().item()
            seen += y.numel()
        rec = dict(epoch=ep, loss=loss_sum / seen, train_acc=correct / seen,
                   lr=opt.param_groups[0]["lr"], seconds=time.time() - t0)
        if val_loader is not None:
            rec["val_acc"] = evaluate(model, val_loader, device=device, amp=amp)
            if rec["val_acc"] > best_acc:
                best_acc, best_epoch, best_state = rec["val_acc"], ep, snapshot()
        history.append(rec)
    if val_loader is None:
        best_epoch, best_acc = epochs, float("nan")
    elif best_state is not None:
        model.load_state_dict(best_state, strict=False)
    model.eval()
    _set_head_fresh(model, False)
    return dict(best_val_acc=best_acc, best_epoch=best_epoch, history=history,
                probe_train_acc=probe_acc, strategy=strategy,
                trainable=sum(p.numel() for p in params), seconds=time.time() - t_start)
