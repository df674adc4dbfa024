"""Decode speed, prefill latency, compile time and memory per backend x {fp32, int4}, with
each decode figure set against the roofline of this machine's measured bandwidth."""

from __future__ import annotations

import gc
import time

from model_impl.backends import generate
from model_impl.backends.spec import backend as backend_spec
from model_impl.lab import roofline, timing
from model_impl.llama.graphs import DECODE_CHUNK
from model_impl.llama.linears import tensor_bytes

from .conftest import smoke

PROMPT = 16
MAX_SEQ = 512
SMOKE_MAX_SEQ = 128  # the parity tests' cache length: a smoke run reuses their compiled modules
PREFILL_PROMPTS = (16, 64)
STEP_BUDGET_S = 20.0  # per case: how many decode steps we time, at most 64, at least 5
GPU_GENERATE_STEPS = 4 * DECODE_CHUNK  # the generate path on a GPU: 4 chunks per round


def test_decode_and_prefill(benchmark, bench_case, models, bandwidth, bench_results, request):
    model_name, backend, quant, tp = bench_case
    gc.collect()  # the previous case's runner (and its device copy of the weights) is gone
    small = smoke(request.config)
    max_seq = SMOKE_MAX_SEQ if small else MAX_SEQ
    cfg, weights = models.get(model_name, quant)
    load_start = time.perf_counter()
    runner = generate.make_runner(cfg, weights, backend, tp=tp)
    token = timing.start(runner, PROMPT, max_seq)  # compiles prefill + decode
    setup_s = time.perf_counter() - load_start

    pos = [PROMPT]

    def step():
        nonlocal token
        token, _ = runner.decode(token, pos[0])
        runner.token_id(token)  # the device sync: only the token id comes back
        pos[0] += 1

    step()  # the first decode call compiles (XLA compiles lazily, on first use)
    # Calibrate the number of steps against the budget.
    t0 = time.perf_counter()
    step()
    one = time.perf_counter() - t0
    steps = 1 if small else max(5, min(64, int(STEP_BUDGET_S / max(one, 1e-6))))
    benchmark.pedantic(step, rounds=steps, iterations=1, warmup_rounds=0 if small else 2)
    if small:
        return
    spec = backend_spec(backend)
    measured = timing.time_decode(
        runner,
        max_seq,
        prompt_len=PROMPT,
        warmup=2,
        synced_steps=steps,
        queued_rounds=1 if spec.is_cuda else 0,
        steps_per_round=steps,
    )
    decode = measured.summary()
    generate_path = generate_path_figures(runner, cfg, weights, max_seq, steps, decode)
    bw = bandwidth(spec.platform)
    need = roofline.decode_bytes_read(cfg, weights, PROMPT + steps // 2)
    roofline_tps = tp * bw / need  # each of tp devices reads its shard at its own bandwidth
    prefill = {str(n): min(timing.time_prefill(runner, n, max_seq, repeats=3)) for n in PREFILL_PROMPTS}
    case = {
        "model": model_name,
        "backend": backend,
        "quant": quant,
        "tp": tp,
        "decode": decode,
        "generate": generate_path,
        "prefill_seconds": prefill,
        "compile_seconds": runner.compile_seconds,
        "setup_seconds": setup_s,
        "weight_bytes_resident": tensor_bytes(weights),
        "decode_bytes_read": need,
        "bandwidth_bytes_per_s": bw,
        "roofline_tokens_per_s": roofline_tps,
        "fraction_of_roofline": decode["tokens_per_s"] / roofline_tps,
        "device_peak_bytes": roofline.device_peak_bytes(backend),
        **roofline.rss_bytes(),
    }
    if spec.is_iree and spec.is_cuda:
        case["iree_cuda_target"] = runner.cuda_target
    benchmark.extra_info.update({k: v for k, v in case.items() if not isinstance(v, dict)})
    bench_results["cases"].append(case)


def generate_path_figures(runner, cfg, weights, max_seq: int, steps: int, decode: dict) -> dict:
    """The generate path (device loop, ``DECODE_CHUNK`` steps per dispatch) against the best
    device-bound step of this run: on a GPU the queued per-step rounds and, for XLA, the same
    step in an in-graph loop with a static trip count (no condition read by the host); on a CPU
    (where a step ends on the host anyway) the synced per-step figure."""
    spec = backend_spec(runner.backend)
    bounds = {}
    if spec.is_cuda:
        bounds["queued_per_step"] = decode["pipelined_step_s"]
        if spec.is_xla:
            loop_s, _, hoisted = timing.time_xla_decode_loop(
                runner.backend, cfg, weights, DECODE_CHUNK, max_seq=max_seq, start_pos=PROMPT, tp=runner.tp
            )
            assert hoisted == 0, "the device-bound loop hoisted dequants: it would time dense weights"
            bounds["static_trip_loop"] = loop_s
    else:
        bounds["synced_per_step"] = decode["median_s"]
    new_tokens = 1 + (GPU_GENERATE_STEPS if spec.is_cuda else max(DECODE_CHUNK, steps))
    measured = timing.time_generate(runner, PROMPT, new_tokens, max_seq, DECODE_CHUNK, rounds=3 if spec.is_cuda else 1)
    source = min(bounds, key=bounds.get)
    return {**measured.summary(bounds[source]), "device_bound_source": source, "device_bound_candidates_s": bounds}
