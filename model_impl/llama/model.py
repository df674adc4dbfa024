"""A thin Llama in JAX: pure functions over a :class:`Config` and a :class:`Weights` pytree.

Compute dtype ``cfg.dtype`` (float32, bfloat16 or float16): activations, the unquantized
weights, the KV cache and dequantized int4 weights are in it; every matmul accumulates in
float32 (:func:`linears.contract`); the logits come out in float32.

One sequence per call (``forward``), or one token of each of ``b`` sequences
(:func:`decode_batch`: the linears see ``b`` activation rows; the cache write and attention run
per sequence). The KV cache is static, ``[layers, kv_heads, max_seq, head_dim]`` for K and V,
written with ``dynamic_update_slice`` (IREE's CUDA backend rejects the scatter that
``.at[].set`` lowers to). Layers are unrolled in Python so that each quantized linear is
its own dequant + ``dot_general`` in the exported graph.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .config import Config, rope_inv_freq
from .linears import DenseReduceLinear, Int4Form, LinearForm, QuantizedLinear, contract, dequantize, linear
from .weights import STACKED, Layer, Weights


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    k: jax.Array  # [layers, kv_heads, max_seq, head_dim] in cfg.dtype
    v: jax.Array  # [layers, kv_heads, max_seq, head_dim] in cfg.dtype

    @staticmethod
    def zeros(cfg: Config, max_seq: int) -> KVCache:
        shape = (cfg.num_layers, cfg.num_kv_heads, max_seq, cfg.head_dim)
        return KVCache(jnp.zeros(shape, cfg.jnp_dtype), jnp.zeros(shape, cfg.jnp_dtype))

    @property
    def max_seq(self) -> int:
        return self.k.shape[2]


# The name scope of the vocab-parallel lookup's sum: its all-reduce carries it in XLA's HLO.
VOCAB_PARALLEL_SCOPE = "vocab_parallel_rows"


def take_rows(table: jax.Array, tokens: jax.Array, shards: int = 1) -> jax.Array:
    """``table[tokens]``. ``shards > 1``: the vocab-parallel form of the same rows, for a table
    split in ``shards`` row blocks (one per device): each block gives its row of each token
    (the token's offset in the block), rows of other blocks are masked to zero, and the blocks'
    sum is the row (exact: one term is not zero). XLA's partitioner runs each block's gather
    where the block is and sums with one all-reduce of ``[t, ...]``; the plain gather from a
    sharded table made XLA-CUDA all-gather the whole table every step (measured, jax 0.11.2)."""
    if shards == 1:
        return jnp.take(table, tokens, axis=0)
    block = table.shape[0] // shards
    blocks = table.reshape(shards, block, *table.shape[1:])
    rows = jnp.take(blocks, tokens % block, axis=1)  # [shards, t, ...]
    mine = jnp.arange(shards, dtype=tokens.dtype)[:, None] == (tokens // block)[None, :]
    mine = mine.reshape(mine.shape + (1,) * (rows.ndim - 2))
    with jax.named_scope(VOCAB_PARALLEL_SCOPE):
        return jnp.sum(jnp.where(mine, rows, jnp.zeros((), rows.dtype)), axis=0, dtype=rows.dtype)


def embed(cfg: Config, table, tokens: jax.Array) -> jax.Array:
    """Rows of the embedding for ``tokens [t]``; a packed table is gathered, then dequantized;
    ``cfg.vocab_shards`` picks the lookup's form (:func:`take_rows`)."""
    if isinstance(table, DenseReduceLinear):  # a tied head in its multiply + reduce form
        table = table.w
    if isinstance(table, Int4Form):  # a quantized tied head in any int4 form: MLX's rows
        table = table.mlx_words()
    take = lambda a: take_rows(a, tokens, cfg.vocab_shards)  # noqa: E731
    if isinstance(table, QuantizedLinear):
        table = dataclasses.replace(
            table, packed=take(table.packed), scales=take(table.scales), biases=take(table.biases)
        )
        return dequantize(table, cfg.jnp_dtype)
    return take(table).astype(cfg.jnp_dtype)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    # The mean of squares in float32: in half precision a sum of 2048 squares loses the small
    # ones, and eps (1e-5) is below bf16's resolution near 1. As transformers' LlamaRMSNorm.
    xf = x.astype(jnp.float32)
    normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return weight * normed.astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotate-half RoPE (HF layout). x: [t, heads, head_dim]; positions: [t] int32. Angles in
    float32, their cos/sin rounded to ``x``'s dtype, the rotation in it (as transformers)."""
    freqs = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]  # [t, d/2]
    angles = jnp.concatenate([freqs, freqs], axis=-1)[:, None, :]  # [t, 1, d]
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * jnp.cos(angles).astype(x.dtype) + rotated * jnp.sin(angles).astype(x.dtype)


