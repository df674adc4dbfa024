"""MLX-compatible affine quantization: the packed int4 format this project verifies.

Format (identical to ``mlx.core.quantize(w, group_size, bits)``, mode "affine"):

* ``w`` is ``[..., in]`` (a linear weight is ``[out, in]``); ``in`` is split into groups of
  ``group_size`` consecutive columns, each with one ``scale`` and one ``bias``:
  ``w ~= q * scale + bias`` with integer codes ``q`` in ``[0, 2**bits)``.
* Codes are packed ``32 // bits`` per ``uint32``, element 0 in the lowest bits:
  ``word = sum(q[k] << (k * bits))``. Shapes: ``wq [..., in * bits // 32]`` uint32,
  ``scales`` and ``biases`` ``[..., in // group_size]`` in ``w``'s dtype
  (float32, float16 or bfloat16).
* The quantizer is not plain min/max. Per group, in float32: the endpoint with the
  larger magnitude (``edge``) is made exactly representable: ``scale = (max - min) /
  (2**bits - 1)``, signed so that codes grow away from ``edge``;
  ``q0 = rint(edge / scale)``; if ``q0 != 0`` then ``scale = edge / q0`` and
  ``bias = edge``. The far end may therefore land up to ~1 scale away (not 0.5).
  Scales can be negative. ``scale`` is floored at 1e-7 in magnitude for constant groups.
* ``dequantize`` computes ``q * scale + bias`` in the scales' dtype, one rounding per op,
  as MLX does.

Defaults: 4 bits, group 64 (8 codes per uint32). Bits 2, 4, 8 and groups 32, 64, 128.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

SUPPORTED_BITS = (2, 4, 8)
SUPPORTED_GROUP_SIZES = (32, 64, 128)
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))
_SCALE_FLOOR = np.float32(1e-7)  # MLX's eps for constant groups


class QuantizationError(ValueError):
    """An argument the packed format cannot represent (bits, group size, shape, codes)."""


def check_format(bits: int, group_size: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise QuantizationError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")
    if group_size not in SUPPORTED_GROUP_SIZES:
        raise QuantizationError(f"group_size must be one of {SUPPORTED_GROUP_SIZES}, got {group_size}")


def codes_per_word(bits: int) -> int:
    return 32 // bits


def pack(codes: np.ndarray, bits: int = 4) -> np.ndarray:
    """Pack integer codes ``[..., n]`` into uint32 words ``[..., n * bits // 32]``."""
    check_format(bits, SUPPORTED_GROUP_SIZES[0])
    codes = np.asarray(codes)
    per_word = codes_per_word(bits)
    if codes.ndim < 1 or codes.shape[-1] % per_word:
        raise QuantizationError(f"last dimension {codes.shape[-1:]} is not a multiple of {per_word} codes per word")
    if codes.size and (codes.min() < 0 or codes.max() >= 1 << bits):
        raise QuantizationError(
            f"codes out of range for {bits} bits: found [{codes.min()}, {codes.max()}], allowed [0, {(1 << bits) - 1}]"
        )
    c = codes.astype(np.uint32).reshape(*codes.shape[:-1], -1, per_word)
    shifts = np.arange(per_word, dtype=np.uint32) * np.uint32(bits)
    # Fields do not overlap, so OR-reduce == sum; bitwise_or keeps it in uint32.
    return np.bitwise_or.reduce(c << shifts, axis=-1)


def unpack(wq: np.ndarray, bits: int = 4) -> np.ndarray:
    """Inverse of :func:`pack`: uint32 ``[..., w]`` -> uint8 codes ``[..., w * 32 // bits]``."""
    check_format(bits, SUPPORTED_GROUP_SIZES[0])
    wq = np.asarray(wq)
    if wq.dtype != np.uint32:
        raise QuantizationError(f"packed weights must be uint32, got {wq.dtype}")
    shifts = np.arange(codes_per_word(bits), dtype=np.uint32) * np.uint32(bits)
    codes = (wq[..., None] >> shifts) & np.uint32((1 << bits) - 1)
    return codes.reshape(*wq.shape[:-1], -1).astype(np.uint8)


def _check_weight(w: np.ndarray, group_size: int, bits: int) -> None:
    check_format(bits, group_size)
    if w.ndim < 2:
        raise QuantizationError(f"weight must have rank >= 2, got shape {w.shape}")
    if w.dtype not in FLOAT_DTYPES:
        raise QuantizationError(f"weight dtype must be float32/float16/bfloat16, got {w.dtype}")
    if w.shape[-1] % group_size:
        raise QuantizationError(
            f"input dimension {w.shape[-1]} (shape {w.shape}) is not divisible by group_size {group_size}"
        )
    if not np.isfinite(w.astype(np.float32)).all():
        raise QuantizationError("weight contains NaN or Inf")


def quantize(w: np.ndarray, group_size: int = 64, bits: int = 4):
    """Quantize ``w [..., in]`` -> ``(wq uint32, scales, biases)``, bit-identical to MLX."""
    w = np.asarray(w)
    _check_weight(w, group_size, bits)
    n_bins = np.float32((1 << bits) - 1)
    g = w.astype(np.float32).reshape(*w.shape[:-1], -1, group_size)
    w_max = g.max(axis=-1, keepdims=True)
    w_min = g.min(axis=-1, keepdims=True)
    min_is_edge = np.abs(w_min) > np.abs(w_max)
    scale = np.maximum((w_max - w_min) / n_bins, _SCALE_FLOOR)
    scale = np.where(min_is_edge, scale, -scale)
    edge = np.where(min_is_edge, w_min, w_max)
    q0 = np.rint(edge / scale)
    nonzero = q0 != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(nonzero, edge / np.where(nonzero, q0, 1), scale)
    bias = np.where(nonzero, edge, np.float32(0))
    codes = np.clip(np.rint((g - bias) / scale), 0, n_bins).astype(np.uint32)
    wq = pack(codes.reshape(w.shape), bits)
    return wq, scale[..., 0].astype(w.dtype), bias[..., 0].astype(w.dtype)


def dequantize(wq, scales, biases, group_size: int = 64, bits: int = 4) -> np.ndarray:
    """``q * scale + bias`` in the dtype of ``scales``; shape ``[..., in]``."""
    check_format(bits, group_size)
    wq, scales, biases = np.asarray(wq), np.asarray(scales), np.asarray(biases)
    check_packed_shapes(wq.shape, scales.shape, biases.shape, group_size, bits)
    dtype = scales.dtype
    codes = unpack(wq, bits).reshape(*scales.shape, group_size).astype(dtype)
    w = codes * scales[..., None] + biases.astype(dtype)[..., None]
    return w.reshape(*wq.shape[:-1], -1).astype(dtype)


def check_packed_shapes(wq_shape, scales_shape, biases_shape, group_size, bits) -> None:
    n_in = wq_shape[-1] * codes_per_word(bits)
    want = (*wq_shape[:-1], n_in // group_size) if n_in % group_size == 0 else None
    if want is None or tuple(scales_shape) != want or tuple(biases_shape) != want:
        raise QuantizationError(
            f"packed weight {tuple(wq_shape)} ({n_in} inputs at {bits} bits, group "
            f"{group_size}) needs scales and biases of shape {want}, got "
            f"{tuple(scales_shape)} and {tuple(biases_shape)}"
        )
