"""Hashes that must not move when code is only reorganised (issue 18): ``score_layers(repeats=8)``
on the default data (EfficientNet-Lite0, ImageNet weights, 1,077 digits at 64 px) and the output
of an artifact written by one version and loaded by another.

    python benchmarks/identity_hashes.py OUT_DIR > before.json    # on the old code
    python benchmarks/identity_hashes.py OUT_DIR > after.json     # on the new code, same OUT_DIR
    diff before.json after.json

The first run writes ``OUT_DIR/artifact.safetensors`` (Convpass adapters with fixed random
weights, cut at 6 blocks); later runs load that file, so the check also proves old artifacts
load. Two torch threads; t-SNE bits depend on the thread count, so compare on one machine.
Measured 2026-12-04 on the layered package (before = after): embeddings abae0d45c149cef5,
silhouette fc4361bb75b9971a, runs 66b60fc78f5a7a05, artifact output 44b6de1d067e1c61.
"""
import hashlib
import json
import os
import sys

import numpy as np
import torch

import sls_fast


def _h(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(a)).tobytes()).hexdigest()[:16]


def main(out: str) -> dict:
    torch.set_num_threads(2)
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    model = sls_fast.models.load("efficientnet_lite0")
    train = sls_fast.data.digits("train", image_size=64, model=model)
    rep = sls_fast.score_layers(model, train, repeats=8, progress=False)
    emb = np.asarray(rep.embeddings)
    res = dict(depth=int(rep.depth), run_depths=[int(d) for d in rep.run_depths],
               embeddings=_h(emb.astype(np.float64)), embeddings_shape=list(emb.shape),
               scores={k: _h(np.asarray(v, dtype=np.float64)) for k, v in rep.scores.items()},
               runs={k: _h(np.asarray(v, dtype=np.float64)) for k, v in rep.runs.items()})
    torch.manual_seed(1)
    adapted = sls_fast.add_adapters(sls_fast.models.load("efficientnet_lite0"), "convpass", dim=8)
    with torch.no_grad():
        for p in adapted.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    artifact = os.path.join(out, "artifact.safetensors")
    if not os.path.exists(artifact):
        sls_fast.save_pruned(artifact, sls_fast.truncate(adapted, 6, num_classes=10), 6)
    loaded = sls_fast.load_pruned(artifact, sls_fast.models.load("efficientnet_lite0")).eval()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        res["artifact_output"] = _h(loaded(x).double().numpy())
    return res


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(json.dumps(main(sys.argv[1]), indent=1))
