"""The other routes, measured in the same run as the matrix: torch on the same GPU.

- ``torch-bf16``: the step's linears (7 per layer and the head, Llama shapes) as cuBLAS bf16
  matmuls;
- ``torch-int4-tinygemm``: the same linears as ``aten._weight_int4pack_mm`` (torch's fused int4
  GEMM, group 64, bf16 activations; the head stays bf16 as in the matrix's int4 rows);
- ``bandwidth``: a memcpy-class device-to-device copy (``Tensor.copy_``), read + write bytes.

Each timing replays one CUDA graph of the step's matmuls (launch cost out, as the matrix's
in-graph loop takes it out) after warm-up, with a device sync around the timed replays.
tinygemm's output is checked against a bf16 dequant of the same codes before it is timed: an
anchor that computes something else would set a false bar.

torch is optional: on a machine without it (or without CUDA) :func:`measure` says why.
"""

from __future__ import annotations

import statistics
import time

from ..llama.config import Config
from ..llama.weights import linear_shapes

GROUP = 64
INNER_K_TILES = 8  # _convert_weight_to_int4pack's layout parameter (2, 4 or 8)
COPY_BYTES = 1 << 30
# tinygemm vs x @ dequant(W).T in bf16 on a [256, 1024] check: both accumulate in float32 over
# 1024 terms, then round to bf16; outputs are O(10), so a few bf16 ulps at 2^3 (2^-8 * 8 each).
TINYGEMM_CHECK_ATOL = 0.25


def _torch():
    try:
        import torch
    except ImportError as e:
        return None, f"torch is not installed ({e})"
    if not torch.cuda.is_available():
        return None, "torch sees no CUDA device"
    return torch, None


def step_shapes(cfg: Config, stacked: bool = False) -> list[tuple[int, int]]:
    """``[out, in]`` of every linear of one decode step, the head last; ``stacked``: q|k|v and
    gate|up as one linear each (:data:`weights.STACKED`), as engines ship them."""
    return list(linear_shapes(cfg, stacked).values()) * cfg.num_layers + [(cfg.vocab_size, cfg.hidden_size)]


# The layouts the anchors are timed in: key suffix -> stacked
LAYOUTS = {"": False, "-stacked": True}


