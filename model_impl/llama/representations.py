"""In-graph representations of the same int4 weights: a weight-mode switch of the one model.

The checkpoint format stays MLX's (uint32 words, per-group scale and bias); a representation
is produced from it at load time by :func:`convert` and changes only how ``linear`` computes
``x @ dequant(W).T`` inside the graph. All of them encode the same codes, scales and biases:

=================  ==========================================================================
``u32-affine``     the baseline: uint32 words, shift + mask, ``q * s + b``, then the dot
``u4-affine``      native ``uint4`` codes ``[out, in]``, convert, ``q * s + b``, then the dot
``u4-affine-io``   the same with codes stored ``[in, out]`` (the dot's natural RHS layout)
``s4-scale-gsum``  native ``int4`` codes ``q - 8``, scale only before the dot (the shape XLA's
                   sub-channel dequantisation fusion matches); the bias, folded to
                   ``b + 8 s``, enters as a small dot of the per-group sums of ``x``
``s4-grouped``     a grouped contraction: codes ``[groups, out, g]`` as ``int4`` (``q - 8``),
                   dotted per group with no arithmetic between load and dot; scale and bias
                   (``b + 8 s``) applied to the ``[groups, t, out]`` partial sums after it
``u4-grouped``     the same with unsigned ``uint4`` codes and the bias as stored
``u4-reduce``      ``u4-affine``'s codes, the GEMV written as multiply + reduce (one XLA
                   reduction kernel with the dequant inside)
``u4-magic``       the same, each code made a float by bit manipulation (``q | exponent``,
                   bitcast, minus the exponent's value: exact) instead of an int-to-float convert
``u4-magic-f32``   the same with the dequant ``q * s + b`` in float32 whatever the compute dtype
                   (in half precision the weight is not rounded to the dtype: not bit-identical
                   to the host dequant, within the dtype's parity bound)
``u32-magic``      MLX's own uint32 words (no conversion at load), shift + mask + magic, reduce
``u32-planar``     uint32 words with nibble ``e`` of word ``j`` holding input ``e * in/8 + j``
                   (a layout an earlier Pallas kernel used), shift + mask + magic, reduce
``u32-word``       MLX's words; each reduced element is one word: its 8 codes (magic floats)
                   times 8 activations summed in straight-line code, then ``* s + b * sum(x)``
                   over those 8 activations (scale and bias per word, reassociated); the
                   reduction runs over words, 8x fewer elements than over codes
``u32-group``      the same with one quantization group (8 words, 64 codes) per element
``u32-word-split`` ``u32-word`` with each row's reduction split in ``S`` parts (partial sums,
                   then a sum of ``S``) so that ``out * S`` rows keep the GPU busy where ``out``
                   is small (the 2048-row and 512-row linears)
``pallas-triton``  the other route, for comparison: our own int4 GEMV kernel in Pallas (Triton)
                   over MLX's words as stored (a ``custom_call`` in the graph; see
                   :mod:`model_impl.llama.pallas_int4`)
``u4-magic+word-mlp`` a mix (:data:`MIXES`): gate/up (stacked or not) as ``u32-word``, every
                   other linear as ``u4-magic``
=================  ==========================================================================

``s4-*`` and the grouped forms reassociate float32 sums, so their logits differ from the
host dequant by rounding; the fusion matrix measures by how much.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .. import quant as quant_mod
from .linears import (  # noqa: F401 (MAGIC, magic_codes: their home is linears)
    MAGIC,
    REDUCE_SCOPE,
    DenseIOLinear,
    DenseReduceLinear,
    Int4Form,
    LinearForm,
    QuantizedLinear,
    contract,
    magic_codes,
    reduce_matmul,
    unpack_codes,
)
from .pallas_int4 import FORM as PALLAS_FORM
from .pallas_int4 import PallasInt4Linear
from .weights import Weights, linear_fields, map_linears

BASELINE = "u32-affine"
GROUPED_FORMS = ("s4-grouped", "u4-grouped")
NATIVE_FORMS = ("u4-affine", "u4-affine-io", "s4-scale-gsum", *GROUPED_FORMS)
REDUCE_FORMS = ("u4-reduce", "u4-magic", "u4-magic-f32", "u32-magic", "u32-planar")
WORD_FORMS = {"u32-word": 1, "u32-group": 8, "u32-word-split": 1}  # form -> words per reduced element
# ``u32-word-split``: rows of the split reduction a linear is given at least (out * S); 8192 is
# the gate/up projections' own row count, the linears XLA already runs fastest per byte.
SPLIT_ROWS = 8192
PALLAS = PALLAS_FORM
# Mixes: each linear in the form that streams its shape fastest (``None``: every other linear,
# and a quantized head). The GEMV sweep on the H100 (results/pallas-gemv-h100.json and the
# stacked shapes' run) put u32-word ahead of u4-magic at the gate/up shapes ([8192, 2048]:
# 9.7 against 11.3 us; stacked [16384, 2048]: 15.6 against 20.2) and behind it at every other.
MIXES = {"u4-magic+word-mlp": {"w_gate": "u32-word", "w_up": "u32-word", "w_gate_up": "u32-word", None: "u4-magic"}}
REPRESENTATIONS = (BASELINE, *NATIVE_FORMS, *REDUCE_FORMS, *WORD_FORMS, PALLAS, *MIXES)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NativeInt4Linear(Int4Form):
    """4-bit codes as a native JAX 4-bit array, with float32 per-group scales and biases.

    ``codes``: uint4 ``[out, in]``; ``[in, out]`` for ``u4-affine-io``; ``[groups, out, g]``
    for the grouped forms; int4 ``q - 8`` for the ``s4-`` forms. ``scales``/``biases``:
    ``[out, groups]``, or ``[groups, out]`` where the codes put ``out`` last but one; biases
    are ``b + 8 s`` for the ``s4-`` forms.
    """

    codes: jax.Array
    scales: jax.Array
    biases: jax.Array
    group_size: int = dataclasses.field(metadata=dict(static=True), default=64)
    form: str = dataclasses.field(metadata=dict(static=True), default="u4-affine")

    def matmul(self, x: jax.Array, out_dtype=None) -> jax.Array:
        """In ``x``'s dtype: a rebuilt weight in it, every contraction accumulated in float32."""
        t, g, dt = x.shape[0], self.group_size, x.dtype
        od = out_dtype or dt
        f32 = jnp.float32
        if self.form in GROUPED_FORMS:
            groups, out, _ = self.codes.shape
            xg = x.reshape(t, groups, g).transpose(1, 0, 2)  # [groups, t, g]
            codes = self.codes.astype(dt)  # [groups, out, g]: the batch dimension leads
            partial = contract("Gtg,Gog->Gto", xg, codes)  # float32 partial sums per group
            y = contract("Gto,Go->to", partial, self.scales.astype(f32))
            y = y + contract("Gt,Go->to", xg.astype(f32).sum(axis=-1), self.biases.astype(f32))
            return y.astype(od)
        if self.form == "u4-affine-io":
            n_in, out = self.codes.shape
            w = self.codes.astype(dt).reshape(n_in // g, g, out)
            w = (w * self.scales.astype(dt)[:, None, :] + self.biases.astype(dt)[:, None, :]).reshape(n_in, out)
            return contract("ti,io->to", x, w).astype(od)
        out, n_in = self.codes.shape
        groups = n_in // g
        codes = self.codes.astype(dt).reshape(out, groups, g)
        if self.form == "u4-affine":
            w = (codes * self.scales.astype(dt)[:, :, None] + self.biases.astype(dt)[:, :, None]).reshape(out, n_in)
            return contract("ti,oi->to", x, w).astype(od)
        if self.form == "s4-scale-gsum":
            x_sums = x.astype(f32).reshape(t, groups, g).sum(axis=-1)  # [t, groups]
            w = (codes * self.scales.astype(dt)[:, :, None]).reshape(out, n_in)
            bias_term = contract("tG,oG->to", x_sums, self.biases.astype(f32))
            return (contract("ti,oi->to", x, w) + bias_term).astype(od)
        raise ValueError(f"unknown native int4 form {self.form!r}; known: {NATIVE_FORMS}")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ReduceInt4Linear(Int4Form):
    """The decode GEMV written as multiply + reduce over a dequant of these codes (forms in
    :data:`REDUCE_FORMS`). ``codes``: uint4 ``[out, in]`` (``u4-*``) or uint32 words
    ``[out, in / 8]`` (``u32-*``); ``scales``/``biases``: ``[out, groups]`` as the checkpoint
    stores them (converted in the graph, as the baseline does)."""

    codes: jax.Array
    scales: jax.Array
    biases: jax.Array
    group_size: int = dataclasses.field(metadata=dict(static=True), default=64)
    form: str = dataclasses.field(metadata=dict(static=True), default="u4-magic")

    def float_codes(self, dtype) -> jax.Array:
        """The codes ``[out, in]`` in input order as exact floats of ``dtype``."""
        if self.form == "u4-reduce":
            return self.codes.astype(dtype)
        if self.form in ("u4-magic", "u4-magic-f32"):
            return magic_codes(self.codes, dtype)
        if self.form == "u32-magic":  # code k = nibble k % 8 of word k // 8 (MLX)
            return magic_codes(unpack_codes(self.codes, 4), dtype)
        if self.form == "u32-planar":  # code k = nibble k // words of word k % words
            out, words = self.codes.shape
            shifts = jnp.arange(8, dtype=jnp.uint32)[:, None] * jnp.uint32(4)
            nibbles = (self.codes[:, None, :] >> shifts) & jnp.uint32(15)
            return magic_codes(nibbles, dtype).reshape(out, words * 8)
        raise ValueError(f"unknown reduce int4 form {self.form!r}; known: {REDUCE_FORMS}")

    def dequantize(self, dtype) -> jax.Array:
        """``q * s + b`` in ``dtype`` ``[out, in]`` (float32 for ``u4-magic-f32``)."""
        dt = jnp.float32 if self.form == "u4-magic-f32" else dtype
        q = self.float_codes(dt)
        out, n_in = q.shape
        s, b = self.scales.astype(dt)[:, :, None], self.biases.astype(dt)[:, :, None]
        return (q.reshape(out, n_in // self.group_size, self.group_size) * s + b).reshape(out, n_in)

    def matmul(self, x: jax.Array, out_dtype=None) -> jax.Array:
        return reduce_matmul(x, self.dequantize(x.dtype), out_dtype)


# Up to this many activation rows the word forms unroll one reduction per row over the same
# dequantized words (XLA fuses sibling reductions of one input into one kernel); more rows
# (prefill) dot the dequantized weight.
WORD_MAX_ROWS = 16


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class WordInt4Linear(Int4Form):
    """MLX's words ``[out, in / 8]`` with scales/biases ``[out, groups]`` as stored; the GEMV's
    reduced element is ``words`` whole words (:data:`WORD_FORMS`), their codes dequantized and
    multiplied in float32 straight-line code (see the module table)."""

    packed: jax.Array
    scales: jax.Array
    biases: jax.Array
    group_size: int = dataclasses.field(metadata=dict(static=True), default=64)
    words: int = dataclasses.field(metadata=dict(static=True), default=1)
    split: bool = dataclasses.field(metadata=dict(static=True), default=False)

    def mlx_words(self) -> QuantizedLinear:
        return QuantizedLinear(self.packed, self.scales, self.biases, self.group_size, 4)

    def matmul(self, x: jax.Array, out_dtype=None) -> jax.Array:
        t, dt, f32 = x.shape[0], x.dtype, jnp.float32
        od = out_dtype or dt
        out, n_words = self.packed.shape
        per_group = self.group_size // 8
        if t > WORD_MAX_ROWS or per_group * 8 != self.group_size or per_group % self.words:
            deq = ReduceInt4Linear(self.packed, self.scales, self.biases, self.group_size, "u32-magic")
            return contract("ti,oi->to", x, deq.dequantize(dt)).astype(od)
        n = n_words // self.words  # reduced elements per row
        w = self.packed.reshape(out, n, self.words)
        xs = x.astype(f32).reshape(t, n, self.words, 8)
        codes = [
            magic_codes((w[:, :, k] >> jnp.uint32(4 * e)) & jnp.uint32(15), f32)
            for k in range(self.words)
            for e in range(8)
        ]  # [out, n] each, code 8 * k + e of every element
        per_element = n_words // self.scales.shape[1] // self.words  # elements per group
        s = jnp.repeat(self.scales.astype(f32), per_element, axis=1)  # [out, n]
        b = jnp.repeat(self.biases.astype(f32), per_element, axis=1)
        rows = []
        for r in range(t):
            xr = xs[r].reshape(n, self.words * 8)
            dot = codes[0] * xr[:, 0]
            for c in range(1, self.words * 8):
                dot = dot + codes[c] * xr[:, c]
            elements = dot * s + b * xr.sum(axis=1)  # [out, n]
            parts = split_parts(out, n) if self.split else 1
            with jax.named_scope(REDUCE_SCOPE):
                partial = jnp.sum(elements.reshape(out, parts, n // parts), axis=2)
            rows.append(partial.sum(axis=1))
        return jnp.stack(rows).astype(od)


def split_parts(out: int, n: int) -> int:
    """The largest power of two ``S <= SPLIT_ROWS / out`` that divides ``n``."""
    parts = 1
    while out * parts * 2 <= SPLIT_ROWS and n % (parts * 2) == 0:
        parts *= 2
    return parts


def to_planar(codes: np.ndarray) -> np.ndarray:
    """uint8 codes ``[out, in]`` -> ``u32-planar`` words ``[out, in / 8]``: nibble ``e`` of word
    ``j`` holds the code of input ``e * in/8 + j``."""
    out, n_in = codes.shape
    planes = codes.reshape(out, 8, n_in // 8).astype(np.uint32)
    shifts = (np.arange(8, dtype=np.uint32) * np.uint32(4))[None, :, None]
    return np.bitwise_or.reduce(planes << shifts, axis=1)


def _reduce(w: QuantizedLinear, form: str) -> ReduceInt4Linear:
    if form == "u32-magic":
        codes = np.asarray(w.packed)
    elif form == "u32-planar":
        codes = to_planar(quant_mod.unpack(np.asarray(w.packed), 4))
    else:
        codes = quant_mod.unpack(np.asarray(w.packed), 4).astype(jnp.uint4)
    return ReduceInt4Linear(codes, np.asarray(w.scales), np.asarray(w.biases), w.group_size, form)


def _reduce_spec(w: QuantizedLinear, form: str) -> ReduceInt4Linear:
    out, n_in = w.shape
    codes = w.packed if form.startswith("u32") else jax.ShapeDtypeStruct((out, n_in), jnp.uint4)
    return ReduceInt4Linear(codes, w.scales, w.biases, w.group_size, form)


def _native(w: QuantizedLinear, form: str) -> NativeInt4Linear:
    codes = quant_mod.unpack(np.asarray(w.packed), 4)  # uint8 [out, in]
    scales = np.asarray(w.scales).astype(np.float32)
    biases = np.asarray(w.biases).astype(np.float32)
    signed = form.startswith("s4")
    if signed:  # q * s + b == (q - 8) * s + (b + 8 s)
        codes = codes.astype(np.int8) - np.int8(8)
        biases = biases + np.float32(8) * scales
    dtype = jnp.int4 if signed else jnp.uint4
    if form in GROUPED_FORMS:
        out = codes.shape[0]
        codes = codes.reshape(out, -1, w.group_size).transpose(1, 0, 2)  # [groups, out, g]
    if form in GROUPED_FORMS or form == "u4-affine-io":
        codes, scales, biases = codes.T if codes.ndim == 2 else codes, scales.T, biases.T
    return NativeInt4Linear(
        np.ascontiguousarray(codes).astype(dtype),
        np.ascontiguousarray(scales),
        np.ascontiguousarray(biases),
        w.group_size,
        form,
    )


def _native_spec(w: QuantizedLinear, form: str) -> NativeInt4Linear:
    out, n_in = w.shape
    groups = n_in // w.group_size
    dtype = jnp.int4 if form.startswith("s4") else jnp.uint4
    if form in GROUPED_FORMS:
        codes, per_group = (groups, out, w.group_size), (groups, out)
    elif form == "u4-affine-io":
        codes, per_group = (n_in, out), (groups, out)
    else:
        codes, per_group = (out, n_in), (out, groups)
    f32 = jax.ShapeDtypeStruct(per_group, jnp.float32)
    return NativeInt4Linear(jax.ShapeDtypeStruct(codes, dtype), f32, f32, w.group_size, form)


def form_of(representation: str, name: str | None = None) -> str:
    """The form linear ``name`` takes in ``representation`` (a mix names one per linear; the
    head and embedding, ``name=None``, take the mix's default)."""
    mix = MIXES.get(representation)
    return representation if mix is None else mix.get(name, mix[None])


def convert_linear(w, representation: str):
    """One quantized linear (MLX format) in ``representation``; float weights pass through."""
    if not isinstance(w, QuantizedLinear) or representation == BASELINE:
        return w
    is_spec = isinstance(w.packed, jax.ShapeDtypeStruct)
    if representation != PALLAS and w.bits != 4:  # the Pallas kernel says so in its own words
        raise quant_mod.QuantizationError(f"representation {representation!r} needs 4-bit codes, got {w.bits}")
    if representation in NATIVE_FORMS:
        return _native_spec(w, representation) if is_spec else _native(w, representation)
    if representation in REDUCE_FORMS:
        return _reduce_spec(w, representation) if is_spec else _reduce(w, representation)
    if representation in WORD_FORMS:
        words, split = WORD_FORMS[representation], representation == "u32-word-split"
        return WordInt4Linear(w.packed, w.scales, w.biases, w.group_size, words, split)
    if representation == PALLAS:
        return PallasInt4Linear.from_mlx(w)
    raise ValueError(f"unknown representation {representation!r}; known: {REPRESENTATIONS}")


DENSE_FORMS = ("dot", "reduce")  # a float linear's GEMV: XLA's dot, or multiply + reduce
# A float linear laid [in, out] (DenseIOLinear), the head an untied [hidden, vocab] copy: the
# IREE-CUDA study's form (lab/iree_cuda_study.py), not a dense baseline the studies hold int4 to.
DENSE_IO = "io"
# the head: a float one in a dense form; "int4": a quantized one in the representation
HEAD_FORMS = (*DENSE_FORMS, DENSE_IO, "int4")


def _float_form(w, form: str):
    if form not in (*DENSE_FORMS, DENSE_IO):
        raise ValueError(f"unknown dense form {form!r}; known: {(*DENSE_FORMS, DENSE_IO)}")
    if w is None or isinstance(w, LinearForm):
        return w
    if form == "reduce":
        return DenseReduceLinear(w)
    return DenseIOLinear.from_dense(w) if form == DENSE_IO else w


def with_head(weights: Weights, head: str, representation: str | None = None) -> Weights:
    """A float head (the embedding when tied; it is still gathered as the table) as the dot
    (``head="dot"``, as loaded), as multiply + reduce (``"reduce"``) or as its own ``[hidden,
    vocab]`` copy (``"io"``: the embedding stays the table, the head is untied); ``"int4"``: a
    quantized head (:func:`weights.quantize_weights` with ``embedding=True``) in ``representation``."""
    if head == "int4":
        if not isinstance(weights.embed, QuantizedLinear):
            raise ValueError("head 'int4' needs a quantized embedding (quantize_weights(..., embedding=True))")
        h = weights.lm_head
        return dataclasses.replace(
            weights,
            embed=convert_linear(weights.embed, form_of(representation)),
            lm_head=None if h is None else convert_linear(h, form_of(representation)),
        )
    if head == DENSE_IO:
        h = weights.embed if weights.lm_head is None else weights.lm_head
        if isinstance(h, LinearForm):
            raise ValueError(f"head 'io' needs a float head, got {type(h).__name__}")
        return dataclasses.replace(weights, lm_head=_float_form(h, DENSE_IO))
    return dataclasses.replace(
        weights, embed=_float_form(weights.embed, head), lm_head=_float_form(weights.lm_head, head)
    )


def convert_dense(weights: Weights, form: str) -> Weights:
    """Every float linear and the float head as ``form`` (:data:`DENSE_FORMS`: the dense
    baseline's other forms, so int4 is held to the fastest dense GEMV measured; or
    :data:`DENSE_IO`)."""
    return with_head(map_linears(weights, lambda w: _float_form(w, form)), form)


def convert(weights: Weights, representation: str, head: str = "dot") -> Weights:
    """The quantized linears of every layer (stacked or not) in ``representation`` (arrays or
    shape specs; a mix gives each linear its own form), the float head as ``head`` (:func:`with_head`).

    The embedding keeps its checkpoint form (it is gathered, not multiplied).
    """
    if representation not in REPRESENTATIONS:
        raise ValueError(f"unknown representation {representation!r}; known: {REPRESENTATIONS}")
    weights = with_head(weights, head, representation)
    layers = []
    for i, layer in enumerate(weights.layers):
        fields = {}
        for name in linear_fields(layer):
            try:
                fields[name] = convert_linear(getattr(layer, name), form_of(representation, name))
            except quant_mod.QuantizationError as e:
                raise quant_mod.QuantizationError(f"layers.{i}.{name}: {e}") from None
        layers.append(dataclasses.replace(layer, **fields))
    return dataclasses.replace(weights, layers=tuple(layers))
