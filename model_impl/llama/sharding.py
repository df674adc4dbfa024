"""Tensor parallelism with XLA's own SPMD partitioner (GSPMD): shardings of the weights and the
KV cache over a 1-D mesh of ``tp`` devices; the graphs themselves are the one-device graphs.

Megatron layout, every weight form alike (whole quantization groups per shard):

- column-parallel, sharded by output rows: q, k, v, gate, up, and the head (vocab-parallel);
- row-parallel, sharded by input columns: o and down (their products are partial sums: the
  partitioner adds one all-reduce after each);
- the embedding table by vocabulary rows (the same array as a tied head), looked up in the
  vocab-parallel form (``cfg.vocab_shards``, :func:`model.take_rows`): a masked local gather
  plus one all-reduce of the gathered rows; the greedy argmax over vocab-sharded logits XLA
  partitions itself, as local arg-maxima plus an all-gather of ``tp`` pairs;
- the KV cache by KV head; norms, tokens and positions replicated.

Beyond the lookup's form, nothing here computes: a layout that needs communication GSPMD adds it, and
:mod:`model_impl.analyzers.collectives` reads the partitioned HLO to say which collectives it
added and whether any of them moves weights.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .config import Config
from .linears import DenseReduceLinear, Int4Form, LinearForm, QuantizedLinear
from .weights import LINEAR_NAMES, STACKED, Weights

AXIS = "tp"
COLUMN = ("wq", "wk", "wv", "w_gate", "w_up")  # sharded by output rows
ROW = ("wo", "w_down")  # sharded by input columns


class ShardingError(ValueError):
    """A model, weight form or degree that cannot be tensor-parallel; the message names it."""


def _axes(w) -> dict[str, tuple[int, int]]:
    """``{field: (out axis, in axis)}`` of each array of a weight form ("" for a bare array):
    where its output rows and its input columns (or their groups, or packed words) lie."""
    from .pallas_int4 import PallasInt4Linear
    from .representations import GROUPED_FORMS, NativeInt4Linear, ReduceInt4Linear, WordInt4Linear

    if isinstance(w, PallasInt4Linear):  # placed like MLX's words; run in shard_map (bind)
        return {"words": (0, 1), "scales": (0, 1), "biases": (0, 1)}
    if isinstance(w, ReduceInt4Linear) and w.form == "u32-planar":
        raise ShardingError(
            "u32-planar cannot be sharded by input columns: each of its words holds codes from the "
            "whole row (code k in word k % words), so no shard of words is a shard of columns"
        )
    if isinstance(w, NativeInt4Linear) and w.form in GROUPED_FORMS:  # codes [G, out, g]
        return {"codes": (1, 0), "scales": (1, 0), "biases": (1, 0)}
    if isinstance(w, NativeInt4Linear) and w.form == "u4-affine-io":  # [in, out], [G, out]
        return {"codes": (1, 0), "scales": (1, 0), "biases": (1, 0)}
    if isinstance(w, (NativeInt4Linear, ReduceInt4Linear)):
        return {"codes": (0, 1), "scales": (0, 1), "biases": (0, 1)}
    if isinstance(w, (QuantizedLinear, WordInt4Linear)):
        return {"packed": (0, 1), "scales": (0, 1), "biases": (0, 1)}
    if isinstance(w, DenseReduceLinear):
        return {"w": (0, 1)}
    if isinstance(w, LinearForm):
        raise ShardingError(f"no tensor-parallel layout is known for the weight form {type(w).__name__}")
    return {"": (0, 1)}


def _spec(ndim: int, axis: int) -> P:
    return P(*(AXIS if d == axis else None for d in range(ndim)))


def linear_specs(w, by: str):
    """The weight ``w`` (any form) with each array replaced by its ``PartitionSpec``: ``by`` is
    "out" (column-parallel) or "in" (row-parallel)."""
    pick = {"out": 0, "in": 1}[by]
    axes = _axes(w)
    if "" in axes:
        return _spec(len(w.shape), axes[""][pick])
    return dataclasses.replace(w, **{f: _spec(len(getattr(w, f).shape), a[pick]) for f, a in axes.items()})


def _divides(what: str, n: int, tp: int) -> None:
    if n % tp:
        raise ShardingError(f"--tp {tp}: {what} {n} is not divisible by {tp}")


def _group_size(w) -> int | None:
    return getattr(w, "group_size", None) if isinstance(w, Int4Form) else None


def check(cfg: Config, weights: Weights, tp: int) -> None:
    """Raise :class:`ShardingError` (one line naming what) unless ``weights`` of ``cfg`` shard
    over ``tp`` devices: heads, KV heads, MLP width and vocabulary divisible, every row-parallel
    shard whole quantization groups, every form one with a layout."""
    if tp < 1:
        raise ShardingError(f"--tp must be at least 1, got {tp}")
    if tp == 1:
        return
    _divides("num_attention_heads", cfg.num_heads, tp)
    _divides("num_key_value_heads", cfg.num_kv_heads, tp)
    _divides("intermediate_size", cfg.intermediate_size, tp)
    _divides("vocab_size", cfg.vocab_size, tp)
    for i, layer in enumerate(weights.layers):
        stacks = [n for n in STACKED if getattr(layer, n) is not None]
        if stacks:  # a contiguous row split would give one device q and the other k and v
            raise ShardingError(
                f"--tp {tp}: layers.{i}.{stacks[0]} is stacked (stack_projections), which has no "
                "tensor-parallel layout: shard the unstacked weights"
            )
        for name in LINEAR_NAMES:
            w = getattr(layer, name)
            try:
                _axes(w)
            except ShardingError as e:
                raise ShardingError(f"layers.{i}.{name}: {e}") from None
            g = _group_size(w)
            n_in = cfg.q_size if name == "wo" else cfg.intermediate_size
            if name in ROW and g and (n_in // tp) % g:
                raise ShardingError(
                    f"--tp {tp}: layers.{i}.{name}'s shard of {n_in // tp} input columns is not whole groups of {g}"
                )
    for name in ("embed", "lm_head"):
        if getattr(weights, name) is not None:
            try:
                _axes(getattr(weights, name))
            except ShardingError as e:
                raise ShardingError(f"{name}: {e}") from None


def weight_specs(weights: Weights) -> Weights:
    """``weights`` with every array replaced by its ``PartitionSpec`` (see the module doc)."""
    layers = tuple(
        dataclasses.replace(
            layer,
            attn_norm=P(),
            mlp_norm=P(),
            **{n: linear_specs(getattr(layer, n), "out") for n in COLUMN},
            **{n: linear_specs(getattr(layer, n), "in") for n in ROW},
        )
        for layer in weights.layers
    )
    head = None if weights.lm_head is None else linear_specs(weights.lm_head, "out")
    return Weights(linear_specs(weights.embed, "out"), layers, P(), head)


CACHE_SPEC = P(None, AXIS, None, None)  # [layers, kv_heads, max_seq, head_dim]: by KV head


HOST_DEVICES_FLAG = "xla_force_host_platform_device_count"


def host_devices(n: int) -> None:
    """XLA-CPU with ``n`` host devices (XLA_FLAGS), unless the environment already sets a count;
    effective while JAX has not started its CPU client."""
    flags = os.environ.get("XLA_FLAGS", "")
    if HOST_DEVICES_FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --{HOST_DEVICES_FLAG}={n}".strip()


def mesh(tp: int, platform: str) -> Mesh:
    """The first ``tp`` devices of ``platform`` as a 1-D mesh; one line if there are fewer."""
    devices = jax.devices(platform)
    if len(devices) < tp:
        hint = f" (CPU: XLA_FLAGS=--{HOST_DEVICES_FLAG}=N)" if platform == "cpu" else ""
        raise ShardingError(f"--tp {tp} needs {tp} {platform} devices; this process has {len(devices)}{hint}")
    return Mesh(np.array(devices[:tp]), (AXIS,))


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a tensor-parallel runner puts things: the weights' shardings, the cache's, and the
    replicated one for tokens, positions and scalars."""

    mesh: Mesh
    weights: Weights  # of NamedSharding

    @property
    def tp(self) -> int:
        return self.mesh.devices.size

    @property
    def cache(self) -> NamedSharding:
        return NamedSharding(self.mesh, CACHE_SPEC)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def prepare(self, weights: Weights) -> Weights:
        """The weights as :attr:`weights` shards them (custom kernels bound to the mesh)."""
        return bind(weights, self.mesh)


