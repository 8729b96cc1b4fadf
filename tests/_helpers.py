"""Shared test helpers."""
import numpy as np


def assert_close(actual, expected, *, rtol, atol=0.0, what="values"):
    """Element-wise |a - e| <= atol + rtol * |e|; fails on any NaN and says where values differ."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != expected {e.shape}"
    assert not np.isnan(a).any(), f"{what}: NaN at {np.argwhere(np.isnan(a))[:5].tolist()}"
    bad = np.abs(a - e) > atol + rtol * np.abs(e)
    if bad.any():
        idx = np.argwhere(bad)[:5]
        detail = ", ".join(f"{tuple(i)}: {a[tuple(i)]!r} vs {e[tuple(i)]!r}" for i in idx)
        raise AssertionError(f"{what}: {bad.sum()} of {bad.size} differ beyond rtol={rtol}, "
                             f"atol={atol}; first at {detail}")


def clustered(rng, L, N, d, K, *, spread=1.0, dtype=np.float64):
    """[L, N, d] points around K random centres per layer, labels [N] with every class present."""
    labels = np.concatenate([np.arange(K), rng.integers(0, K, size=N - K)])
    rng.shuffle(labels)
    centres = rng.normal(scale=3.0, size=(L, K, d))
    X = centres[:, labels, :] + rng.normal(scale=spread, size=(L, N, d))
    return X.astype(dtype), labels


def assert_valid(name, doc):
    """``doc`` satisfies sls_fast's JSON Schema ``name`` (the jsonschema package, Draft
    2020-12); the failure names the path and the violated rule."""
    import json

    import jsonschema

    import sls_fast

    doc = json.loads(json.dumps(doc, default=float))  # as a reader of the file sees it
    errors = sorted(jsonschema.Draft202012Validator(sls_fast.schema(name)).iter_errors(doc),
                    key=lambda e: list(e.path))
    assert not errors, f"{name}: " + "; ".join(
        f"at {'/'.join(map(str, e.path)) or '(top)'}: {e.message[:200]}" for e in errors[:5])
