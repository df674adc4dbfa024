"""Backends: one description per backend name, the XLA and IREE runners, the compile cache,
CUDA target choice, and greedy generation over any runner."""
