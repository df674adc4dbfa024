"""Half precision against an independent reference, fast: a numpy Llama (no JAX, no XLA) on a
2-layer model that rounds to bfloat16/float16 (``ml_dtypes``) at the points the model
documents (embedding rows, every linear's output, RoPE's cos/sin and rotation, attention
probabilities and output, RMSNorm's output times its weight, SiLU's sigmoid op by op as XLA
expands it, the gate product, the residual adds) and keeps float32 where it says so (RMSNorm statistics, softmax, every
accumulation, the logits).

The property: the graph rounds where the reference rounds. Its logits lie much closer to the
reference of its own dtype than to the same reference run in float32 or in the other half
dtype; a compute-dtype bug (a rounding dropped or added, the wrong dtype, an accumulator in
half precision) moves it towards another column. The slow real-model files hold bf16/f16 to
transformers; this one runs in seconds on every change."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from model_impl import checks
from model_impl.llama import model
from model_impl.llama.config import rope_inv_freq
from model_impl.llama.shapes import shrunk_llama32_config
from model_impl.llama.weights import cast_weights, synthetic

NP_DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16, "float32": np.float32}
TOKENS = np.array([1, 17, 300, 5, 999, 42, 7, 512], np.int32)
# Mirrored rounding leaves only accumulation-order differences (float32 sums in another order
# flip an occasional half-precision rounding, each flip then carried through the network), so
# the graph must lie far closer to its own dtype's reference than to one that rounds elsewhere:
# own <= other / MARGIN. Measured on XLA-CPU (jaxlib 0.10.2): bf16 own 2e-5 against 0.25-0.30,
# f16 own 0.02 against bf16's 0.30. f16 against float32 is not such a pair: f16's unit roundoff
# (2^-11) is fine enough that the flips' spread (0.02) is near f16-vs-f32's (0.04); the pieces
# test below holds f16's rounding points op by op instead.
MARGIN = 10.0
PAIRS = {"bfloat16": ("float16", "float32"), "float16": ("bfloat16",)}


def _round(x, dtype):
    return np.asarray(x, np.float32).astype(NP_DTYPES[dtype]).astype(np.float32)


def _w(a):
    return np.asarray(a, np.float32)


def numpy_logits(cfg, weights, tokens, dtype):
    """Logits ``[t, vocab]`` of a cacheless causal pass, rounding to ``dtype`` as the model does."""
    r = lambda x: _round(x, dtype)  # noqa: E731
    mm = lambda x, w: r(x.astype(np.float64) @ _w(w).astype(np.float64).T)  # noqa: E731  (f32+ accumulate)

    def rms(x, weight):
        normed = x * (1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(cfg.rms_norm_eps)))
        return r(_w(weight) * r(normed))

    t = len(tokens)
    inv = rope_inv_freq(cfg)
    freqs = np.arange(t, dtype=np.float32)[:, None] * inv[None, :]
    angles = np.concatenate([freqs, freqs], axis=-1)[:, None, :]
    cos, sin = r(np.cos(angles)), r(np.sin(angles))

    def rope(x):
        half = x.shape[-1] // 2
        rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return r(r(x * cos) + r(rotated * sin))

    x = r(_w(weights.embed)[tokens])
    groups = cfg.num_heads // cfg.num_kv_heads
    mask = np.tril(np.ones((t, t), bool))
    for layer in weights.layers:
        h = rms(x, layer.attn_norm)
        q = rope(mm(h, layer.wq).reshape(t, cfg.num_heads, cfg.head_dim))
        k = rope(mm(h, layer.wk).reshape(t, cfg.num_kv_heads, cfg.head_dim))
        v = mm(h, layer.wv).reshape(t, cfg.num_kv_heads, cfg.head_dim)
        kh, vh = np.repeat(k, groups, axis=1), np.repeat(v, groups, axis=1)  # head h -> kv h // groups
        scores = np.einsum("thd,shd->hts", q.astype(np.float64), kh.astype(np.float64)) * cfg.head_dim**-0.5
        scores = np.where(mask[None], scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs = r(probs / probs.sum(-1, keepdims=True))
        out = r(np.einsum("hts,shd->thd", probs.astype(np.float64), vh.astype(np.float64))).reshape(t, -1)
        x = r(x + mm(out, layer.wo))
        h = rms(x, layer.mlp_norm)
        gate, up = mm(h, layer.w_gate), mm(h, layer.w_up)
        # sigmoid as XLA expands lax.logistic in half precision: 1 / (1 + exp(-x)), each op
        # rounded (read from XLA-CPU's optimized HLO, jaxlib 0.10.2)
        sigmoid = r(1.0 / r(1.0 + r(np.exp(-gate))))
        act = r(r(gate * sigmoid) * up)
        x = r(x + mm(act, layer.w_down))
    hidden = rms(x, weights.final_norm)
    return (hidden.astype(np.float64) @ _w(weights.embed).astype(np.float64).T).astype(np.float32)


@pytest.fixture(scope="module")
def case():
    cfg = shrunk_llama32_config()
    return cfg, synthetic(cfg, seed=3)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_the_graph_rounds_where_an_independent_numpy_reference_rounds(case, dtype):
    cfg, fp32 = case
    cfg_d = dataclasses.replace(cfg, dtype=dtype)
    weights = cast_weights(fp32, dtype)  # the same stored values for the graph and the references
    got = np.asarray(model.all_logits(cfg_d, weights, jnp.asarray(TOKENS)))
    own = np.abs(got - numpy_logits(cfg, weights, TOKENS, dtype)).max()
    others = {d: np.abs(got - numpy_logits(cfg, weights, TOKENS, d)).max() for d in PAIRS[dtype]}
    assert all(own * MARGIN <= other for other in others.values()), (own, others)


# A contraction's output may differ from the float64-summed reference by one unit in the last
# place where the float32 sum lands near a rounding boundary; in no more than this share of its
# elements (measured: at most 0.15% in f16, fewer in bf16).
CONTRACTION_FLIP_SHARE = 0.01


def _ulps(a, b, dtype):
    """|a - b| in units of the dtype's spacing at b."""
    spacing = np.spacing(np.abs(b).astype(NP_DTYPES[dtype])).astype(np.float32)
    return np.abs(a - b) / spacing


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_xla_cpu_rounds_a_half_multiply_add_as_the_table_expects_of_this_host(dtype):
    """The rounding model the pieces below hold the graph to is itself a table entry, keyed by
    the host's half-precision arithmetic (XLA-CPU compiles for the CPU it runs on)."""
    from model_impl import expectations as ex

    key = ("xla-cpu", ex.HALF_ROUNDING, dtype)
    observed = checks.xla_cpu_half_rounding(dtype)
    finding = ex.check(key, observed, ex.XLA, ex.compiler_version(ex.XLA), ex.host_half_arithmetic())
    assert finding is None, finding.line()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_each_piece_of_a_layer_rounds_as_the_reference_does(case, dtype):
    """Layer 0 piece by piece, each on the graph's own inputs (no flip carried from an earlier
    piece): elementwise pieces equal the reference exactly (RoPE's multiply-add as this host's
    XLA-CPU rounds it: per op, or as one FMA), contractions within one ulp."""
    import jax

    from model_impl.llama.linears import linear

    cfg, fp32 = case
    cfg_d = dataclasses.replace(cfg, dtype=dtype)
    w = cast_weights(fp32, dtype)
    layer, t = w.layers[0], len(TOKENS)
    r = lambda x: _round(x, dtype)  # noqa: E731
    f = lambda a: np.asarray(a, np.float32)  # noqa: E731
    jd = jnp.dtype(dtype)
    x = jnp.asarray(w.embed)[TOKENS].astype(jd)
    h = jax.jit(model.rms_norm, static_argnums=2)(x, layer.attn_norm, cfg.rms_norm_eps)
    xn = f(x)
    normed = xn * (1.0 / np.sqrt(np.mean(xn * xn, -1, keepdims=True) + np.float32(cfg.rms_norm_eps)))
    assert np.array_equal(f(h), r(f(layer.attn_norm) * r(normed))), "rms_norm"
    for name in ("wq", "w_gate"):
        y = f(jax.jit(linear)(h, getattr(layer, name)))
        ref = r(f(h).astype(np.float64) @ f(getattr(layer, name)).astype(np.float64).T)
        ulps = _ulps(y, ref, dtype)
        assert ulps.max() <= 1 and (ulps > 0).mean() <= CONTRACTION_FLIP_SHARE, (name, ulps.max(), (ulps > 0).mean())
    q = jax.jit(linear)(h, layer.wq).reshape(t, cfg.num_heads, cfg.head_dim)
    inv = rope_inv_freq(cfg)
    rotated = f(jax.jit(model.rope)(q, jnp.arange(t, dtype=jnp.int32), inv))
    freqs = np.arange(t, dtype=np.float32)[:, None] * inv[None, :]
    angles = np.concatenate([freqs, freqs], axis=-1)[:, None, :]
    qf, half = f(q), cfg.head_dim // 2
    turned = np.concatenate([-qf[..., half:], qf[..., :half]], axis=-1)
    cos, sin = r(np.cos(angles)), r(np.sin(angles))
    if checks.xla_cpu_half_rounding(dtype) == checks.FMA:  # the first product fused into the add
        expected = r(qf.astype(np.float64) * cos + r(turned * sin))
    else:
        expected = r(r(qf * cos) + r(turned * sin))
    assert np.array_equal(rotated, expected), ("rope", checks.xla_cpu_half_rounding(dtype))
    gate, up = jax.jit(linear)(h, layer.w_gate), jax.jit(linear)(h, layer.w_up)
    act = f(jax.jit(lambda g, u: jax.nn.silu(g) * u)(gate, up))
    g = f(gate)
    assert np.array_equal(act, r(r(g * r(1.0 / r(1.0 + r(np.exp(-g))))) * f(up))), "silu * up"
    assert cfg_d.dtype == dtype
