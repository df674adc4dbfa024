"""XLA's optimized GPU HLO: is the dequant inside the matmul's fusion, or its own fusion?"""

from __future__ import annotations

import dataclasses

import jaxlib
import pytest

from model_impl import analyzers
from model_impl.analyzers import dumps, xla_hlo
from model_impl.llama.shapes import LLAMA32_SHAPES, llama32_config
from model_impl.llama.weights import linear_weight_bytes, linear_weight_elements, parse_mode_label, specs

pytestmark = pytest.mark.cuda


# Pinned for jax 0.11.2 + CUDA on the H100. Decode (M = 1): XLA rewrites each dot as
# multiply + reduce and fuses the dequant into it, so no f32 weight is written. Prefill
# (M = 16 or 64): the dot is a Triton gemm fusion and each dequant its own loop fusion that
# writes the full f32 weight.
EXPECTED = {"decode": analyzers.FUSED, "prefill": analyzers.MATERIALIZED}


@pytest.mark.parametrize("mode", ["int4", "int4-bf16"])
@pytest.mark.parametrize("graph", ["decode", "prefill"])
def test_xla_cuda_int4_fuses_decode_and_materializes_prefill(real_model, cuda_record, graph, mode):
    """In float32 and in bfloat16 compute (the rebuilt weight then has the compute dtype's bytes)."""
    _, dtype = parse_mode_label(mode)
    out, configs = {}, {}
    for name, base, shapes in (
        ("smollm2-135m", real_model[0], (16, 128)),
        ("llama-3.2-1b", llama32_config(), LLAMA32_SHAPES),
    ):
        cfg = configs[name] = dataclasses.replace(base, dtype=dtype)
        dump = dumps.xla_hlo(cfg, specs(cfg, "int4"), graph, *shapes, platform="cuda")
        v = xla_hlo.analyze_xla_hlo(dump.hlo, linear_weight_elements(cfg))
        out[name] = {
            "verdict": v.verdict,
            "fused_dequants": v.fused_count,
            "dequants": len(v.dequants),
            "materialized_bytes": v.materialized_bytes,
            "temp_bytes": dump.temp_bytes,
            "compile_seconds": round(dump.compile_seconds, 2),
        }
        cuda_record["lowering"][f"xla-cuda/{mode}/{graph}/{name}"] = out[name]
    for name, o in out.items():
        where = f"jaxlib {jaxlib.__version__} on CUDA, {name} {mode} {graph}"
        assert o["verdict"] == EXPECTED[graph], f"{where}: verdict now {o} (was {EXPECTED[graph]})"
        want = linear_weight_bytes(configs[name]) if EXPECTED[graph] == analyzers.MATERIALIZED else 0
        assert o["materialized_bytes"] == want, f"{where}: {o}"
