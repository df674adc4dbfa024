"""Prepare what a GPU run of `pytest -m cuda` needs, in two carry-sized stages.

Run here (the CPU machine, with the compiler installed):

    .venv/bin/python scripts/gpu_bundle.py [--capability 9.0]

It writes `.gpu-bundle/stage1` (first part of the model file) and `.gpu-bundle/stage2` (the
rest, the iree-base-runtime and gguf wheels for Python 3.12, and the IREE CUDA modules
compiled here for the device's target and for sm_80), each under the 64 MiB a device run
carries. Then `scripts/gpu_run.sh` says how to run the two stages.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model_impl import checkpoints  # noqa: E402
from model_impl.backends import cuda_target, generate, iree_compile  # noqa: E402
from model_impl.checks import GREEDY_TOKENS  # noqa: E402
from model_impl.lab import fusion_matrix, linear_chain  # noqa: E402
from model_impl.lab.wheels import download_wheels  # noqa: E402
from model_impl.llama import representations  # noqa: E402
from model_impl.llama.graphs import DECODE_CHUNK  # noqa: E402
from model_impl.llama.shapes import llama32_config  # noqa: E402
from model_impl.llama.weights import parse_mode_label, specs  # noqa: E402

BUNDLE = ROOT / ".gpu-bundle"
STAGE1_BYTES = 61 * 2**20  # with the repo itself (2 MiB), under the 64 MiB a run carries
WHEELS = ("iree-base-runtime==3.13.0", "gguf==0.19.0")
REFERENCE_PROMPT_TOKENS = 7  # the parity prompt's length with the embedded tokenizer
BENCH_MAX_SEQ = 512  # benchmarks/test_decode.py MAX_SEQ
REPRO_VMFB = "iree-cuda-gemv.vmfb"  # the reproducer's module, named by MODEL_IMPL_REPRO_VMFB there
MODES = ("fp32", "int4", "bf16", "int4-bf16")  # weight modes the CUDA tests and benchmarks run
# (graph, bucket) the CUDA tests run: the agreement runs' loop (logits kept), its per-step
# reference, and the prefill (bucket None: the prompt's).
GRAPHS = (("prefill", None), ("decode", 0), ("decode_loop_logits", DECODE_CHUNK))


def _keep(path: Path, dest: Path) -> None:
    for f in (path, path.with_suffix(".json")):
        shutil.copy(f, dest / f.name)


def fusion_bundle(capability: str) -> int:
    """The IREE CUDA modules and executable sources of every iree-cuda cell of the fusion
    matrix, compiled here, plus the runtime wheel: `bash scripts/gpu_run.sh fusion` runs it."""
    root = BUNDLE / "fusion"
    shutil.rmtree(root, ignore_errors=True)
    for kind in ("iree", "iree-sources"):
        (root / "cache" / kind).mkdir(parents=True)
    download_wheels(root / "whl", WHEELS[:1])
    accepted = cuda_target.accepted_by_compiler()
    target = cuda_target.select(capability, accepted)
    os.environ["MODEL_IMPL_IREE_CUDA_TARGET"] = target
    cfg = llama32_config()
    int4 = specs(cfg, "int4")
    jobs = [(None, "default")] + [
        row for row in fusion_matrix.ROWS if not fusion_matrix.applicability(*row, "iree-cuda")
    ]
    for representation, option in jobs:
        flags = fusion_matrix.settings(option, "iree-cuda").get("iree_flags", ())
        weights = specs(cfg, "fp32") if representation is None else representations.convert(int4, representation)
        path, seconds = iree_compile.compiled_module(
            cfg, weights, "decode", 0, fusion_matrix.MAX_SEQ, "cuda", target, flags
        )
        _keep(path, root / "cache" / "iree")
        if representation is not None:
            src, _ = iree_compile.executable_sources(
                cfg, weights, "decode", 0, fusion_matrix.MAX_SEQ, "cuda", target, flags
            )
            _keep(
                iree_compile.executable_sources_path(
                    cfg, weights, "decode", 0, fusion_matrix.MAX_SEQ, "cuda", target, flags
                ),
                root / "cache" / "iree-sources",
            )
        _keep(
            linear_chain.iree_module(representation, fusion_matrix.iree_flags("iree-cuda", option)),
            root / "cache" / "iree",
        )
        print(f"{representation or 'fp32'} {option}: decode {path.name} ({seconds or 0:.0f} s)", flush=True)
    manifest = {"iree_compiler": iree_compile.compiler_version(), "bundled_cuda_targets": [target]}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    print(f"{root.relative_to(ROOT)}: {size / 2**20:.1f} MiB")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--capability", default="9.0", help="the GPU's compute capability (H100: 9.0)")
    parser.add_argument(
        "--bench",
        action="store_true",
        help="also stage 3: IREE CUDA modules for `make bench` shapes (both models)",
    )
    parser.add_argument(
        "--fusion",
        action="store_true",
        help="only the fusion-matrix bundle (.gpu-bundle/fusion: one run, no model file)",
    )
    args = parser.parse_args()
    if args.fusion:
        return fusion_bundle(args.capability)
    shutil.rmtree(BUNDLE, ignore_errors=True)
    stage1, stage2 = BUNDLE / "stage1", BUNDLE / "stage2"
    (stage2 / "cache" / "iree").mkdir(parents=True)
    stage1.mkdir(parents=True)

    model = checkpoints.default_model_path()
    data = model.read_bytes()
    (stage1 / "model.part0").write_bytes(data[:STAGE1_BYTES])
    (stage2 / "model.part1").write_bytes(data[STAGE1_BYTES:])

    download_wheels(stage2 / "whl", WHEELS)

    accepted = cuda_target.accepted_by_compiler()
    targets = [cuda_target.select(args.capability, accepted)]  # what the device picks from the bundle
    cfg, weights = checkpoints.load(model)
    bucket = generate.prompt_bucket(REFERENCE_PROMPT_TOKENS)
    shapes = [(bucket, generate.cache_length(REFERENCE_PROMPT_TOKENS, n)) for n in (GREEDY_TOKENS, 8)]
    for target in targets:
        for mode in MODES:
            quant, dtype = parse_mode_label(mode)
            mcfg = dataclasses.replace(cfg, dtype=dtype)
            for (bucket_, max_seq), (graph, graph_bucket) in itertools.product(sorted(set(shapes)), GRAPHS):
                graph_bucket = bucket_ if graph_bucket is None else graph_bucket  # prefill: the prompt's
                path, seconds = iree_compile.compiled_module(
                    mcfg, specs(mcfg, quant), graph, graph_bucket, max_seq, "cuda", target
                )
                print(f"{target} {mode} {graph} max_seq={max_seq}: {path.name} ({seconds or 0:.1f} s)")
                for f in (path, path.with_suffix(".json")):
                    shutil.copy(f, stage2 / "cache" / "iree" / f.name)
    if args.bench:
        stage3 = BUNDLE / "stage3" / "cache" / "iree"
        stage3.mkdir(parents=True)
        bench_target = cuda_target.select(args.capability, accepted)
        for name, bench_cfg in (("smollm2-135m", cfg), ("llama-3.2-1b", llama32_config())):
            for mode in MODES:
                quant, dtype = parse_mode_label(mode)
                mcfg = dataclasses.replace(bench_cfg, dtype=dtype)
                for graph, bucket_ in (("prefill", 16), ("prefill", 64), ("decode", 0), ("decode_loop", DECODE_CHUNK)):
                    path, seconds = iree_compile.compiled_module(
                        mcfg,
                        specs(mcfg, quant),
                        graph,
                        bucket_,
                        BENCH_MAX_SEQ,
                        "cuda",
                        bench_target,
                    )
                    print(f"bench {name} {mode} {graph}/{bucket_}: {path.name} ({seconds or 0:.1f} s)")
                    for f in (path, path.with_suffix(".json")):
                        shutil.copy(f, stage3 / f.name)
    # the IREE-CUDA GEMV reproducer's module (tests/cuda/test_perf_reproducers.py), its own flags
    repro = ROOT / "reproducers" / "iree-cuda-gemv"
    repro_flags = json.loads((repro / "expect.json").read_text())["flags"]
    (stage2 / REPRO_VMFB).write_bytes(iree_compile.compile_mlir((repro / "input.mlir").read_text(), repro_flags))
    manifest = {
        "iree_compiler": iree_compile.compiler_version(),
        "accepted_cuda_targets": list(accepted),
        "bundled_cuda_targets": targets,
        "model_sha256": hashlib.sha256(data).hexdigest(),
    }
    (stage2 / "manifest.json").write_text(json.dumps(manifest, indent=2))
    for stage in sorted(BUNDLE.glob("stage*")):
        size = sum(f.stat().st_size for f in stage.rglob("*") if f.is_file())
        print(f"{stage.relative_to(ROOT)}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