def _graph_seconds(torch, fn, replays: int, rounds: int) -> tuple[float, list[float]]:
    """(median seconds per call of ``fn``, [min, max]) from replays of one CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / replays)
    return statistics.median(times), [min(times), max(times)]


def _int4pack(torch, q, scales, zeros):
    """tinygemm's operands for codes ``q`` uint8 ``[n, k]`` (0..15) with per-group ``scales``
    and ``zeros`` ``[n, k/64]`` bf16: its weight is ``(q - 8) * scale + zero``."""
    qu8 = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
    packed = torch.ops.aten._convert_weight_to_int4pack(qu8, INNER_K_TILES)
    sz = torch.stack([scales, zeros], dim=-1).transpose(0, 1).contiguous()  # [k/64, n, 2]
    return packed, sz


def tinygemm_check(torch) -> float:
    """max |tinygemm - x @ dequant(W).T| on a small seeded case (bf16, CUDA)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    n, k = 256, 1024
    q = torch.randint(0, 16, (n, k), device="cuda", generator=g, dtype=torch.int32)
    scales = (torch.rand(n, k // GROUP, device="cuda", generator=g) * 0.1 + 0.01).to(torch.bfloat16)
    zeros = (torch.randn(n, k // GROUP, device="cuda", generator=g) * 0.1).to(torch.bfloat16)
    x = torch.randn(4, k, device="cuda", generator=g).to(torch.bfloat16)
    packed, sz = _int4pack(torch, q, scales, zeros)
    got = torch.ops.aten._weight_int4pack_mm(x, packed, GROUP, sz).float()
    w = (q.float() - 8).reshape(n, -1, GROUP) * scales.float()[..., None] + zeros.float()[..., None]
    want = (x.float() @ w.reshape(n, k).to(torch.bfloat16).float().T).to(torch.bfloat16).float()
    return float((got - want).abs().max())


def copy_bandwidth(torch, rounds: int = 5) -> tuple[float, list[float]]:
    """(bytes/s, [min, max]) of a 1 GiB device-to-device ``copy_`` (read + write counted)."""
    src = torch.empty(COPY_BYTES // 4, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    seconds, spread = _graph_seconds(torch, lambda: dst.copy_(src), 5, rounds)
    return 2 * COPY_BYTES / seconds, [2 * COPY_BYTES / t for t in reversed(spread)]


def eager_copy_bandwidth(torch, rounds: int = 5, repeats: int = 10) -> tuple[float, list[float]]:
    """(bytes/s, [min, max]) of a 1 GiB ``copy_`` launched eagerly (a copy kernel on the SMs,
    as a GEMV streams its weights), timed with CUDA events around ``repeats`` copies; median
    of ``rounds``. A graph-replayed copy (:func:`copy_bandwidth`) runs on the copy engine."""
    src = torch.empty(COPY_BYTES // 4, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    rates = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            dst.copy_(src)
        end.record()
        end.synchronize()
        rates.append(2 * COPY_BYTES * repeats / (start.elapsed_time(end) * 1e-3))
    return statistics.median(rates), [min(rates), max(rates)]


def measure(cfg: Config, batches=(1,), replays: int = 20, rounds: int = 5) -> dict:
    """Step-linears seconds of torch bf16 and torch int4 tinygemm at each batch, and the
    memcpy-class copy bandwidth; ``{"skipped": why}`` where torch or CUDA is missing."""
    torch, why = _torch()
    if torch is None:
        return {"skipped": why}
    out = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0)}
    out["bandwidth_bytes_per_s"], out["bandwidth_spread"] = copy_bandwidth(torch, rounds)
    error = tinygemm_check(torch)
    out["tinygemm_check"] = {"max_abs_err": error, "atol": TINYGEMM_CHECK_ATOL, "ok": error <= TINYGEMM_CHECK_ATOL}
    rows = {str(b): {} for b in batches}
    for suffix, stacked in LAYOUTS.items():
        _measure_layout(torch, step_shapes(cfg, stacked), batches, replays, rounds, suffix, rows)
        torch.cuda.empty_cache()  # the layout's weights are gone with its frame
    out["batches"] = rows
    return out


def _measure_layout(torch, shapes, batches, replays: int, rounds: int, suffix: str, rows: dict) -> None:
    """torch bf16 and tinygemm step-linears seconds of one layout into ``rows[batch]``, keyed
    ``torch-bf16<suffix>`` and ``torch-int4-tinygemm<suffix>``."""
    g = torch.Generator(device="cuda").manual_seed(1)
    dense = [torch.randn(o, i, device="cuda", generator=g, dtype=torch.bfloat16) * i**-0.5 for o, i in shapes]
    int4 = []
    for o, i in shapes[:-1]:
        q = torch.randint(0, 16, (o, i), device="cuda", generator=g, dtype=torch.int32)
        s = torch.full((o, i // GROUP), 0.01, device="cuda", dtype=torch.bfloat16)
        int4.append(_int4pack(torch, q, s, torch.zeros_like(s)))
    head = dense[-1]
    for b in batches:
        xs = {i: torch.randn(b, i, device="cuda", generator=g, dtype=torch.bfloat16) for _, i in shapes}

        def bf16_step(xs=xs):
            return [xs[w.shape[1]] @ w.T for w in dense]

        def int4_step(xs=xs):
            ys = [torch.ops.aten._weight_int4pack_mm(xs[i], p, GROUP, sz) for (_, i), (p, sz) in zip(shapes, int4)]
            return [*ys, xs[head.shape[1]] @ head.T]

        bf16_s, bf16_spread = _graph_seconds(torch, bf16_step, replays, rounds)
        int4_s, int4_spread = _graph_seconds(torch, int4_step, replays, rounds)
        rows[str(b)][f"torch-bf16{suffix}"] = {"step_linears_seconds": bf16_s, "spread": bf16_spread}
        rows[str(b)][f"torch-int4-tinygemm{suffix}"] = {
            "step_linears_seconds": int4_s,
            "spread": int4_spread,
            "speedup_vs_torch_bf16": bf16_s / int4_s,
        }
