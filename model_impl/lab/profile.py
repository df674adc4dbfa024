"""Where a GPU step's time goes: per-kernel device time from JAX's own profiler (CUPTI), read
back with ``jax.profiler.ProfileData``; kernel names are the HLO fusions' names."""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path

import jax


def kernel_seconds(fn, calls: int = 3, plane: str = "/device:GPU") -> tuple[dict[str, list], list[str]]:
    """(``{kernel: [launches, seconds]}`` summed over ``calls`` calls of ``fn()`` (warmed up
    first), from the device planes of a profiler trace whose name starts with ``plane`` (one
    device: ``/device:GPU:0``); the device lines read)."""
    jax.block_until_ready(fn())
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            for _ in range(calls):
                jax.block_until_ready(fn())
        (path,) = Path(d).rglob("*.xplane.pb")
        data = jax.profiler.ProfileData.from_file(str(path))
    totals, lines = collections.defaultdict(lambda: [0, 0.0]), []
    for p in data.planes:
        if not (p.name == plane or p.name.startswith((plane + ":", plane + " "))):
            continue
        for line in p.lines:
            lines.append(f"{p.name}: {line.name}")
            if not line.name.startswith("Stream"):  # kernels; other lines summarize them
                continue
            for event in line.events:
                totals[event.name][0] += 1
                totals[event.name][1] += event.duration_ns * 1e-9
    return dict(totals), lines
