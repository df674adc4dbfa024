"""The profile's per-kernel rates (what "what stops it" reads): a kernel's bytes from the
compiled HLO, and its rate over every launch a step makes of it (a kernel in the layers' loop
body runs once per layer, each launch on one layer's slice)."""

from __future__ import annotations

import pytest

from model_impl import decide
from model_impl.analyzers import xla_hlo
from model_impl.lab.protocol import kernel_entry

HLO = """HloModule m, entry_computation_layout={(u4[64,32]{1,0}, bf16[1,32]{1,0})->bf16[1,64]{1,0}}

%fused_computation (p0: u4[64,32], p1: bf16[1,32]) -> bf16[1,64] {
  %p0 = u4[64,32]{1,0} parameter(0)
  %p1 = bf16[1,32]{1,0} parameter(1)
  ROOT %r = bf16[1,64]{1,0} dot(%p1, %p0)
}

ENTRY %main (codes: u4[64,32], x: bf16[1,32]) -> bf16[1,64] {
  %codes = u4[64,32]{1,0} parameter(0)
  %x = bf16[1,32]{1,0} parameter(1)
  ROOT %input_reduce_fusion.27 = bf16[1,64]{1,0} fusion(%codes, %x), kind=kInput, calls=%fused_computation
}
"""


def test_a_kernels_bytes_are_its_operands_and_result_under_the_profilers_name():
    # codes 64*32 at half a byte, x 32 bf16, the result 64 bf16
    assert xla_hlo.kernel_bytes(HLO) == {"input_reduce_fusion_27": 64 * 32 // 2 + 32 * 2 + 64 * 2}
    assert xla_hlo.shape_bytes("(f32[4], s4[10], pred[])") == 16 + 5 + 1


def test_a_kernels_rate_counts_every_launch_of_the_step():
    # 3 profiled calls of 32 steps, the kernel launched once per layer (16) per step: 16 launches of
    # 1 MB in 100 us per step is 160 GB/s, not 10
    k = kernel_entry("k", launches=16 * 96, seconds=96 * 100e-6, nbytes=1_000_000, steps=96)
    assert k["launches_per_step"] == 16 and k["seconds"] == pytest.approx(100e-6)
    assert k["bytes_per_s"] == pytest.approx(16e6 / 100e-6)
    assert decide.kernel_rate({"kernels": [k]}) == pytest.approx(k["bytes_per_s"])
