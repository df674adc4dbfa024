"""A thin JAX Llama with MLX-compatible in-graph int4 weights, and the tools that verify it."""
