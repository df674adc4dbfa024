"""The fusion matrix's CUDA cells that a test can pin: the Pallas reference kernel's
correctness and its custom_call, and XLA-CUDA's lowering of each representation at the
Llama-3.2-1B shapes, held to model_impl/expectations.py for this jaxlib and GPU."""

from __future__ import annotations

import warnings

import jax
import pytest

from model_impl import expectations
from model_impl.analyzers import stablehlo
from model_impl.lab import fusion_matrix
from model_impl.llama.config import LLAMA32_CONFIG_PATH, load_hf_config
from model_impl.llama.representations import PALLAS, convert
from model_impl.llama.weights import specs

pytestmark = pytest.mark.cuda


def test_fusion_pallas_decode_graph_on_xla_cuda_carries_custom_call(gpu, cuda_record):
    cfg = load_hf_config(LLAMA32_CONFIG_PATH)
    with jax.default_device(gpu):
        text = fusion_matrix.xla_stablehlo(cfg, convert(specs(cfg, "int4"), PALLAS))
    inv = stablehlo.stablehlo_inventory(text)
    cuda_record["figures"]["pallas_custom_calls"] = sorted(set(inv.custom_calls))
    assert inv.has_custom_call, "the Pallas row must be the custom_call route"
    assert any("triton" in t for t in inv.custom_calls), inv.custom_calls


# XLA-CUDA's verdict and fused-linear count per fusion-matrix row on the Llama-3.2-1B decode graph
# depend on the jaxlib and on the GPU: model_impl/expectations.py holds them per (jaxlib range,
# device). u4-affine-io is the one layout that keeps XLA from fusing (a loop fusion writes the f32
# weight of the linears it does not fuse).
FP32_ROWS = sorted({e.key[2:] for e in expectations.TABLE if e.key[:2] == ("xla-cuda", expectations.FUSION)})
BF16_ROWS = sorted({e.key[2:] for e in expectations.TABLE if e.key[:2] == ("xla-cuda", expectations.FUSION_BF16)})


def hold_to_table(gpu, cuda_record, what, row, cell):
    """The cell against the table's entry for this jaxlib and this GPU (no custom_call anywhere);
    on a GPU the table does not know, recorded with the line to add, the verdict still held where
    every GPU measured agrees on it."""
    assert not cell.custom_call
    observed = (cell.verdict, cell.linears_fused, cell.linears_total)
    version = expectations.compiler_version(expectations.XLA)
    finding = expectations.check(
        ("xla-cuda", what, *row),
        observed,
        expectations.XLA,
        version,
        gpu.device_kind,
        everywhere=expectations.verdict_of,
    )
    if finding is not None:
        cuda_record["figures"].setdefault("expectations_to_add", []).append(finding.line())
        warnings.warn(finding.line(), stacklevel=2)


@pytest.mark.parametrize("row", FP32_ROWS, ids=lambda r: f"{r[0]}-{r[1]}")
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
    hold_to_table(gpu, cuda_record, expectations.FUSION, row, cell)


@pytest.mark.parametrize("row", BF16_ROWS, ids=lambda r: "-".join(r))
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
    hold_to_table(gpu, cuda_record, expectations.FUSION_BF16, row, cell)
