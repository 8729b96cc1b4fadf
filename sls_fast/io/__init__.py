"""What comes from and goes to files: data sets (arrays, image folders, VTAB-1k), checkpoints
(ours and the authors'), and the pruned-model artifacts."""
