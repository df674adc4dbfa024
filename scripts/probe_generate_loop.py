"""Where the generate path's last ~10% goes on a GPU: the device loop's step (generate path)
against the static-trip in-graph loop, under this process's XLA_FLAGS (run once per setting).

    XLA_FLAGS=... python3 scripts/probe_generate_loop.py OUT.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_impl import env  # noqa: E402
from model_impl.backends import generate  # noqa: E402
from model_impl.lab import timing  # noqa: E402
from model_impl.llama.graphs import DECODE_CHUNK  # noqa: E402
from model_impl.llama.shapes import llama32_config  # noqa: E402
from model_impl.llama.weights import quantize_weights, synthetic  # noqa: E402

PROMPT, MAX_SEQ = 16, 512


def main(out: str) -> int:
    cases = []
    for mode, dtype, quant in (("bf16", "bfloat16", "dense"), ("int4-bf16", "bfloat16", "int4")):
        cfg = dataclasses.replace(llama32_config(), dtype=dtype)
        weights = synthetic(cfg, seed=0)
        weights = quantize_weights(weights) if quant == "int4" else weights
        runner = generate.make_runner(cfg, weights, "xla-cuda")
        gen = timing.time_generate(runner, PROMPT, 1 + 4 * DECODE_CHUNK, MAX_SEQ, DECODE_CHUNK, rounds=3)
        loop_s, spread, hoisted = timing.time_xla_decode_loop(
            "xla-cuda", cfg, weights, DECODE_CHUNK, max_seq=MAX_SEQ, start_pos=PROMPT
        )
        case = {"mode": mode, **gen.summary(loop_s), "static_trip_loop_spread_s": spread, "hoisted": hoisted}
        print(json.dumps(case), flush=True)
        cases.append(case)
        del runner
    record = {"environment": env.environment("cuda", xla_flags=os.environ.get("XLA_FLAGS", "")), "cases": cases}
    Path(out).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
