"""How a step is timed on each backend, resolved once (:func:`protocol`) and handed to the
measuring code, so that the matrix and the verdict run the same path everywhere.

- XLA (CPU and CUDA): ``steps`` decode steps inside one jitted loop (:func:`timing.decode_loop`),
  one dispatch per round, median of rounds: the device's figure, not the host's. ``rows`` > 1:
  the batched step (every linear sees ``rows`` activation rows). A prefill: one jitted call.
- IREE (CPU and CUDA): one call per step, each ending with its token on the host (its decode
  graph takes one sequence, so ``rows`` > 1 is :class:`NotMeasurable`); a prefill: synced calls.

Copies (:meth:`Protocol.copies`) are named: on a GPU an eager ``copy_`` timed with CUDA events
(a kernel on the SMs), the same copy replayed in a CUDA graph (a memcpy node: the copy engine),
XLA's own copy kernel; on the CPU, numpy copies in one thread per core.
"""

from __future__ import annotations

import dataclasses
import gc

import jax
import numpy as np

from ..backends import generate
from ..backends.spec import backend as backend_spec
from ..llama.config import Config
from ..llama.weights import Weights
from . import roofline, timing

PREFILL_ROUNDS = 5


class NotMeasurable(Exception):
    """A figure this backend cannot give (said in one line; recorded, not failed)."""


