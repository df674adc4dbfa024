"""A thin JAX Llama with MLX-compatible in-graph int4 weights, and the tools that verify it.

Sub-packages in data-flow order (each imports only those before it):

- :mod:`.quant`, :mod:`.env`: the int4 format (MLX's), and where a figure was measured.
- :mod:`.llama`: config, weight forms (float and every in-graph int4 representation), the
  model, the exported graphs.
- :mod:`.checkpoints`: loaders (GGUF, HF safetensors, mlx-lm directories).
- :mod:`.backends`: the backend names described once, XLA and IREE runners, the compile
  cache, CUDA targets, greedy generation.
- :mod:`.analyzers`: what each compiler made of the dequant, from its own dumps.
- :mod:`.checks`: tolerances, comparisons, and the references (transformers, mlx_lm).
- :mod:`.lab`: the fusion matrix, the linear chain, IREE globals; timers and rooflines.
- :mod:`.report`: ``characterize`` and the sections of findings.md.
"""
