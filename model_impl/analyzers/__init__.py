"""Analyzers of the compilers' own dumps: does the int4 dequant sit in the matmul's kernel?

Plain functions over text, one module per dump: the exported StableHLO (:mod:`.stablehlo`),
XLA's optimized HLO (:mod:`.xla_hlo`), IREE's executable sources (:mod:`.iree_dispatch`).
:mod:`.dumps` produces the texts from a graph's shapes; :mod:`.minimal` holds the smallest
graphs that make each verdict flip. The verdict vocabulary lives here.
"""

# Per graph: the unpack sits in the same kernel as its contraction (fused), some kernel writes
# a full-size float weight (materialized), or there is no int4 unpack at all.
FUSED, MATERIALIZED, NO_DEQUANT = "fused", "materialized", "no-dequant"

# Bytes per element of the float types a materialized weight can be written in.
FLOAT_BYTES = {"f32": 4, "bf16": 2, "f16": 2}


def element_count(dims) -> int:
    """Elements of a shape given as an iterable of dimension strings or ints (empty: a scalar)."""
    n = 1
    for d in dims:
        if d != "":
            n *= int(d)
    return n
