"""The fusion matrix's CUDA cells that a test can pin: the Pallas reference kernel's
correctness and its custom_call, and XLA-CUDA's lowering of each representation at the
Llama-3.2-1B shapes (verdicts as measured on the H100, results/fusion-h100-xla-cuda.json)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from model_impl import analyzers, quant
from model_impl.analyzers import stablehlo
from model_impl.lab import fusion_matrix, linear_chain
from model_impl.llama.config import LLAMA32_CONFIG_PATH, load_hf_config
from model_impl.llama.linears import QuantizedLinear
from model_impl.llama.pallas_int4 import PallasInt4Linear
from model_impl.llama.representations import PALLAS, convert
from model_impl.llama.weights import specs

pytestmark = pytest.mark.cuda

# One [8192, 2048] linear at M=1: the kernel sums 2048 products per output in a different order
# than XLA's dot; inputs ~N(0,1), weights ~N(0, 1/2048), outputs ~N(0,1), float32 rounding
# over 2048 terms is ~1e-6. 1e-5 is 10x that and far below one quantization step (~1e-2).
PALLAS_VS_HOST_ATOL = 1e-5


@pytest.fixture(scope="module")
def gpu():
    try:
        return jax.devices("cuda")[0]
    except RuntimeError as e:
        pytest.skip(f"cuda: no CUDA device usable by JAX ({e})")


def test_fusion_pallas_gemv_on_xla_cuda_matches_host_dequant(gpu, cuda_record):
    rng = np.random.default_rng(0)
    out, n_in = linear_chain.LINEAR_SHAPE
    w = rng.standard_normal((out, n_in), dtype=np.float32) * np.float32(n_in**-0.5)
    q = QuantizedLinear(*quant.quantize(w, 64, 4), 64, 4)
    x = rng.standard_normal((1, n_in), dtype=np.float32)
    p = jax.device_put(PallasInt4Linear.from_mlx(q), gpu)
    with jax.default_device(gpu):  # Pallas reads the GPU's kind from the default device
        got = np.asarray(jax.jit(lambda x, p: p.matmul(x))(jax.device_put(x, gpu), p))
    want = x.astype(np.float64) @ q.dequantize().astype(np.float64).T
    err = float(np.abs(got - want).max())
    cuda_record["figures"]["pallas_gemv_max_abs_err"] = err
    assert err <= PALLAS_VS_HOST_ATOL


def test_fusion_pallas_decode_graph_on_xla_cuda_carries_custom_call(gpu, cuda_record):
    cfg = load_hf_config(LLAMA32_CONFIG_PATH)
    with jax.default_device(gpu):
        text = fusion_matrix.xla_stablehlo(cfg, convert(specs(cfg, "int4"), PALLAS))
    inv = stablehlo.stablehlo_inventory(text)
    cuda_record["figures"]["pallas_custom_calls"] = sorted(set(inv.custom_calls))
    assert inv.has_custom_call, "the Pallas row must be the custom_call route"
    assert any("triton" in t for t in inv.custom_calls), inv.custom_calls


# XLA-CUDA's verdict per fusion-matrix row on the Llama-3.2-1B decode graph, as measured on the
# H100 (jax 0.11.2): (verdict, linears whose codes only fused kernels read, of 112).
# u4-affine-io is the one layout that keeps XLA from fusing: 64 of its 112 linears are
# dequantized by a loop fusion that writes the f32 weight (640 MiB per step).
EXPECTED_XLA_CUDA = {
    ("u32-affine", "default"): (analyzers.FUSED, 112),
    ("u4-affine", "default"): (analyzers.FUSED, 112),
    ("u4-affine-io", "default"): (analyzers.MATERIALIZED, 48),
    ("s4-scale-gsum", "default"): (analyzers.FUSED, 112),
    ("s4-grouped", "default"): (analyzers.FUSED, 112),
    ("u4-grouped", "default"): (analyzers.FUSED, 112),
    ("u32-affine", "xla-subchannel"): (analyzers.FUSED, 112),
    ("u4-affine", "xla-subchannel"): (analyzers.FUSED, 112),
    ("s4-scale-gsum", "xla-subchannel"): (analyzers.FUSED, 112),
    ("s4-grouped", "xla-subchannel"): (analyzers.FUSED, 112),
}


@pytest.mark.parametrize("row", list(EXPECTED_XLA_CUDA), ids=lambda r: f"{r[0]}-{r[1]}")
def test_fusion_xla_cuda_verdict_per_representation(gpu, cuda_record, row):
    cfg = load_hf_config(LLAMA32_CONFIG_PATH)
    cell = fusion_matrix.Cell("xla-cuda", *row)
    fusion_matrix.lowering_cell(cell, cfg, convert(specs(cfg, "int4"), row[0]))
    cuda_record["lowering"][f"fusion/xla-cuda/{row[0]}/{row[1]}"] = {
        "verdict": cell.verdict,
        "linears_fused": cell.linears_fused,
        "linears_total": cell.linears_total,
        "fused_kernels": cell.fused_kernels,
        "materialized_bytes": cell.materialized_bytes_per_step,
    }
    assert not cell.custom_call
    assert (cell.verdict, cell.linears_fused, cell.linears_total) == (*EXPECTED_XLA_CUDA[row], 112), cell


# The matrix against bf16 (bf16 compute), as measured on the H100 (jax 0.11.2,
# results/fusion-h100-xla-cuda-bf16-*.json): (verdict, fused linears, quantized linears). The word
# forms are the mixed case: XLA keeps gate/up/down's straight-line word products inside the
# reduction but gives q/k/v/o (and, split, down too) a loop fusion that writes the per-word
# products ([out, in / 8] float32), then reduces them.
EXPECTED_XLA_CUDA_BF16 = {
    ("u32-affine", "default", "dot"): (analyzers.FUSED, 112, 112),
    ("u4-magic", "default", "reduce"): (analyzers.FUSED, 112, 112),
    ("u4-magic-f32", "default", "reduce"): (analyzers.FUSED, 112, 112),
    ("u32-word", "default", "reduce"): (analyzers.MATERIALIZED, 48, 112),
    ("u32-word-split", "default", "reduce"): (analyzers.MATERIALIZED, 32, 112),
    ("u32-word-split", "default", "int4"): (analyzers.MATERIALIZED, 32, 113),
    # stacked projections (q|k|v, gate|up): 4 linears per layer; the word forms stay mixed
    ("u4-magic", "stacked", "reduce"): (analyzers.FUSED, 64, 64),
    ("u4-magic+word-mlp", "stacked", "reduce"): (analyzers.FUSED, 64, 64),
    ("u32-word", "stacked", "reduce"): (analyzers.MATERIALIZED, 32, 64),
    ("u32-word-split", "stacked", "reduce"): (analyzers.MATERIALIZED, 16, 64),
    ("u32-word-split", "stacked", "int4"): (analyzers.MATERIALIZED, 16, 65),
}


@pytest.mark.parametrize("row", list(EXPECTED_XLA_CUDA_BF16), ids=lambda r: "-".join(r))
def test_fusion_xla_cuda_bf16_verdict_per_representation(gpu, cuda_record, row):
    import dataclasses

    representation, option, head = row
    cfg = dataclasses.replace(load_hf_config(LLAMA32_CONFIG_PATH), dtype="bfloat16")
    cell = fusion_matrix.Cell("xla-cuda", representation, option, head, "bfloat16")
    weights = convert(fusion_matrix.layout(specs(cfg, "int4", embedding=head == "int4"), option), representation, head)
    fusion_matrix.lowering_cell(cell, cfg, weights)
    cuda_record["lowering"][f"fusion-bf16/xla-cuda/{'/'.join(row)}"] = {
        "verdict": cell.verdict,
        "linears_fused": cell.linears_fused,
        "linears_total": cell.linears_total,
    }
    assert not cell.custom_call
    assert (cell.verdict, cell.linears_fused, cell.linears_total) == EXPECTED_XLA_CUDA_BF16[row], cell