@dataclasses.dataclass(frozen=True)
class Protocol:
    backend: str
    max_seq: int
    start_pos: int

    @property
    def spec(self):
        return backend_spec(self.backend)

    def decode(self, cfg: Config, weights: Weights, steps: int, rows: int = 1, xla_options=None, iree_flags=()) -> dict:
        """``{"seconds", "spread"}`` per decode step of ``rows`` sequences."""
        spec = self.spec
        if spec.is_xla:
            seconds, spread, hoisted = timing.time_xla_decode_loop(
                self.backend,
                cfg,
                weights,
                steps,
                max_seq=self.max_seq,
                start_pos=self.start_pos,
                xla_options=xla_options,
                batch=None if rows == 1 else rows,
            )
            return {"seconds": seconds, "spread": spread, "hoisted_dequants": hoisted}
        if rows != 1:
            raise NotMeasurable(f"{self.backend}: the exported decode graph takes one sequence")
        make = lambda: generate.make_runner(cfg, weights, self.backend, iree_flags=tuple(iree_flags))  # noqa: E731
        measured = self._per_step(make, steps, queued=spec.is_cuda)
        return {"seconds": float(np.median(measured)), "spread": [min(measured), max(measured)]}

    def _per_step(self, make_runner, steps: int, queued: bool) -> list[float]:
        """Seconds per step of one call per step on ``make_runner()``: queued rounds (a GPU,
        where a per-step sync costs as much as the step), or each step synced (a CPU); the
        runner released after."""
        runner = make_runner()
        measured = timing.time_decode(
            runner,
            self.max_seq,
            start_pos=self.start_pos,
            synced_steps=0 if queued else steps,
            queued_rounds=timing.DECODE_ROUNDS if queued else 0,
            steps_per_round=steps,
        ).device_bound
        del runner
        gc.collect()
        return measured

    def per_call(self, cfg: Config, weights: Weights, steps: int, xla_options=None) -> float:
        """XLA-CUDA: seconds per step with one dispatch per step, queued (the fp32 matrix's
        second figure, beside the in-graph loop's)."""
        make = lambda: generate.make_runner(cfg, weights, self.backend, xla_options=xla_options)  # noqa: E731
        return float(np.median(self._per_step(make, steps, queued=True)))

    def linears(self, cfg: Config, weights: Weights, steps: int, rows: int = 1, xla_options=None) -> float:
        """Seconds per step of the step's linears alone (:func:`linear_chain.step_linears`), the
        figure set beside torch's linears; XLA only (IREE compiles the exported graphs whole)."""
        if not self.spec.is_xla:
            raise NotMeasurable(f"{self.backend}: the step's linears alone are an XLA graph")
        from . import linear_chain

        device = jax.devices(self.spec.platform)[0]
        fn = jax.jit(linear_chain.step_linears(cfg, rows, steps), compiler_options=xla_options or None)
        w = jax.device_put(weights, device)
        call = lambda: jax.block_until_ready(fn(w))  # noqa: E731
        return timing.median_seconds(call, timing.DECODE_ROUNDS, float("inf"), warmup=1) / steps

    def prefill(self, cfg: Config, weights: Weights, tokens: int, xla_options=None, iree_flags=()) -> dict:
        if self.spec.is_xla:
            s = timing.time_xla_prefill(self.backend, cfg, weights, tokens, self.max_seq, xla_options, PREFILL_ROUNDS)
            return {"seconds": s}
        runner = generate.make_runner(cfg, weights, self.backend, iree_flags=tuple(iree_flags))
        times = timing.time_prefill(runner, tokens, self.max_seq, PREFILL_ROUNDS)
        return {"seconds": float(np.median(times)), "spread": [min(times), max(times)]}

    def copies(self) -> list[dict]:
        """Every copy this backend's device can be timed with, each named, with
        ``kernel_class``: whether it runs as a kernel (what a GEMV streaming weights does)."""
        spec = self.spec
        if not spec.is_cuda:
            rate = roofline.copy_bandwidth("cpu")
            return [{"name": "numpy copy, one thread per core", "kernel_class": True, "bytes_per_s": rate}]
        out = []
        if spec.is_xla:
            out.append({"name": "XLA copy kernel (jit a + 0)", "kernel_class": True,
                        "bytes_per_s": roofline.copy_bandwidth("cuda")})  # fmt: skip
        from . import anchors

        torch, why = anchors._torch()
        if torch is None:
            out.append({"name": "torch copy_", "kernel_class": True, "bytes_per_s": None, "skipped": why})
            return out
        eager, spread = anchors.eager_copy_bandwidth(torch)
        out.append({"name": "torch copy_ eager, CUDA events", "kernel_class": True, "bytes_per_s": eager,
                    "spread": spread})  # fmt: skip
        graphed, spread = anchors.copy_bandwidth(torch)
        out.append({"name": "torch copy_ replayed in a CUDA graph (copy engine)", "kernel_class": False,
                    "bytes_per_s": graphed, "spread": spread})  # fmt: skip
        return out

    def profile(self, cfg: Config, weights: Weights, steps: int, rows: int = 1, xla_options=None) -> list[dict]:
        """The step's kernels, longest first: ``{"name", "launches", "seconds" (per step),
        "bytes" (the kernel's operands and result, from the compiled HLO), "bytes_per_s"}``."""
        spec = self.spec
        if not (spec.is_xla and spec.is_cuda):
            raise NotMeasurable(f"{self.backend}: per-kernel device times come from CUPTI (XLA-CUDA only)")
        from ..analyzers import xla_hlo
        from . import profile

        fn = timing.xla_decode_loop(cfg, steps, True, xla_options)
        loop = timing.DecodeLoop(
            fn,
            *timing.decode_loop_args(
                self.backend, cfg, weights, self.max_seq, self.start_pos, None if rows == 1 else rows
            ),
        )
        sizes = xla_hlo.kernel_bytes(loop.compiled_text())
        calls = 3
        totals, _ = profile.kernel_seconds(loop, calls=calls, plane="/device:GPU:0")
        kernels = [kernel_entry(name, n, s, sizes.get(name), calls * steps) for name, (n, s) in totals.items()]
        return sorted(kernels, key=lambda k: -k["seconds"])


def kernel_entry(name: str, launches: int, seconds: float, nbytes: int | None, steps: int) -> dict:
    """One kernel of a profile over ``steps`` decode steps: its time and launches per step, the
    bytes one launch reads and writes, and its rate (a kernel in the layers' loop body runs once
    per layer per step, each launch on one layer's slice)."""
    per_step, launches_per_step = seconds / steps, launches / steps
    return {
        "name": name,
        "launches": launches,
        "launches_per_step": launches_per_step,
        "seconds": per_step,
        "bytes": nbytes,
        "bytes_per_s": nbytes * launches_per_step / per_step if nbytes and per_step else None,
    }


def protocol(backend: str, max_seq: int, start_pos: int) -> Protocol:
    """The backend's protocol; :class:`generate.BackendUnavailable` (one line) when this machine
    has no device for it."""
    generate.require_device(backend)
    if backend_spec(backend).is_xla:
        jax.devices(backend_spec(backend).platform)
    return Protocol(backend, max_seq, start_pos)
