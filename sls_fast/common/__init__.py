"""Small helpers every layer may use (arrays across libraries, device buffers, signals, progress,
seeding, versions). They import nothing else of sls_fast but the kernels."""
