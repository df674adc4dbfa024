"""The custom-kernel route, as a yardstick: one int4 GEMV kernel of our own, in Pallas (Triton).

Not the product: its StableHLO carries a ``custom_call`` that only XLA-CUDA can run (IREE
cannot compile it, GSPMD cannot shard it; on the CPU it runs in Pallas' interpreter, for
correctness tests only). It answers "what does one kernel of our own buy over the in-graph forms"
(issue 27); the representation is named by its kernel, :data:`FORM`.

Weights: MLX's affine int4 as stored (no conversion at load): ``words [out, in/8]`` uint32 with
code ``k`` of a row in nibble ``k % 8`` of word ``k // 8``; ``scales``/``biases`` ``[out, in/64]``
in the checkpoint's dtype; ``w = q * s + b``. Activations ``x [B, in]`` (B = 1 to
:data:`MAX_ROWS` rows; more rows, a prefill, take the in-graph dequant and XLA's dot).

The kernel views the words as ``[out, groups, 8]`` (a free reshape) and x as ``[B, groups, 8
words, 8 codes]``. A program owns ``rows`` output rows and walks its share of the groups in steps
of ``step_words`` words (``split`` parts of the groups on a second grid axis: split-K). Per step it
loads the words once, turns each nibble into a float once (shared by the B activation rows), and
for each activation row multiplies the codes into the activations of their inputs (a stride-8
load of x per nibble) and keeps the per-word partial sums. Modes (how the dequant is computed):

* ``fac32``: factored, float32: per word ``s * sum_e(q_e x_e) + b * sum_e(x_e)`` (one FMA per
  code and row, scale and bias once per word); not the host's rounding of ``q*s+b``: closer to
  exact; the form's mode in float32.
* ``deq32``: ``w = q*s + b`` per code in float32 (shared by the rows), then ``w * x``.
* ``deqx``: ``w = q*s + b`` per code in x's dtype, one rounding per op (the host dequant of that
  dtype, which the parity rule holds a half-precision model to), ``w * x`` in float32; in float32
  it is ``deq32``. The form's mode in bf16 and float16 (:func:`config_for`).
* ``fac16``: the factored form with the per-word dot ``sum_e(q_e x_e)`` in bf16 (cheap, lossy).
* ``dot``: tensor cores. x padded to :data:`DOT_ROWS` rows and laid ``[rows, 8, in/8]`` outside
  the kernel (x of nibble e of every word contiguous); per step and nibble, the words' codes
  dequantized in x's half dtype (as ``deqx``) into ``[rows, step_words]`` and one ``dot`` of the
  activations of that nibble with them, accumulated in float32: 8 tensor-core dots per step,
  whatever the batch (the FMA modes do one multiply per code and activation row).

Code to float (``cvt``): ``cvt`` (integer-to-float convert), ``magic`` (nibble or-ed under a
fixed exponent, bitcast, minus the exponent's value: exact), ``magic2`` (``fac32`` only: nibbles
0-4 masked in place, no shift, giving ``q * 16^e`` exactly, with x pre-scaled by ``16^-e``;
nibbles 5-7 from one ``w >> 12`` per word: 3 instructions per code instead of 4).

Split-K (``split`` > 1): partial sums ``[split, B, out]`` float32 summed by XLA (one small extra
kernel), or ``atomic``: ``atomic_add`` into a zeroed float32 output. ``acc``: ``3d`` keeps
``[rows, gb, 8]`` partial sums per activation row across steps (summed once at the end), ``1d``
sums each step's terms to ``[rows]``.

The configuration per shape and batch (:func:`config_for`) comes from the GEMV sweep
(:mod:`model_impl.lab.pallas_sweep`) on the GPU named with it; a shape the sweep did not tune
takes :data:`DEFAULT` scaled to its size.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from .. import quant as quant_mod
from .linears import MAGIC, Int4Form, QuantizedLinear, contract, dequantize, magic_codes

FORM = "pallas-triton"  # the representation's name: the kernel it runs
GROUP = 64  # codes per quantization group (the kernel's only group size)
WPG = GROUP // 8  # uint32 words per group
MAX_ROWS = 16  # activation rows the kernel takes (decode batches); more go through XLA's dot
F32, BF16 = jnp.float32, jnp.bfloat16
_, MAGIC_F32, OFFSET_F32 = MAGIC[np.dtype(np.float32)]  # q | exponent of 2^23, as float32: 2^23 + q (magic2)


MODES = ("fac32", "deq32", "deqx", "fac16", "dot")
DOT_ROWS = 16  # the smallest M of a Triton dot: x is padded to it


@dataclasses.dataclass(frozen=True)
class Variant:
    """One configuration of the kernel (see the module docstring)."""

    rows: int
    step_words: int
    split: int = 1
    warps: int = 4
    stages: int = 3
    mode: str = "fac32"
    cvt: str = "magic2"
    acc: str = "3d"
    scales: str = "bf16"  # the scales' dtype the sweep feeds it ("f32": converted to float32)
    atomic: bool = False
    xload: str = "strided"  # x of code e: a stride-8 load per e, or one load split in 8 (jnp.split)

    @property
    def name(self) -> str:
        s = f"r{self.rows}-k{self.step_words}-s{self.split}{'a' if self.atomic else ''}"
        s = f"{s}-w{self.warps}-st{self.stages}-{self.mode}-{self.cvt}-{self.acc}-s{self.scales}"
        return s + ("-xsplit" if self.xload == "split" else "")

    @property
    def tile(self) -> tuple[int, int, int]:
        return (self.rows, self.step_words, self.split)

    def invalid(self, out: int, n_in: int) -> str | None:
        """Why this variant cannot run at ``[out, n_in]`` (None if it can)."""
        words, groups, gb = n_in // 8, n_in // GROUP, self.step_words // WPG
        pow2 = lambda n: n > 0 and n & (n - 1) == 0
        if n_in % GROUP:
            return f"the input size {n_in} is not a multiple of the group, {GROUP}"
        if not (pow2(self.rows) and pow2(gb) and self.step_words % WPG == 0):
            return "rows and step_words / 8 must be powers of two (Triton block sizes)"
        if out % self.rows or groups % self.split or (groups // self.split) % gb:
            return f"tile {self.tile} does not divide [{out}, {n_in}] ({words} words, {groups} groups per row)"
        if self.atomic and self.split == 1:
            return "atomic needs split > 1"
        if self.mode not in MODES:
            return f"unknown mode {self.mode!r}; known: {', '.join(MODES)}"
        if self.mode == "dot" and (self.rows < 16 or self.step_words < 16 or self.atomic or self.xload != "strided"):
            return "the dot mode needs rows and step_words of at least 16 (a Triton dot's sizes), no atomic, strided x"
        if self.cvt == "magic2" and self.mode != "fac32":
            return "magic2 (codes scaled by 16^e) needs the factored float32 form"
        return None


def _codes(w, e: int, dtype, cvt: str):
    """Nibble ``e`` of every word as an exact float of ``dtype``."""
    n = (w >> jnp.uint32(4 * e)) & jnp.uint32(15) if e else w & jnp.uint32(15)
    return n.astype(dtype) if cvt == "cvt" else magic_codes(n, dtype)


def _codes_noshift(w):
    """(code floats, exponent k) per nibble with code e read in place as ``q * 2^k`` (exact while
    the nibble sits below float32's 23 mantissa bits): nibbles 0-4 of ``w``, 5-7 of ``w >> 12``."""
    hi = w >> jnp.uint32(12)
    out = []
    for e in range(8):
        src, k = (w, 4 * e) if e < 5 else (hi, 4 * (e - 3))
        m = (src & jnp.uint32(15 << k)) | jnp.uint32(MAGIC_F32)
        out.append((jax.lax.bitcast_convert_type(m, F32) - F32(OFFSET_F32), k))
    return out


def _shared(w, s, b, v: Variant, dtype):
    """What every activation row of a step shares: per nibble, the code floats (factored modes:
    ``(q, k)`` with the codes scaled by ``2^k``) or the dequantized weights (``deq`` modes)."""
    if v.mode == "deqx" and dtype != F32:
        sx, bx = s.astype(dtype)[:, :, None], b.astype(dtype)[:, :, None]
        return [((_codes(w, e, dtype, v.cvt) * sx + bx).astype(F32), 0) for e in range(8)]
    if v.mode in ("deq32", "deqx"):
        s32, b32 = s.astype(F32)[:, :, None], b.astype(F32)[:, :, None]
        return [(_codes(w, e, F32, v.cvt) * s32 + b32, 0) for e in range(8)]
    if v.mode == "fac16":
        return [(_codes(w, e, BF16, v.cvt), 0) for e in range(8)]
    if v.cvt == "magic2":
        return _codes_noshift(w)
    return [(_codes(w, e, F32, v.cvt), 0) for e in range(8)]


def _row_terms(parts, xs, s, b, v: Variant):
    """One activation row's share of the output per word, float32 ``[rows, gb, 8]``: ``parts``
    from :func:`_shared`, xs 8 x ``[gb, 8]`` (x of code e of each word), s and b ``[rows, gb]``."""
    if v.mode in ("deqx", "deq32"):
        terms = [w * xs[e].astype(F32)[None] for e, (w, _) in enumerate(parts)]
        return sum(terms[1:], terms[0])
    x32 = [xe.astype(F32) for xe in xs]
    xw = sum(x32[1:], x32[0])  # [gb, 8]: the word's 8 activations summed (the bias's factor)
    if v.mode == "fac16":
        dot16 = parts[0][0] * xs[0].astype(BF16)[None]
        for e in range(1, 8):
            dot16 = dot16 + parts[e][0] * xs[e].astype(BF16)[None]
        dot = dot16.astype(F32)
    else:
        terms = [q * ((x32[e] * F32(2.0**-k)) if k else x32[e])[None] for e, (q, k) in enumerate(parts)]
        dot = sum(terms[1:], terms[0])
    return dot * s.astype(F32)[:, :, None] + b.astype(F32)[:, :, None] * xw[None]


def _kernel(*refs, v: Variant, steps: int, batch: int):
    # x_ref [B, groups, 8, 8] (x[b, 64 g + 8 j + e]); w_ref [out, groups, 8] uint32 (MLX words);
    # s_ref, b_ref [out, groups]; o_ref [B, out] (x's dtype, or float32 when atomic) or
    # [split, B, out] float32.
    x_ref, w_ref, s_ref, b_ref, o_ref = *refs[:4], refs[-1]
    gb = v.step_words // WPG
    rows = pl.ds(pl.multiple_of(pl.program_id(0) * v.rows, v.rows), v.rows)
    part = pl.program_id(1) if v.split > 1 else 0

    def step(t, accs):
        g0 = (part * steps + t) * gb  # a Python int when whole-K without split
        groups = pl.ds(g0 if isinstance(g0, int) else pl.multiple_of(g0, gb), gb)
        s, b = s_ref[rows, groups], b_ref[rows, groups]
        parts = _shared(w_ref[rows, groups, :], s, b, v, x_ref.dtype)
        new = []
        for r in range(batch):
            if v.xload == "split":  # one [gb, 8, 8] load, split along the code axis
                xs = [p.reshape(gb, WPG) for p in jnp.split(x_ref[r, groups, :, :], 8, axis=2)]
            else:  # stride-8 loads: code e of each word
                xs = [x_ref[r, groups, :, e] for e in range(8)]
            terms = _row_terms(parts, xs, s, b, v)
            new.append(accs[r] + (terms.sum(axis=(1, 2)) if v.acc == "1d" else terms))
        return tuple(new)

    zero = jnp.zeros((v.rows,) if v.acc == "1d" else (v.rows, gb, 8), F32)
    accs = (zero,) * batch
    accs = step(0, accs) if steps == 1 else jax.lax.fori_loop(0, steps, step, accs)
    for r in range(batch):
        y = accs[r] if v.acc == "1d" else accs[r].sum(axis=(1, 2))
        if v.split == 1:
            o_ref[r, rows] = y.astype(o_ref.dtype)
        elif v.atomic:
            from jax.experimental.pallas import triton as pltriton

            pltriton.atomic_add(o_ref, (jnp.int32(r), rows), y)
        else:
            o_ref[part, r, rows] = y


def _dot_kernel(x_ref, w_ref, s_ref, b_ref, o_ref, *, v: Variant, steps: int):
    # x_ref [DOT_ROWS, 8, words] (x[b, 8 j + e] at [b, e, j]); w_ref [out, words] uint32 (MLX's);
    # s_ref, b_ref [out, groups]; o_ref [DOT_ROWS, out] or [split, DOT_ROWS, out] float32.
    gb = v.step_words // WPG
    rows = pl.ds(pl.multiple_of(pl.program_id(0) * v.rows, v.rows), v.rows)
    part = pl.program_id(1) if v.split > 1 else 0
    dt = x_ref.dtype

    def step(t, acc):
        k = part * steps + t
        words = pl.ds(pl.multiple_of(k * v.step_words, v.step_words), v.step_words)
        groups = pl.ds(pl.multiple_of(k * gb, gb), gb)
        w = w_ref[rows, words]  # [rows, step_words]
        per_word = lambda a: jnp.broadcast_to(a.astype(dt)[:, :, None], (v.rows, gb, WPG)).reshape(  # noqa: E731
            v.rows, v.step_words
        )
        s, b = per_word(s_ref[rows, groups]), per_word(b_ref[rows, groups])
        for e in range(8):
            we = _codes(w, e, dt, v.cvt) * s + b  # [rows, step_words]: nibble e of every word, dequantized
            # x_e @ w_e.T on tensor cores (lax.dot_general: pl.dot is gone from jax 0.12)
            acc = acc + jax.lax.dot_general(
                x_ref[:, e, words], we, (((1,), (1,)), ((), ())), preferred_element_type=F32
            )
        return acc

    acc = jnp.zeros((DOT_ROWS, v.rows), F32)
    acc = step(0, acc) if steps == 1 else jax.lax.fori_loop(0, steps, step, acc)
    if v.split == 1:
        o_ref[:, rows] = acc.astype(o_ref.dtype)
    else:
        o_ref[part, :, rows] = acc


def gemv(x, words, scales, biases, v: Variant, interpret: bool | None = None):
    """``x [B, in] @ dequant(W).T -> [B, out]`` in x's dtype, in one kernel (and a sum of the
    split-K parts); ``interpret`` defaults to "not on a GPU" (Pallas' interpreter)."""
    out, n_words = words.shape
    batch, groups = x.shape[0], n_words // WPG
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    steps = groups // v.split // (v.step_words // WPG)
    if v.mode == "dot":
        if x.dtype == F32 or batch > DOT_ROWS:
            raise ValueError(f"the dot mode takes half-precision x of at most {DOT_ROWS} rows, got {x.dtype} {x.shape}")
        xt = jnp.zeros((DOT_ROWS, n_words * 8), x.dtype).at[:batch].set(x)
        args, batch_k, kernel = (
            [xt.reshape(DOT_ROWS, n_words, 8).transpose(0, 2, 1), words, scales, biases],
            DOT_ROWS,
            _dot_kernel,
        )
    else:
        args = [x.reshape(batch, groups, WPG, 8), words.reshape(out, groups, WPG), scales, biases]
        batch_k, kernel = batch, functools.partial(_kernel, batch=batch)
    grid = (out // v.rows,) if v.split == 1 else (out // v.rows, v.split)
    kw = {}
    if not interpret:
        from jax.experimental.pallas import triton as pltriton

        kw["compiler_params"] = pltriton.CompilerParams(num_warps=v.warps, num_stages=v.stages)
    if v.split == 1:
        out_shape, aliases = jax.ShapeDtypeStruct((batch_k, out), x.dtype), {}
    elif v.atomic:
        out_shape, aliases = jax.ShapeDtypeStruct((batch_k, out), F32), {4: 0}
        args.append(jnp.zeros((batch_k, out), F32))
    else:
        out_shape, aliases = jax.ShapeDtypeStruct((v.split, batch_k, out), F32), {}
    y = pl.pallas_call(
        functools.partial(kernel, v=v, steps=steps),
        out_shape=out_shape,
        grid=grid,
        input_output_aliases=aliases,
        interpret=interpret,
        name="int4_gemv",
        **kw,
    )(*args)
    if v.split > 1 and not v.atomic:
        y = y.sum(axis=0)
    return y[:batch].astype(x.dtype)


# The tuned configuration per (out, in) at one row, from the H200 sweep
# (results/pallas-gemv-h200.json, 2026-12-04): each shape's fastest variant.
TUNED = {
    (8192, 2048): Variant(8, 256, 1, cvt="cvt"),
    (2048, 8192): Variant(8, 256, 4, cvt="cvt"),
    (2048, 2048): Variant(8, 256, 1, cvt="magic2"),
    (512, 2048): Variant(8, 128, 1, cvt="magic"),
}
DEFAULT = Variant(8, 256, 1)


def config_for(out: int, n_in: int, batch: int = 1, dtype=F32) -> Variant:
    """The kernel's configuration for one linear: the tuned tile of its shape, else the default
    with the largest whole-group step and row block that divide the shape; the 3-d accumulator
    (a register file per activation row) only at one or two rows; in half precision the dequant
    in x's dtype (``deqx``: the rounding the parity rule holds the model to), else ``fac32``."""
    v = TUNED.get((out, n_in), DEFAULT)
    if v.invalid(out, n_in):
        groups = n_in // GROUP
        gb = max(g for g in (1, 2, 4, 8, 16, 32, 64) if groups % g == 0 and g * WPG <= DEFAULT.step_words)
        rows = max(r for r in (1, 2, 4, 8) if out % r == 0)
        v = dataclasses.replace(DEFAULT, rows=rows, step_words=gb * WPG)
    if batch > 2:
        v = dataclasses.replace(v, acc="1d")
    if np.dtype(dtype) != np.dtype(np.float32):
        v = dataclasses.replace(v, mode="deqx", cvt="magic" if v.cvt == "magic2" else v.cvt)
    return v


def check_shape(out: int, n_in: int, group_size: int, bits: int, where: str = "") -> None:
    if bits != 4 or group_size != GROUP:
        raise quant_mod.QuantizationError(
            f"{where}the Pallas int4 kernel needs 4-bit codes in groups of {GROUP}; got {bits}-bit, group {group_size}"
        )
    if n_in % GROUP:
        raise quant_mod.QuantizationError(
            f"{where}the Pallas int4 kernel needs the input dimension to be a multiple of {GROUP}; got [{out}, {n_in}]"
        )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PallasInt4Linear(Int4Form):
    """MLX's words, scales and biases as stored; the GEMV through :func:`gemv`.

    Tensor parallel (``tp``, set by :func:`model_impl.llama.sharding.bind`): GSPMD cannot
    partition the kernel (a ``custom_call``: it would replicate its operands), so the linear runs
    it in ``shard_map`` over the mesh's axis: column-parallel (``"out"``) on each device's rows,
    row-parallel (``"in"``) on each device's input columns (whole groups) and a float32
    all-reduce of the partial products, then rounded to the output dtype."""

    words: jax.Array  # [out, in / 8] uint32 (MLX's)
    scales: jax.Array  # [out, groups], as stored
    biases: jax.Array  # [out, groups], as stored
    group_size: int = dataclasses.field(metadata=dict(static=True), default=GROUP)
    tp: tuple | None = dataclasses.field(metadata=dict(static=True), default=None)  # (mesh, "out" | "in")

    @staticmethod
    def from_mlx(w: QuantizedLinear) -> PallasInt4Linear:
        check_shape(*w.shape, w.group_size, w.bits)
        return PallasInt4Linear(w.packed, w.scales, w.biases, w.group_size)

    spec_from = from_mlx  # a spec's fields are specs: the same fields

    def mlx_words(self) -> QuantizedLinear:
        return QuantizedLinear(self.words, self.scales, self.biases, self.group_size, 4)

    def matmul(self, x: jax.Array, out_dtype=None) -> jax.Array:
        od = out_dtype or x.dtype
        if self.tp is not None:
            return self._sharded(x, od)
        if x.shape[0] > MAX_ROWS:
            # a prompt: the in-graph float32 dequant and XLA's dot
            return contract("ti,oi->to", x.astype(F32), dequantize(self.mlx_words(), F32)).astype(od)
        out, n_words = self.words.shape
        v = config_for(out, n_words * 8, x.shape[0], x.dtype)
        return gemv(x, self.words, self.scales, self.biases, v).astype(od)

    def _sharded(self, x: jax.Array, od) -> jax.Array:
        from jax.sharding import PartitionSpec as P

        mesh, by = self.tp  # check_vma off: a pallas_call's outputs carry no varying-axes type
        axis = mesh.axis_names[0]
        local = dataclasses.replace(self, tp=None)
        spec = P(axis, None) if by == "out" else P(None, axis)
        specs = dataclasses.replace(local, words=spec, scales=spec, biases=spec)
        if by == "out":
            run = lambda x, w: w.matmul(x, od)  # noqa: E731
            return jax.shard_map(run, mesh=mesh, in_specs=(P(), specs), out_specs=P(None, axis), check_vma=False)(
                x, local
            )
        run = lambda x, w: jax.lax.psum(w.matmul(x, F32), axis).astype(od)  # noqa: E731
        return jax.shard_map(run, mesh=mesh, in_specs=(P(None, axis), specs), out_specs=P(), check_vma=False)(x, local)


def lowering_target(device_kind: str = "NVIDIA H200"):
    """A context in which the kernel lowers for CUDA on a machine without a GPU: jax from 0.11 on
    asks Triton's lowering for the GPU it targets (an abstract device: its compute capability);
    jax 0.10 lowers without one (and has no abstract devices)."""
    import contextlib

    if not hasattr(jax.sharding, "AbstractDevice"):
        return contextlib.nullcontext()
    device = jax.sharding.AbstractDevice(device_kind=device_kind, num_cores=None, platform="gpu")
    auto = (jax.sharding.AxisType.Auto,)  # no sharding in types: the one-device kernel as it is
    return jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("gpu",), auto, abstract_device=device))
