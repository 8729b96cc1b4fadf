"""The SLS method on features: one-pass extraction of every layer, t-SNE of all layers, the
batched clustering metrics, the depth rule, and all of it in one call (``score``)."""
