"""Pallas Mosaic GPU (Hopper, sm_90a) int4 GEMV for MLX affine int4 weights.

Target: jax/jaxlib 0.11.2 (``jax.experimental.pallas.mosaic_gpu``).  The
kernel consumes the MLX format exactly as stored -- no layout conversion:

* ``words``  uint32 ``[out, in/8]``; input index ``k`` of a row is nibble
  ``k % 8`` (bits ``4e..4e+3``) of word ``k // 8``.
* ``scales``, ``biases`` ``[out, in/64]`` (bf16 or f32);
  ``w[o, k] = q[o, k] * s[o, k // 64] + b[o, k // 64]``.
* ``x`` bf16 ``[B, in]``; the result is ``x @ w.T`` as bf16 ``[B, out]``
  with float32 accumulation.

Kernel structure (see ``gemv``):

* One CTA = one warpgroup (128 threads) owns ``block_rows`` output rows and
  (with split-K) a contiguous slice of the K axis.  The grid is
  ``(out / block_rows, split_k)``.
* ``plgpu.emit_pipeline`` walks K in steps of ``step_words`` uint32 words
  (``8 * step_words`` inputs, i.e. ``step_words / 8`` quantisation groups);
  each step TMA-copies the word tile ``[R, G, 8]``, the scale/bias tiles
  ``[R, G]`` and the activation tile ``[B, G, 8, 8]`` into shared memory
  through a ``max_concurrent_steps``-deep ring of buffers.  ``words`` and
  ``x`` are only *reshaped* (free, row-major) to expose the group axis.
* Registers: a custom ``TiledLayout`` for the logical 4-D array
  ``[R, G, word-in-group(8), nibble(8)]``: each thread owns (row, group)
  pairs -- 4 warps x 4 rows x 8 groups per 16x8 tile -- holds the 8 words
  of its group as scalars and the 8 nibbles of each word as one 8-wide
  vector register.  The words tile is loaded with the nibble axis reduced
  (one uint32 per register) and broadcast along the nibble axis; the x tile
  is loaded with the row axis reduced (8 contiguous bf16 = one 16-byte shared
  load per word) and broadcast along the rows.
* Dequant: ``q = f32_bits(((w >> 4e) & 0xF) | 0x4B000000) - 2**23`` (exact),
  then the factored form per group:
  ``acc[r, g] += s[r, g] * sum_{w,e} q * x + b[r, g] * sum_{w,e} x``,
  all in f32.  The per-(row, group) accumulators are the pipeline carry; the
  group axis is reduced once at the end (8-lane shuffle reduction).
* Batch: the B activation rows share one dequantised tile (unrolled in
  Python; B in {1, 2, 4, 16}).
* Output: with ``split_k == 1`` the result is cast to bf16, staged in SMEM and
  TMA-stored.  With ``split_k > 1`` each CTA TMA-stores its f32 partial sums
  into ``[split_k, B, out]`` and a small XLA reduction sums and casts them.

The rival of the Triton kernel (:mod:`model_impl.llama.pallas_int4`, the form), timed beside it by
the GEMV sweep (``pallas-sweep --mosaic``); the faster becomes the form. Its dequant is the
factored float32 one (``fac32``): as a bf16 model's form it would need the dequant in bf16 that
the parity rule holds half-precision models to (the Triton kernel's ``deqx``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .linears import MAGIC
from .pallas_int4 import GROUP

try:  # jax without Mosaic GPU (or its absl dependency): supported() says so
    from jax.experimental import pallas as pl
    from jax.experimental.mosaic.gpu import fragmented_array as _fa
    from jax.experimental.pallas import mosaic_gpu as plgpu
except Exception:  # pragma: no cover
    pl = plgpu = _fa = None

WORD_NIBBLES = 8
_, _MAGIC, _TWO23 = MAGIC[np.dtype(np.float32)]  # q | exponent of 2^23, as float32: 2^23 + q

# Thread tile of the register layout: 16 rows x 8 groups per warpgroup.
_TILE_ROWS = 16
_TILE_GROUPS = 8


@dataclasses.dataclass(frozen=True)
class MgpuConfig:
    """Tunables of the Mosaic GPU int4 GEMV.

    block_rows: output rows per CTA (multiple of 16).
    step_words: uint32 words of K per pipeline step (multiple of 64, i.e. a
      multiple of 8 groups of 64 inputs).
    stages: pipeline depth (``max_concurrent_steps`` of ``emit_pipeline``).
    split_k: number of CTAs sharing one row block along K (f32 partials are
      combined with TMA add-reductions).
    """

    block_rows: int = 16
    step_words: int = 64
    stages: int = 4
    split_k: int = 1


def default_config(out: int, n_in: int, B: int = 1) -> MgpuConfig:
    """Default for the Llama decode shapes: 16-row blocks, 64-word steps, 4 stages; 32-row blocks
    for B >= 16 on tall matrices; split-K when there are few row blocks. From a first trial on an
    H100 (2026-12-05, by hand, not in results/); the sweep (``pallas-sweep --mosaic``) times it
    and its neighbours."""
    block_rows = 32 if (B >= 16 and out >= 4096) else 16
    n_blocks = out // block_rows
    split_k = 1
    # Aim for >= ~2 CTAs per SM (132 SMs) when the row count is small.
    while n_blocks * split_k < 256 and (n_in // 8) % (64 * split_k * 2) == 0 and (n_in // 8) // (split_k * 2) >= 128:
        split_k *= 2
    return MgpuConfig(block_rows=block_rows, step_words=64, stages=4, split_k=split_k)


def supported(out: int, n_in: int, B: int, config: MgpuConfig | None = None) -> str | None:
    """Returns None if the kernel can run this shape, else the reason."""
    if config is None:
        config = default_config(out, n_in, B)
    if plgpu is None:
        return "jax.experimental.pallas.mosaic_gpu is not importable"
    if B < 1 or B > 64:
        return f"B={B} outside 1..64"
    if n_in % GROUP:
        return f"in={n_in} not a multiple of the group size {GROUP}"
    R, KW = config.block_rows, config.step_words
    if R % _TILE_ROWS or R <= 0:
        return f"block_rows={R} not a positive multiple of {_TILE_ROWS}"
    if R > 256:
        return f"block_rows={R} > 256 (TMA box limit)"
    if out % R:
        return f"out={out} not a multiple of block_rows={R}"
    if KW % (WORD_NIBBLES * _TILE_GROUPS) or KW <= 0:
        return f"step_words={KW} not a positive multiple of 64"
    if KW // WORD_NIBBLES > 256:
        return f"step_words={KW} too large (TMA box limit 256 groups)"
    n_words = n_in // WORD_NIBBLES
    if n_words % (KW * config.split_k):
        return f"in/8={n_words} not a multiple of step_words*split_k={KW * config.split_k}"
    if config.stages < 1:
        return "stages must be >= 1"
    if config.split_k > 1 and R % 4:
        return "split_k output tile too narrow"
    # Shared memory: ring of (words + scales + biases + x) tiles.
    G = KW // WORD_NIBBLES
    per_stage = R * KW * 4 + 2 * R * G * 4 + B * KW * WORD_NIBBLES * 2
    smem = min(config.stages, n_words // (KW * config.split_k)) * per_stage
    smem += B * R * 4 + 4096  # output staging + reduction scratch/barriers
    if smem > 220 * 1024:
        return f"needs ~{smem} bytes of shared memory"
    return None


def _canonical_tiled(tiling, warp_dims, lane_dims, vector_dim):
    """Builds a plgpu.Layout.TILED layout, canonicalising it first."""
    lay = _fa.TiledLayout(
        _fa.Tiling(tiling), warp_dims=warp_dims, lane_dims=lane_dims, vector_dim=vector_dim, _check_canonical=False
    ).canonicalize()
    return plgpu.Layout.TILED(lay.tiling, warp_dims=lay.warp_dims, lane_dims=lay.lane_dims, vector_dim=lay.vector_dim)


def _layouts():
    # Logical array [R, G, 8 (word in group), 8 (nibble)].
    # Tiling (16, 8, 8, 8)(4, 8, 8, 8) gives the tiled suffix
    #   [4 (row blk), 1, 1, 1, 4 (row), 8 (group), 8 (word), 8 (nibble)]
    # -> warps over the row blocks, lanes over (row, group), registers over
    # words and an 8-wide vector over nibbles.
    l4 = _canonical_tiled(
        ((_TILE_ROWS, _TILE_GROUPS, 8, 8), (4, _TILE_GROUPS, 8, 8)), warp_dims=(-8,), lane_dims=(-4, -3), vector_dim=-1
    )
    return dict(
        full=l4,  # [R, G, 8, 8]
        words=l4.reduce(3),  # [R, G, 8]      uint32 words
        x=l4.reduce(0),  # [G, 8, 8]      activations
        rg=l4.reduce((2, 3)),  # [R, G]         scales / biases / accumulators
        g=l4.reduce((0, 2, 3)),  # [G]            per-group activation sums
        r=l4.reduce((1, 2, 3)),  # [R]            per-row results
    )


def _build(out: int, n_in: int, B: int, sdtype, config: MgpuConfig):
    R, KW, S = config.block_rows, config.step_words, config.split_k
    G = KW // WORD_NIBBLES  # groups per step
    n_groups = n_in // GROUP
    steps = n_in // WORD_NIBBLES // KW // S  # pipeline steps per CTA
    L = _layouts()
    f32 = jnp.float32
    use_split = S > 1
    acc_dtype = f32 if use_split else jnp.bfloat16

    def kernel(w_gmem, s_gmem, b_gmem, x_gmem, o_gmem, o_smem):
        rb = lax.axis_index("rows")
        ks = lax.axis_index("splitk")
        row_sl = pl.ds(rb * R, R)
        grp_sl = pl.ds(ks * (steps * G), steps * G)

        def step(_, w_smem, s_smem, b_smem, x_smem, carry):
            w = plgpu.load(w_smem, layout=L["words"], optimized=False)  # [R,G,8] u32
            w4 = plgpu.layout_cast(lax.broadcast_in_dim(w, (R, G, 8, 8), (0, 1, 2)), L["full"])
            sh = plgpu.broadcasted_iota(jnp.uint32, (R, G, 8, 8), 3, layout=L["full"]) * jnp.uint32(4)
            qb = (lax.shift_right_logical(w4, sh) & jnp.uint32(0xF)) | jnp.uint32(_MAGIC)
            q = lax.bitcast_convert_type(qb, f32) - f32(_TWO23)  # exact 0..15
            s = plgpu.load(s_smem, layout=L["rg"], optimized=False).astype(f32)  # [R,G]
            bi = plgpu.load(b_smem, layout=L["rg"], optimized=False).astype(f32)
            new = []
            for b in range(B):
                xb = plgpu.load(x_smem.at[b], layout=L["x"], optimized=False).astype(f32)  # [G,8,8]
                x4 = plgpu.layout_cast(lax.broadcast_in_dim(xb, (R, G, 8, 8), (1, 2, 3)), L["full"])
                qx = jnp.sum(jnp.sum(q * x4, axis=3), axis=2)  # [R,G]
                xs = jnp.sum(jnp.sum(xb, axis=2), axis=1)  # [G]
                xs2 = plgpu.layout_cast(lax.broadcast_in_dim(xs, (R, G), (1,)), L["rg"])
                new.append(carry[b] + s * qx + bi * xs2)
            return tuple(new)

        zero = plgpu.layout_cast(jnp.zeros((R, G), f32), L["rg"])
        pipeline = plgpu.emit_pipeline(
            step,
            grid=(steps,),
            in_specs=[
                plgpu.BlockSpec((R, G, 8), lambda k: (0, k, 0)),
                plgpu.BlockSpec((R, G), lambda k: (0, k)),
                plgpu.BlockSpec((R, G), lambda k: (0, k)),
                plgpu.BlockSpec((B, G, 8, 8), lambda k: (0, k, 0, 0)),
            ],
            max_concurrent_steps=config.stages,
            init_carry=tuple(zero for _ in range(B)),
        )
        acc = pipeline(
            w_gmem.at[row_sl, grp_sl],
            s_gmem.at[row_sl, grp_sl],
            b_gmem.at[row_sl, grp_sl],
            x_gmem.at[:, grp_sl],
        )
        for b in range(B):
            o_smem[b] = jnp.sum(acc[b], axis=1).astype(acc_dtype)  # [R]
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(o_smem, o_gmem.at[ks, :, row_sl])
        plgpu.wait_smem_to_gmem(0)

    call = plgpu.kernel(
        kernel,
        out_type=jax.ShapeDtypeStruct((S, B, out), acc_dtype),
        grid=(out // R, S),
        grid_names=("rows", "splitk"),
        scratch_types=dict(o_smem=plgpu.SMEM((B, R), acc_dtype)),
        compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Lane),
    )
    return call, n_groups


def gemv(x, words, scales, biases, *, group_size: int = 64, config: MgpuConfig | None = None) -> jax.Array:
    """bf16 ``x[B, in] @ dequant(words, scales, biases).T`` -> bf16 ``[B, out]``."""
    if group_size != GROUP:
        raise NotImplementedError(f"group_size={group_size} (only 64)")
    B, n_in = x.shape
    out, n_words = words.shape
    if n_words * WORD_NIBBLES != n_in:
        raise ValueError(f"words {words.shape} does not match x {x.shape}")
    if scales.shape != (out, n_in // GROUP) or biases.shape != scales.shape:
        raise ValueError(f"bad scales/biases {scales.shape} {biases.shape}")
    if config is None:
        config = default_config(out, n_in, B)
    why = supported(out, n_in, B, config)
    if why is not None:
        raise ValueError(f"pallas_int4_mgpu.gemv unsupported: {why}")
    if scales.dtype not in (jnp.bfloat16, jnp.float32):
        scales = scales.astype(jnp.float32)
    if biases.dtype != scales.dtype:
        biases = biases.astype(scales.dtype)
    call, n_groups = _build(out, n_in, B, scales.dtype, config)
    w3 = words.astype(jnp.uint32).reshape(out, n_groups, 8)  # free
    x4 = x.astype(jnp.bfloat16).reshape(B, n_groups, 8, 8)  # free
    part = call(w3, scales, biases, x4)  # [S, B, out]
    if config.split_k > 1:
        return jnp.sum(part, axis=0).astype(jnp.bfloat16)
    return part[0]
