"""Half precision in the report: the real model in bf16 and f16 against transformers in the same
dtype, in-graph vs host dequant, int4 against dense of the same dtype, IREE-CPU against XLA-CPU,
each with the bound it is held to (derived from the dtype's unit roundoff)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from .. import checkpoints, checks
from ..backends import generate
from ..llama import model
from ..llama.weights import dequantize_weights, quantize_weights

HALF = ("bfloat16", "float16")


def _agreement(ours, reference, dtype: str) -> dict:
    v = checks.greedy_agreement(ours, reference, checks.near_tie_gap(dtype))
    c = v.comparison
    return {
        "agreement": c.agreement,
        "first_divergence": c.first_divergence,
        "top2_gap_at_divergence": v.top2_gap_at_divergence,
        "agrees": v.agrees,
        "max_abs_logit_diff": c.max_abs_logit_diff,
    }


def gather(cfg, fp32, prompt, n, log=print, dtypes=HALF) -> dict:
    """Live runs of the real model (``cfg``, float32 ``fp32`` weights) in each half dtype."""
    from ..checks import reference

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in dtypes:
            log(f"half precision {dtype}: transformers, xla-cpu and iree-cpu runs")
            directory = checkpoints.save_hf_dir(cfg, fp32, Path(tmp) / dtype, dtype=dtype)
            hcfg, dense = checkpoints.load(directory)  # as stored: in dtype
            hf = reference.run(directory, dtype, prompt, n)
            ours_prefill = np.asarray(model.all_logits(hcfg, dense, jnp.asarray(prompt, jnp.int32)))
            # |ours - transformers| at most: against a rebuilt reference its rebuild distance is added
            prefill = float(np.max(np.abs(ours_prefill - hf.prompt_logits))) + hf.rebuild_atol
            hf_run = hf.greedy
            int4 = quantize_weights(dense)
            models = {"dense": dense, "int4": int4, "host-dequant": dequantize_weights(int4, dtype)}
            runs = {}
            for backend, mode in (
                ("xla-cpu", "dense"),
                ("xla-cpu", "int4"),
                ("xla-cpu", "host-dequant"),
                ("iree-cpu", "dense"),
                ("iree-cpu", "int4"),
            ):
                runner = generate.make_runner(hcfg, models[mode], backend)
                runs[backend, mode] = generate.generate(runner, prompt, n, stop_at_eos=False, keep_logits=True)
            int4_vs_dense = checks.compare(runs["xla-cpu", "int4"], runs["xla-cpu", "dense"])
            out[dtype] = {
                "unit_roundoff": checks.UNIT_ROUNDOFF[dtype],
                "logit_atol": checks.logit_atol(dtype),
                "xla_cpu_half_rounding": checks.xla_cpu_half_rounding(dtype),
                "in_graph_atol": checks.in_graph_vs_host_dequant_atol(
                    dtype, checks.xla_cpu_half_rounding(dtype) == checks.FMA
                ),
                "near_tie_gap": checks.near_tie_gap(dtype),
                "prefill_vs_transformers": prefill,
                "greedy_vs_transformers": _agreement(runs["xla-cpu", "dense"], hf_run, dtype),
                "in_graph_vs_host": _agreement(runs["xla-cpu", "int4"], runs["xla-cpu", "host-dequant"], dtype),
                "iree_vs_xla": {
                    m: _agreement(runs["iree-cpu", m], runs["xla-cpu", m], dtype) for m in ("dense", "int4")
                },
                "int4_vs_dense": {
                    "agreement": int4_vs_dense.agreement,
                    "first_divergence": int4_vs_dense.first_divergence,
                    "rank_at_divergence": checks.rank_at_divergence(runs["xla-cpu", "int4"], runs["xla-cpu", "dense"]),
                    "coherent": checks.degeneracy(runs["xla-cpu", "int4"].tokens).coherent,
                },
            }
    return out


def _a(entry: dict) -> str:
    tie = "" if entry["first_divergence"] is None else f", near-tie gap {entry['top2_gap_at_divergence']:.3g}"
    ok = "" if entry["agrees"] else " **not a near-tie**"
    return f"{entry['agreement']}{tie}{ok}, max Δ {entry['max_abs_logit_diff']:.3g}"


def render(half: dict) -> list[str]:
    if not half:
        return []
    lines = [
        "",
        "## Half precision (the real model in bf16 and f16)",
        "",
        "Compute dtype everywhere (activations, unquantized weights, KV cache, dequantized int4 weights); "
        "matmuls accumulate in float32, softmax and RMSNorm statistics in float32, logits out in float32. "
        "transformers runs the same weights from a safetensors directory in the same dtype. Bounds: logits "
        f"{checks.HALF_PRECISION_LOGIT_UNITS} x u x {checks.LOGIT_SCALE:g}, in-graph vs host dequant "
        f"{checks.IN_GRAPH_VS_HOST_DEQUANT_UNITS} x u x {checks.LOGIT_SCALE:g} (u the dtype's unit roundoff); a "
        "divergence passes only at a near-tie (our top-2 gap below twice the logit bound).",
        "",
        "| dtype | u | logit bound | prefill vs transformers | greedy vs transformers | in-graph vs host dequant "
        "(bound) | IREE-CPU vs XLA-CPU dense | IREE-CPU vs XLA-CPU int4 | int4 vs dense (same dtype) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for dtype, e in half.items():
        q = e["int4_vs_dense"]
        rank = "" if q["rank_at_divergence"] is None else f", int4 picks dense's #{q['rank_at_divergence'] + 1}"
        lines.append(
            f"| {dtype} | 2^{int(np.log2(e['unit_roundoff']))} | {e['logit_atol']:.3g} | "
            f"{e['prefill_vs_transformers']:.3g} | {_a(e['greedy_vs_transformers'])} | "
            f"{_a(e['in_graph_vs_host'])} ({e['in_graph_atol']:.3g}) | {_a(e['iree_vs_xla']['dense'])} | "
            f"{_a(e['iree_vs_xla']['int4'])} | {q['agreement']}{rank}; text coherent: "
            f"{'yes' if q['coherent'] else 'no'} |"
        )
    return lines
