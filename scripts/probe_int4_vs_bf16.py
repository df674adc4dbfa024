"""Prototype on the GPU: which in-graph int4 form beats the best dense bf16 form, and by how
much, on the Llama-3.2-1B shapes (XLA-CUDA). One JSON line per case, all cases in OUT.json.

    python3 scripts/probe_int4_vs_bf16.py OUT.json PART   (PART: step | more | anchors)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from model_impl import env  # noqa: E402
from model_impl.lab import anchors, fusion, profile, protocol, timing  # noqa: E402
from model_impl.llama.model import KVCache  # noqa: E402
from model_impl.llama.representations import convert, convert_dense  # noqa: E402
from model_impl.llama.shapes import llama32_config  # noqa: E402
from model_impl.llama.weights import quantize_weights, synthetic  # noqa: E402

MAX_SEQ, START, STEPS = 128, 16, 32


def weights_for(case, dense, int4):
    kind, form, head = case
    return convert_dense(dense, form) if kind == "dense" else convert(int4, form, head)


BLOCK_LEVEL = {"xla_gpu_experimental_enable_fusion_block_level_rewriter": True}


def step_case(cfg, w, batch=None, xla_options=None):
    s, spread, hoisted = timing.time_xla_decode_loop(
        "xla-cuda", cfg, w, STEPS, max_seq=MAX_SEQ, start_pos=START, batch=batch, xla_options=xla_options
    )
    return {"step_s": s, "spread": spread, "hoisted": hoisted}


def linears_case(cfg, w, batch=1):
    proto = protocol.protocol("xla-cuda", fusion.MAX_SEQ, fusion.PROMPT_TOKENS)
    return {"step_linears_s": proto.linears(cfg, w, STEPS, batch)}


def prefill_case(cfg, w, bucket=64):
    return {"prefill_s": timing.time_xla_prefill("xla-cuda", cfg, w, bucket, MAX_SEQ)}


def profile_case(cfg, w, out_dir: Path, name: str):
    dev = jax.devices("cuda")[0]
    fn = jax.jit(functools.partial(timing.decode_loop, cfg, STEPS, True))
    args = jax.device_put((w, np.int32(1), np.int32(START), KVCache.zeros(cfg, MAX_SEQ)), dev)
    (out_dir / f"hlo-{name}.txt").write_text(fn.lower(*args).compile().as_text())
    kernels, lines = profile.kernel_seconds(lambda: fn(*args))
    per_step = {k: (n / 3 / STEPS, s / 3 / STEPS) for k, (n, s) in kernels.items()}
    top = sorted(per_step.items(), key=lambda kv: -kv[1][1])
    total = sum(s for _, s in per_step.values())
    return {"kernel_s_per_step": total, "lines": lines, "top": [[k, n, s] for k, (n, s) in top[:40]]}


def main(out: str, part: str) -> int:
    record = {"environment": env.environment("cuda"), "part": part, "cases": []}
    cfg = dataclasses.replace(llama32_config(), dtype="bfloat16")
    if part == "anchors":
        record["anchors"] = anchors.measure(cfg, batches=(1, 4, 16, 64))
        Path(out).write_text(json.dumps(record, indent=1) + "\n")
        print(json.dumps(record["anchors"]), flush=True)
        return 0
    t0 = time.perf_counter()
    dense = synthetic(cfg, seed=0)
    int4 = quantize_weights(dense)
    print(f"weights {time.perf_counter() - t0:.0f} s", flush=True)
    step_cases = [
        ("dense", "dot", None),
        ("dense", "reduce", None),
        ("int4", "u32-affine", "dot"),
        ("int4", "u4-affine", "reduce"),
        ("int4", "u4-reduce", "reduce"),
        ("int4", "u4-magic", "reduce"),
        ("int4", "u4-magic", "dot"),
        ("int4", "u4-magic-f32", "reduce"),
        ("int4", "u32-magic", "reduce"),
        ("int4", "u32-planar", "reduce"),
        ("int4", "u32-word", "reduce"),
        ("int4", "u32-group", "reduce"),
    ]
    jobs = []
    if part == "step":
        jobs = [("step", c, 1) for c in step_cases]
    elif part == "more":
        linears = ("dot", "reduce", "u4-reduce", "u4-magic", "u32-magic")
        jobs += [("linears", c, 1) for c in step_cases if c[1] in linears]
        for b in (4, 16):
            jobs += [("batch", c, b) for c in step_cases if c[1] in ("dot", "reduce", "u4-affine", "u4-magic")]
        jobs += [("prefill", c, 64) for c in step_cases if c[1] in ("dot", "u4-affine", "u4-magic")]
    elif part == "word":
        pick = ("dot", "u4-magic-f32", "u32-word", "u32-group")
        jobs = [(what, c, 1) for what in ("step", "linears") for c in step_cases if c[1] in pick]
        jobs += [("profile", c, 1) for c in step_cases if c[1] in ("u32-word", "u32-group")]
    elif part == "flags":  # XLA's flag sending every fusion, reductions included, to Triton
        pick = ("dot", "u4-magic-f32", "u32-word")
        jobs = [("step", ("int4", "u4-magic-f32", "reduce"), 1)]
        jobs += [("step-block-level", c, 1) for c in step_cases if c[1] in pick]
    elif part == "profile":
        jobs = [("profile", c, 1) for c in step_cases if c[1] in ("dot", "reduce", "u4-reduce", "u4-magic-f32")]
    for what, case, batch in jobs:
        row = {"what": what, "case": list(case), "batch": batch}
        try:
            w = weights_for(case, dense, int4)
            if what == "step":
                row.update(step_case(cfg, w))
            elif what == "step-block-level":
                row.update(step_case(cfg, w, xla_options=BLOCK_LEVEL), xla_options=BLOCK_LEVEL)
            elif what == "batch":
                row.update(step_case(cfg, w, batch))
            elif what == "profile":
                row.update(profile_case(cfg, w, Path(out).parent, "-".join(map(str, case))))
            elif what == "linears":
                row.update(linears_case(cfg, w))
            else:
                row.update(prefill_case(cfg, w, batch))
        except Exception as e:  # a failure is a finding of the case
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            traceback.print_exc()
        print(json.dumps(row), flush=True)
        record["cases"].append(row)
        Path(out).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
