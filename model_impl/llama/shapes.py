"""The real Llama-3.2-1B configuration, shrunk copies of its exact layout, and the shapes
its graphs are characterized at (shared by tests, benchmarks, the lab and the GPU scripts)."""

from __future__ import annotations

import dataclasses

from .config import LLAMA32_CONFIG_PATH, Config, load_hf_config

# The real Llama-3.1-8B config.json (shapes for the tensor-parallel study; weights not shipped).
LLAMA31_8B_CONFIG_PATH = LLAMA32_CONFIG_PATH.with_name("llama-3.1-8b-config.json")

# Llama-3.2-1B graphs are characterized from shapes alone: 64-token prompt bucket, 512-slot cache.
LLAMA32_SHAPES = (64, 512)


def llama32_config() -> Config:
    return load_hf_config(LLAMA32_CONFIG_PATH)


def llama31_8b_config() -> Config:
    return load_hf_config(LLAMA31_8B_CONFIG_PATH)


# Real shapes by name (synthetic weights): the benchmarks' and the lab's models.
REAL_SHAPES = {"llama-3.2-1b": llama32_config, "llama-3.1-8b": llama31_8b_config}


def shrunk_llama32_config(layers: int = 2) -> Config:
    """Same rope (llama3 scaling, theta 5e5), head_dim 64, GQA ratio 4 over two KV heads (so
    the query-head -> KV-head mapping is exercised), tied embeddings; fewer layers, heads and
    columns so that a CPU test runs in seconds."""
    return dataclasses.replace(
        llama32_config(),
        num_layers=layers,
        hidden_size=256,
        num_heads=8,
        num_kv_heads=2,
        intermediate_size=512,
        vocab_size=1024,
        bos_token_id=1,
        eos_token_ids=(2,),
    )