def attention(cfg: Config, q, k_cache, v_cache, positions):
    """q: [t, heads, d]; caches: [kv_heads, s, d]; query i sees keys at slots <= positions[i]."""
    t = q.shape[0]
    groups = cfg.num_heads // cfg.num_kv_heads
    q = q.reshape(t, cfg.num_kv_heads, groups, cfg.head_dim)  # head h = kv * groups + g
    scores = contract("tkgd,ksd->kgts", q, k_cache) * np.float32(cfg.head_dim**-0.5)
    visible = jnp.arange(k_cache.shape[1])[None, :] <= positions[:, None]  # [t, s]
    scores = jnp.where(visible[None, None], scores, jnp.finfo(jnp.float32).min)
    # Softmax in float32: exp of half-precision scores and a half-precision normalizer would
    # put relative errors of 2^-8 on every probability. Rounded to the compute dtype after.
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    # Both operands widened to float32 before the dot: exact (every half-precision value is a
    # float32), and XLA-CPU (jaxlib 0.10.2) has no kernel for this batched BF16 x BF16 = F32 dot
    # ("Unsupported element type for DotThunk::Execute"); for float32 the casts are no-ops.
    out = contract("kgts,ksd->tkgd", probs.astype(jnp.float32), v_cache.astype(jnp.float32)).astype(q.dtype)
    return out.reshape(t, cfg.q_size)


def _write_and_attend(cfg: Config, i: int, q, k, v, k_all, v_all, start, positions):
    """Write ``k``/``v`` ``[t, kv, d]`` of one sequence at (layer ``i``, slot ``start``), then
    its attention: ``[t, q_size]`` and the updated caches."""
    at = (jnp.int32(i), jnp.int32(0), start, jnp.int32(0))  # [t, kv, d] -> [1, kv, t, d]
    k_all = jax.lax.dynamic_update_slice(k_all, k.transpose(1, 0, 2)[None], at)
    v_all = jax.lax.dynamic_update_slice(v_all, v.transpose(1, 0, 2)[None], at)
    return attention(cfg, q, k_all[i], v_all[i], positions), k_all, v_all


def project(x: jax.Array, layer: Layer, stack: str, rows: tuple[int, ...]) -> list[jax.Array]:
    """``x`` through the linears of ``STACKED[stack]`` (``rows`` output rows each): one GEMV over
    the stacked weight, its output split, or one GEMV per part when the layer is unstacked."""
    w = getattr(layer, stack)
    if w is None:
        return [linear(x, getattr(layer, n)) for n in STACKED[stack]]
    return jnp.split(linear(x, w), np.cumsum(rows)[:-1].tolist(), axis=-1)


