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
``pallas-u32``     the other route, for comparison: a hand-written Pallas GEMV over uint32
                   words (a ``custom_call`` in the graph; see :mod:`model_impl.pallas_int4`)
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
from .linears import Int4Form, QuantizedLinear, contract
from .weights import LINEAR_NAMES, Weights

BASELINE = "u32-affine"
GROUPED_FORMS = ("s4-grouped", "u4-grouped")
NATIVE_FORMS = ("u4-affine", "u4-affine-io", "s4-scale-gsum", *GROUPED_FORMS)
PALLAS = "pallas-u32"
REPRESENTATIONS = (BASELINE, *NATIVE_FORMS, PALLAS)


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

    def matmul(self, x: jax.Array) -> jax.Array:
        """In ``x``'s dtype: a rebuilt weight in it, every contraction accumulated in float32."""
        t, g, dt = x.shape[0], self.group_size, x.dtype
        f32 = jnp.float32
        if self.form in GROUPED_FORMS:
            groups, out, _ = self.codes.shape
            xg = x.reshape(t, groups, g).transpose(1, 0, 2)  # [groups, t, g]
            codes = self.codes.astype(dt)  # [groups, out, g]: the batch dimension leads
            partial = contract("Gtg,Gog->Gto", xg, codes)  # float32 partial sums per group
            y = contract("Gto,Go->to", partial, self.scales.astype(f32))
            y = y + contract("Gt,Go->to", xg.astype(f32).sum(axis=-1), self.biases.astype(f32))
            return y.astype(dt)
        if self.form == "u4-affine-io":
            n_in, out = self.codes.shape
            w = self.codes.astype(dt).reshape(n_in // g, g, out)
            w = (w * self.scales.astype(dt)[:, None, :] + self.biases.astype(dt)[:, None, :]).reshape(n_in, out)
            return contract("ti,io->to", x, w).astype(dt)
        out, n_in = self.codes.shape
        groups = n_in // g
        codes = self.codes.astype(dt).reshape(out, groups, g)
        if self.form == "u4-affine":
            w = (codes * self.scales.astype(dt)[:, :, None] + self.biases.astype(dt)[:, :, None]).reshape(out, n_in)
            return contract("ti,oi->to", x, w).astype(dt)
        if self.form == "s4-scale-gsum":
            x_sums = x.astype(f32).reshape(t, groups, g).sum(axis=-1)  # [t, groups]
            w = (codes * self.scales.astype(dt)[:, :, None]).reshape(out, n_in)
            bias_term = contract("tG,oG->to", x_sums, self.biases.astype(f32))
            return (contract("ti,oi->to", x, w) + bias_term).astype(dt)
        raise ValueError(f"unknown native int4 form {self.form!r}; known: {NATIVE_FORMS}")


def _native(w: QuantizedLinear, form: str) -> NativeInt4Linear:
    if w.bits != 4:
        raise quant_mod.QuantizationError(f"representation {form!r} needs 4-bit codes, got {w.bits}")
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


def convert_linear(w, representation: str):
    """One quantized linear (MLX format) in ``representation``; float weights pass through."""
    if not isinstance(w, QuantizedLinear) or representation == BASELINE:
        return w
    is_spec = isinstance(w.packed, jax.ShapeDtypeStruct)
    if representation in NATIVE_FORMS:
        return _native_spec(w, representation) if is_spec else _native(w, representation)
    if representation == PALLAS:
        from .pallas_int4 import PallasInt4Linear

        return PallasInt4Linear.spec_from(w) if is_spec else PallasInt4Linear.from_mlx(w)
    raise ValueError(f"unknown representation {representation!r}; known: {REPRESENTATIONS}")


def convert(weights: Weights, representation: str) -> Weights:
    """The 7 quantized linears of every layer in ``representation`` (arrays or shape specs).

    The embedding keeps its checkpoint form (it is gathered, not multiplied).
    """
    if representation not in REPRESENTATIONS:
        raise ValueError(f"unknown representation {representation!r}; known: {REPRESENTATIONS}")
    layers = []
    for i, layer in enumerate(weights.layers):
        fields = {}
        for name in LINEAR_NAMES:
            try:
                fields[name] = convert_linear(getattr(layer, name), representation)
            except quant_mod.QuantizationError as e:
                raise quant_mod.QuantizationError(f"layers.{i}.{name}: {e}") from None
        layers.append(dataclasses.replace(layer, **fields))
    return dataclasses.replace(weights, layers=tuple(layers))
