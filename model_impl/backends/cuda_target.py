"""Which IREE CUDA target to compile for a given GPU.

A module compiled for ``sm_XY`` loads on a device of compute capability >= X.Y (its PTX is
JIT-compiled forward), never on an older one. So the right target is the newest one the
compiler accepts that is not newer than the device. iree-compile 3.13 rejects sm_90,
sm_90a and sm_100 ("missing GPU target"), so an H100 (9.0) gets the newest accepted target
below it; a GB10 (12.1) gets sm_121.
"""

from __future__ import annotations

import functools
import re

# Targets tried against the compiler, oldest first.
CANDIDATES = (
    "sm_60",
    "sm_70",
    "sm_75",
    "sm_80",
    "sm_86",
    "sm_87",
    "sm_89",
    "sm_90",
    "sm_90a",
    "sm_100",
    "sm_100a",
    "sm_120",
    "sm_121",
)


def sm_number(target: str) -> int:
    m = re.fullmatch(r"sm_(\d+)a?", target)
    if not m:
        raise ValueError(f"not a CUDA target: {target!r}")
    return int(m.group(1))


def capability_number(capability: str | tuple[int, int]) -> int:
    major, minor = (int(x) for x in (capability.split(".") if isinstance(capability, str) else capability))
    return 10 * major + minor


def select(capability, accepted, override: str | None = None) -> str:
    """The newest accepted target not newer than the device (or ``override`` if given)."""
    if override:
        return override
    device = capability_number(capability)
    usable = [t for t in accepted if sm_number(t) <= device and not t.endswith("a")]
    if not usable:
        raise ValueError(f"no accepted IREE CUDA target runs on compute capability {capability}: {list(accepted)}")
    return max(usable, key=sm_number)


@functools.cache
def accepted_by_compiler() -> tuple[str, ...]:
    """The candidates this iree-compile accepts (probed once with a one-op module)."""
    import iree.compiler as ic

    # One real dispatch: a module with no kernel compiles for any target name.
    module = (
        "func.func @f(%a: tensor<64xf32>) -> tensor<64xf32> {\n"
        "  %b = stablehlo.multiply %a, %a : tensor<64xf32>\n  return %b : tensor<64xf32>\n}"
    )
    accepted = []
    for target in CANDIDATES:
        try:
            ic.compile_str(
                module,
                input_type="stablehlo",
                extra_args=["--iree-hal-target-device=cuda", f"--iree-cuda-target={target}"],
            )
        except ic.CompilerToolError:
            continue
        accepted.append(target)
    return tuple(accepted)