def forward(cfg: Config, weights: Weights, tokens, start, cache: KVCache, batched: bool = False):
    """Run ``tokens [t]`` at positions ``start..start+t-1``; returns (hidden [t, h], cache).

    ``batched``: ``tokens [b]`` are one token of each of ``b`` sequences, at positions
    ``start [b]``, with a cache of a leading batch axis; the linears see the ``b`` rows at once."""
    t = tokens.shape[0]
    inv_freq = rope_inv_freq(cfg)
    positions = start if batched else start + jnp.arange(t, dtype=jnp.int32)
    # per row: its own sequence (batched) or the one sequence's rows together
    attend = jax.vmap(
        lambda i, q, k, v, ka, va, s: _write_and_attend(cfg, i, q[None], k[None], v[None], ka, va, s, s[None]),
        in_axes=(None, 0, 0, 0, 0, 0, 0),
    )
    x = embed(cfg, weights.embed, tokens)
    k_all, v_all = cache.k, cache.v
    for i, layer in enumerate(weights.layers):
        h = rms_norm(x, layer.attn_norm, cfg.rms_norm_eps)
        q, k, v = project(h, layer, "w_qkv", (cfg.q_size, cfg.kv_size, cfg.kv_size))
        q = rope(q.reshape(t, cfg.num_heads, cfg.head_dim), positions, inv_freq)
        k = rope(k.reshape(t, cfg.num_kv_heads, cfg.head_dim), positions, inv_freq)
        v = v.reshape(t, cfg.num_kv_heads, cfg.head_dim)
        if batched:
            out, k_all, v_all = attend(i, q, k, v, k_all, v_all, positions)
            out = out.reshape(t, cfg.q_size)
        else:
            out, k_all, v_all = _write_and_attend(cfg, i, q, k, v, k_all, v_all, start, positions)
        x = x + linear(out, layer.wo)
        h = rms_norm(x, layer.mlp_norm, cfg.rms_norm_eps)
        gate, up = project(h, layer, "w_gate_up", (cfg.intermediate_size, cfg.intermediate_size))
        x = x + linear(jax.nn.silu(gate) * up, layer.w_down)
    return rms_norm(x, weights.final_norm, cfg.rms_norm_eps), KVCache(k_all, v_all)


def logits(weights: Weights, hidden: jax.Array) -> jax.Array:
    """``[t, vocab]`` float32: a float head's float32 accumulator is kept, not rounded."""
    head = weights.embed if weights.lm_head is None else weights.lm_head
    if isinstance(head, LinearForm):
        return head.matmul(hidden, jnp.float32)
    return contract("ti,oi->to", hidden, head)


def prefill(cfg: Config, weights: Weights, tokens, length, cache: KVCache):
    """Prompt ``tokens [bucket]`` (real ones first, ``length`` of them; padding after).

    Writes K/V for all bucket slots (padding slots are overwritten by later decode steps
    before any query can see them). Returns the logits at position ``length - 1`` [vocab]
    and the cache.
    """
    hidden, cache = forward(cfg, weights, tokens, jnp.int32(0), cache)
    last = jax.lax.dynamic_slice_in_dim(hidden, length - 1, 1, axis=0)
    return logits(weights, last)[0], cache


def decode_step(cfg: Config, weights: Weights, token, pos, cache: KVCache):
    """One token (scalar int32) at position ``pos``; returns (logits [vocab], cache)."""
    hidden, cache = forward(cfg, weights, token.reshape(1), pos, cache)
    return logits(weights, hidden)[0], cache


def decode_batch(cfg: Config, weights: Weights, tokens, positions, cache: KVCache):
    """One token of each of ``b`` sequences: ``tokens [b]`` at ``positions [b]``, the cache with
    a leading batch axis; returns (logits [b, vocab], cache)."""
    hidden, cache = forward(cfg, weights, tokens, positions, cache, batched=True)
    return logits(weights, hidden), cache


def all_logits(cfg: Config, weights: Weights, tokens) -> jax.Array:
    """Logits at every position of ``tokens [t]`` from an empty cache (for reference checks)."""
    hidden, _ = forward(cfg, weights, tokens, jnp.int32(0), KVCache.zeros(cfg, tokens.shape[0]))
    return logits(weights, hidden)