def graph_config(cfg: Config, tp: int) -> Config:
    """``cfg`` as the graphs of ``tp`` devices see it: the embedding in ``tp`` row blocks."""
    return dataclasses.replace(cfg, vocab_shards=tp)


def bind(weights: Weights, m: Mesh) -> Weights:
    """``weights`` with every custom-kernel linear told its mesh and how it is split (column- or
    row-parallel), so that it runs its kernel in ``shard_map``; every other form as it is (GSPMD
    partitions them)."""
    from .pallas_int4 import PallasInt4Linear

    def bound(w, by):
        return dataclasses.replace(w, tp=(m, by)) if isinstance(w, PallasInt4Linear) else w

    layers = tuple(
        dataclasses.replace(
            layer,
            **{n: bound(getattr(layer, n), "out") for n in COLUMN},
            **{n: bound(getattr(layer, n), "in") for n in ROW},
        )
        for layer in weights.layers
    )
    head = None if weights.lm_head is None else bound(weights.lm_head, "out")
    return Weights(bound(weights.embed, "out"), layers, weights.final_norm, head)


def layout(cfg: Config, weights: Weights, tp: int, platform: str) -> Layout:
    """Check ``weights`` shard over ``tp`` devices of ``platform``, then their shardings (of the
    weights as :meth:`Layout.prepare` binds them)."""
    check(cfg, weights, tp)
    m = mesh(tp, platform)
    specs = weight_specs(bind(weights, m))
    return Layout(m, jax.tree_util.tree_map(lambda s: NamedSharding(m, s), specs, is_leaf=lambda x: isinstance(x, P)))
