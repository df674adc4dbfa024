"""The exported StableHLO: op inventory, custom calls, and the dequant's ops per linear."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

_STABLEHLO_OP = re.compile(r"\b(?:stablehlo|chlo|mhlo)\.([a-z_]+)")
_U32_TO_F32 = re.compile(r"stablehlo\.convert\b[^\n]*xui32>\)? -> tensor<[^>]*xf32>")


@dataclasses.dataclass(frozen=True)
class StableHloInventory:
    op_counts: Counter
    custom_calls: tuple[str, ...]  # call_target_name of each custom_call
    shifts: int  # stablehlo.shift_right_logical: one per quantized linear
    masks: int  # stablehlo.and
    u32_to_f32_converts: int

    @property
    def has_custom_call(self) -> bool:
        return bool(self.custom_calls) or self.op_counts.get("custom_call", 0) > 0


def stablehlo_inventory(text: str) -> StableHloInventory:
    ops = Counter(_STABLEHLO_OP.findall(text))
    targets = tuple(re.findall(r"custom_call\s*@([\w$.\-]+)", text)) + tuple(
        re.findall(r'call_target_name\s*=\s*"([^"]+)"', text)
    )
    return StableHloInventory(
        op_counts=ops,
        custom_calls=targets,
        shifts=ops.get("shift_right_logical", 0),
        masks=ops.get("and", 0),
        u32_to_f32_converts=len(_U32_TO_F32.findall(text)),
    )
