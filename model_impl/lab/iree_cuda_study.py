"""``python -m model_impl iree-study``: IREE-CUDA's decode GEMV against XLA-CUDA (issue 15,
item 5): weight layouts, the GEMV as multiply + reduce, and IREE's own GPU codegen options, for
bf16 and int4, on the Llama-3.2-1B decode step (bf16 compute, batch 1, max_seq 128, seeded
synthetic weights).

Two steps, on two machines:

    # here (the CPU machine, iree-base-compiler installed): compile every variant for CUDA sm_80
    python -m model_impl iree-study build [--only ID,...] [--survey] [--all] [--shapes tiny]

    # on the GPU machine (carry .gpu-bundle/iree-cuda-study; no IREE compiler there):
    python3 -m model_impl iree-study run --bundle .gpu-bundle/iree-cuda-study --out $OUT/iree-cuda-speed-h200.json

``build`` writes the bundle (``--out``, default ``.gpu-bundle/iree-cuda-study``): one
``<variant>.vmfb`` per distinct module, ``manifest.json`` (per variant: form, head, flags, where
each flag is documented, compile seconds, dispatches per step, transpose dispatches and the bytes
they write, the dequant verdict, the codegen pipeline of each contraction-like dispatch) and the
iree-base-runtime cp312 wheel. Modules are compiled through the package's cache
(:func:`iree_compile.compile_cached`, keyed by the graph's identity, flags and compiler) and
carried by file name, so the GPU machine recomputes no keys; the weights' signature is checked
against the manifest instead. ``--survey``: the dispatch survey only (no module, no wheel).

``run`` installs the wheel into /tmp/site where ``iree.runtime`` is missing, builds the bf16
weights once (int4 quantized from them), times the dense bf16 decode step on XLA-CUDA
(:func:`timing.time_xla_decode_loop`: 32 steps per jitted call, the figure the fusion matrix
reports), then each IREE-CUDA variant with the suite's timer (:func:`timing.time_decode` on an
:meth:`IreeRunner.loaded` over the carried module: synced steps, each ending with its token on
the host, and queued rounds), each form's weights uploaded once for all its flag sets; then the
fastest variants again with the step replayed as one CUDA graph. ``--out`` is rewritten after
every variant as the record the report reads (:func:`speed_record`;
``report/vs_bf16_section.iree_cuda_lines``): a timeout keeps what was measured, and a time
budget skips what would not fit.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import inspect
import json
import os
import re
import shutil
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .. import env
from ..analyzers import FLOAT_BYTES, iree_dispatch
from ..backends import cache, iree_compile
from ..backends.iree_runtime import IreeDevice, IreeRunner
from ..llama.config import Config
from ..llama.graphs import GRAPH_SOURCES, export_stablehlo, graph_args
from ..llama.linears import LinearForm
from ..llama.representations import convert, convert_dense
from ..llama.shapes import REAL_SHAPES, shrunk_llama32_config
from ..llama.weights import Weights, linear_weight_elements, quantize_weights, synthetic
from ..llama.weights import specs as weight_specs
from . import timing, wheels
from .fusion_matrix import MAX_SEQ, PROMPT_TOKENS, error_line

BUNDLE = cache.PACKAGE_ROOT.parent / ".gpu-bundle" / "iree-cuda-study"
CUDA_TARGET = iree_compile.DEFAULT_CUDA_TARGET  # 3.13 has no sm_90: sm_80 PTX is JIT-compiled on Hopper
WHEEL = "iree-base-runtime==3.13.0"
WHEEL_FILE = "iree_base_runtime-3.13.0-cp312-abi3-manylinux_2_28_x86_64.whl"
DTYPE = "bfloat16"
XLA_STEPS = 32  # the in-graph loop's steps per call (as the fusion matrix)
CARRY_LIMIT = 60 * 2**20  # a device run carries 64 MiB with the repository
# The real shapes (seeded synthetic weights), or a 2-layer model (the CPU smoke test's).
SHAPES = {**REAL_SHAPES, "tiny": shrunk_llama32_config}

# form -> (quant, representation or dense form, head). Heads: "dot" (x @ E.T, as loaded),
# "reduce" (multiply + reduce), "io" (an untied [hidden, vocab] copy, DenseIOLinear).
FORMS = {
    "dense-dot": ("dense", "dot", "dot"),
    "dense-reduce": ("dense", "reduce", "reduce"),
    "dense-io": ("dense", "io", "io"),
    "s4-grouped": ("int4", "s4-grouped", "dot"),
    "s4-grouped+io-head": ("int4", "s4-grouped", "io"),
    "u4-affine-io": ("int4", "u4-affine-io", "io"),
    "u4-magic": ("int4", "u4-magic", "reduce"),
}

HELP_LIST = "iree-compile 3.13 --help-list-hidden"
OPT_DOC = "iree.dev/reference/optimization-options"
KERNEL_CONFIG = "IREE compiler/src/iree/compiler/Codegen/LLVMGPU/KernelConfig.cpp (cl::opt, default in brackets)"

# flag set -> (flags, where each is documented / what it changes)
FLAG_SETS = {
    "default": ((), "iree-compile's defaults (--iree-opt-level=O0)"),
    "O3": (("--iree-opt-level=O3",), OPT_DOC),
    "O3-aggressive": (
        ("--iree-opt-level=O3", "--iree-dispatch-creation-enable-aggressive-fusion"),
        f"{OPT_DOC} (both flags named there)",
    ),
    "split-reduction": (("--iree-dispatch-creation-enable-split-reduction",), HELP_LIST),
    "no-reduction-vd": (
        ("--iree-codegen-llvmgpu-use-reduction-vector-distribution=false",),
        f"{HELP_LIST}; {KERNEL_CONFIG} [true]: off sends reductions to the older pipelines",
    ),
    "no-vd": (
        ("--iree-codegen-llvmgpu-use-vector-distribution=false",),
        f"{HELP_LIST}; {KERNEL_CONFIG} [true]",
    ),
    "legacy-vectorize": (
        ("--iree-codegen-llvmgpu-vectorize-pipeline",),
        f"{HELP_LIST} ('forces use of the legacy LLVMGPU vectorize pipeline'); {KERNEL_CONFIG} [false]",
    ),
    "no-tile-fuse-matmul": (
        ("--iree-codegen-llvmgpu-use-tile-and-fuse-matmul=false",),
        f"{HELP_LIST}; {KERNEL_CONFIG} [true]",
    ),
    "propagate-transposes": (
        ("--iree-opt-aggressively-propagate-transposes",),
        f"{HELP_LIST} ('propagates transposes to named ops even when the result is a linalg.generic')",
    ),
    "generalize-matmul": (("--iree-opt-generalize-matmul",), HELP_LIST),
    "horizontal-fusion": (("--iree-dispatch-creation-enable-fuse-horizontal-contractions",), HELP_LIST),
    "prefetch-3": (("--iree-llvmgpu-prefetch-num-stages=3",), HELP_LIST),
    "outer-reduction-tf": (("--iree-codegen-llvmgpu-enable-outer-reduction-tile-and-fuse",), HELP_LIST),
}

# A variant whose graph takes the same arguments as the decode step and does nothing with them
# (token + pos): the cost of one call through the IREE runtime with this many buffers.
CALL_OVERHEAD = "call-overhead"

# The variants compiled, in the order the device times them: forms in order (each form's weights
# are uploaded once), within a form the most telling first. Flag sets whose module is byte-identical
# to one already listed are compiled and recorded (``same_module_as``) but not timed again.
VARIANTS = (
    ("dense-dot", "default"),
    ("dense-dot", "O3"),
    ("dense-dot", "propagate-transposes"),
    ("dense-dot", CALL_OVERHEAD),
    ("dense-dot", "O3-aggressive"),
    ("dense-dot", "generalize-matmul"),
    ("dense-dot", "split-reduction"),
    ("dense-dot", "no-vd"),
    ("dense-dot", "legacy-vectorize"),
    ("dense-dot", "no-tile-fuse-matmul"),
    ("dense-dot", "horizontal-fusion"),
    ("dense-dot", "outer-reduction-tf"),
    ("dense-dot", "no-reduction-vd"),
    ("dense-dot", "prefetch-3"),
    ("dense-reduce", "default"),
    ("dense-reduce", "O3"),
    ("dense-reduce", "no-reduction-vd"),
    ("dense-io", "default"),
    ("dense-io", "O3"),
    ("dense-io", "prefetch-3"),
    ("s4-grouped", "O3"),
    ("s4-grouped", "default"),
    ("s4-grouped", CALL_OVERHEAD),
    ("u4-magic", "O3"),
    ("u4-magic", "default"),
    ("u4-affine-io", "O3"),
    ("u4-affine-io", "default"),
    ("s4-grouped+io-head", "O3"),
)
ALL_VARIANTS = tuple((f, s) for f in FORMS for s in FLAG_SETS)


def variant_id(form: str, flag_set: str) -> str:
    return f"{form}@{flag_set}"


def select(variants, only: str | None) -> list[tuple[str, str]]:
    """The variants named by ``only`` (comma-separated ids, forms or flag sets; all if None), or
    a ValueError naming what names none of them."""
    if not only:
        return list(variants)
    wanted = [w for w in only.split(",") if w]
    known = {n for form, flag_set in variants for n in (variant_id(form, flag_set), form, flag_set)}
    unknown = [w for w in wanted if w not in known]
    if unknown or not wanted:
        raise ValueError(
            f"--only: unknown {', '.join(unknown) or '(none given)'}; known: variant ids (form@flag-set), "
            f"forms ({', '.join(FORMS)}), flag sets ({', '.join([*FLAG_SETS, CALL_OVERHEAD])})"
        )
    return [v for v in variants if {variant_id(*v), *v} & set(wanted)]


def config(shapes: str) -> Config:
    return dataclasses.replace(SHAPES[shapes](), dtype=DTYPE)


def build_weights(form: str, dense: Weights, int4: Weights | None) -> Weights:
    """``form``'s weights from the dense bf16 tree and its int4 quantization (arrays or specs)."""
    quant, rep, head = FORMS[form]
    return convert_dense(dense, rep) if quant == "dense" else convert(int4, rep, head=head)


def form_specs(cfg: Config, form: str) -> Weights:
    return build_weights(form, weight_specs(cfg, "dense"), weight_specs(cfg, "int4"))


def quantize_layers_parallel(dense: Weights) -> Weights:
    """``quantize_weights(dense)``, one layer per thread (numpy releases the GIL in the
    quantizer's array ops): the same tree, several times sooner on the GPU machine's 16 cores."""

    def one(layer):
        return quantize_weights(dataclasses.replace(dense, layers=(layer,))).layers[0]

    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        layers = tuple(pool.map(one, dense.layers))
    return dataclasses.replace(quantize_weights(dataclasses.replace(dense, layers=())), layers=layers)


def signature_digest(specs) -> str:
    return hashlib.sha256(
        json.dumps(iree_compile.weights_signature(specs), sort_keys=True, default=str).encode()
    ).hexdigest()[:16]


def target_flags() -> list[str]:
    return iree_compile.target_flags("cuda", CUDA_TARGET)


def variant_flags(flag_set: str) -> list[str]:
    return target_flags() + ([] if flag_set == CALL_OVERHEAD else list(FLAG_SETS[flag_set][0]))


def null_mlir(cfg: Config, specs) -> str:
    def null_step(weights, token, pos, cache):
        return token + pos, jnp.zeros((1,), jnp.float32), cache

    fn = jax.jit(null_step, keep_unused=True)
    return jax.export.export(fn)(*graph_args(cfg, specs, "decode", 0, MAX_SEQ)).mlir_module()


def identity(cfg: Config, specs, flag_set: str) -> dict:
    """What the variant's module is (its cache key with the flags): the decode graph, or the
    null step, named by its source."""
    ident = iree_compile.graph_identity(cfg, specs, "decode", 0, MAX_SEQ)
    if flag_set == CALL_OVERHEAD:
        source = inspect.getsource(null_mlir).encode()
        ident.update(graph="null-decode", null_source=hashlib.sha256(source).hexdigest()[:16])
    return ident


# --- build (here) -----------------------------------------------------------------------------

CONFIG_FLAGS = ("--compile-to=executable-configurations", "--mlir-print-debuginfo=false")
_ONE_OP = (
    "func.func @f(%a: tensor<64xf32>) -> tensor<64xf32> {\n"
    "  %b = stablehlo.multiply %a, %a : tensor<64xf32>\n  return %b : tensor<64xf32>\n}"
)


def flag_error(flags) -> str | None:
    """None when iree-compile accepts ``flags`` (with the CUDA target) on a one-op module."""
    try:
        iree_compile.compile_mlir(_ONE_OP, target_flags() + list(flags))
    except Exception as e:  # an unknown flag or value is one error line
        return error_line(e)
    return None


def _kernel_name(export: str) -> str:
    return re.sub(r"^\w*?_dispatch_\d+_", "", export)


def survey(text: str, cfg: Config) -> dict:
    """Per step, from the module after codegen configuration: dispatches, transposes (and the
    bytes they write), the dequant verdict, and each kernel's pipeline and workgroup size."""
    verdict = iree_dispatch.analyze_iree_executables(text, linear_weight_elements(cfg))
    bodies = dict(iree_dispatch.split_executables(text))
    kernels, transposes, transposed_bytes = Counter(), 0, 0
    for e in verdict.executables:
        if not e.sites:
            continue
        body = bodies.get(e.name, "")
        name = _kernel_name(e.exports[0]) if e.exports else e.name
        pipe = re.search(r"pipeline = (?:#iree_gpu\.pipeline<(\w+)>|(\w+))", body)
        wg = re.search(r"workgroup_size = \[([\d, ]+)\]", body)
        pipeline = (pipe.group(1) or pipe.group(2)) if pipe else "?"
        kernels[f"{name} | {pipeline} | wg [{wg.group(1) if wg else '?'}]"] += e.sites
        t = re.match(r"transpose_([\dx]+)_(f32|bf16|f16)", name)
        if t:
            transposes += e.sites
            n = int(np.prod([int(d) for d in t.group(1).split("x")]))
            transposed_bytes += e.sites * n * FLOAT_BYTES[t.group(2)]
    return {
        "dispatches": verdict.dispatches,
        "transposes": transposes,
        "transposed_bytes_per_step": transposed_bytes,
        "dequant_verdict": verdict.verdict,
        "fused_dispatches": verdict.count(iree_dispatch.FUSED_DISPATCH),
        "dequant_only_dispatches": verdict.count(iree_dispatch.DEQUANT_ONLY),
        "materialized_bytes_per_step": verdict.materialized_bytes,
        "kernels": dict(sorted(kernels.items())),
        # the GEMVs and the transposes feeding them (attention's batch_matmul / matmul_like_8x4x*
        # left out): kernel | codegen pipeline | workgroup -> sites
        "gemv_kernels": {
            k: n
            for k, n in sorted(kernels.items())
            if re.match(r"(vecmat|matvec|matmul|contract|transpose)", k) and not re.match(r"matmul_like_8x4x", k)
        },
    }


def runtime_wheel(dest: Path) -> Path:
    """The iree-base-runtime cp312 wheel: one another bundle already holds, else pip download."""
    dest.mkdir(parents=True, exist_ok=True)
    for found in sorted(BUNDLE.parent.glob(f"*/whl/{WHEEL_FILE}")):
        if found.parent != dest:
            shutil.copy(found, dest / WHEEL_FILE)
            return dest / WHEEL_FILE
    wheels.download_wheels(dest, [WHEEL])
    return next(dest.glob("iree_base_runtime-*.whl"))


def build_variant(rec: dict, cfg: Config, out: Path, survey_only: bool, mlir: dict, by_sha: dict) -> None:
    """Compile one variant (configurations, then unless ``survey_only`` the module, copied into
    ``out`` unless byte-identical to one already there) and fill its manifest record."""
    form, flag_set = rec["form"], rec["flag_set"]
    specs = form_specs(cfg, form)
    rec["weights_signature"] = signature_digest(specs)
    ident = identity(cfg, specs, flag_set)
    graph = ident["graph"]

    def make():
        if (form, graph) not in mlir:
            null = graph == "null-decode"
            mlir[(form, graph)] = null_mlir(cfg, specs) if null else export_stablehlo(cfg, specs, "decode", 0, MAX_SEQ)
        return mlir[(form, graph)]

    flags = variant_flags(flag_set)
    configs, _ = iree_compile.compile_cached(
        ident, make, flags + list(CONFIG_FLAGS), kind="iree-configs", suffix=".mlir"
    )
    rec.update(survey(configs.read_text(), cfg))
    if survey_only:
        return
    path, seconds = iree_compile.compile_cached(ident, make, flags)
    rec["compile_seconds"] = seconds
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    rec["vmfb_sha256"] = sha[:16]
    if sha in by_sha:
        rec["same_module_as"] = by_sha[sha]
        return
    by_sha[sha] = rec["id"]
    rec["vmfb"] = rec["id"].replace("@", "__").replace("+", "_") + ".vmfb"
    shutil.copy(path, out / rec["vmfb"])
    os.chmod(out / rec["vmfb"], 0o644)  # the cache writes 0600 temp files
    rec["vmfb_bytes"] = path.stat().st_size


def build(out: Path, variants, shapes: str, survey_only: bool, wheel: bool = True, log=print) -> int:
    """Compile ``variants`` at ``shapes`` for CUDA into the bundle ``out`` (replaced); 1 when the
    bundle is over what a device run carries."""
    cfg = config(shapes)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t_start = time.perf_counter()
    used_sets = sorted({fs for _, fs in variants if fs != CALL_OVERHEAD})
    flag_errors = {name: flag_error(FLAG_SETS[name][0]) for name in used_sets}
    for name, err in flag_errors.items():
        log(f"flag set {name} {list(FLAG_SETS[name][0])}: {'parses' if err is None else err}")
    manifest = {
        "about": __doc__.split("\n\n")[0],
        "iree_compiler": iree_compile.compiler_version(),
        "cuda_target": CUDA_TARGET,
        "target_flags": target_flags(),
        "dtype": DTYPE,
        "shapes": shapes,
        "max_seq": MAX_SEQ,
        "start_pos": PROMPT_TOKENS,
        "config": repr(cfg),
        "graph_sources_digest": cache.source_digest(*GRAPH_SOURCES),
        "flag_sets": {
            name: {"flags": list(flags), "documented": doc, "parse_error": flag_errors.get(name)}
            for name, (flags, doc) in FLAG_SETS.items()
            if name in flag_errors
        },
        "variants": [],
    }
    mlir, by_sha = {}, {}
    for form, flag_set in variants:
        quant, rep, head = FORMS[form]
        rec = {"id": variant_id(form, flag_set), "form": form, "quant": quant, "representation": rep, "head": head}
        rec.update(flag_set=flag_set, flags=variant_flags(flag_set)[len(target_flags()) :])
        manifest["variants"].append(rec)
        if flag_errors.get(flag_set):
            rec["error"] = f"flags rejected by iree-compile: {flag_errors[flag_set]}"
            log(f"{rec['id']}: {rec['error']}")
            continue
        t0 = time.perf_counter()
        try:
            build_variant(rec, cfg, out, survey_only, mlir, by_sha)
        except Exception as e:  # a compiler failure is a finding of the variant
            rec["error"] = error_line(e)
            log(f"{rec['id']}: error {rec['error']}")
            continue
        same = f" = {rec['same_module_as']}" if rec.get("same_module_as") else ""
        log(
            f"{rec['id']}: {rec['dispatches']} dispatches, {rec['transposes']} transposes "
            f"({rec['transposed_bytes_per_step'] / 2**20:.0f} MiB), {rec['dequant_verdict']} "
            f"{rec['fused_dispatches']}/{rec['fused_dispatches'] + rec['dequant_only_dispatches']}, "
            f"{time.perf_counter() - t0:.1f} s{same}"
        )
    if wheel and not survey_only:
        manifest["wheel"] = f"whl/{runtime_wheel(out / 'whl').name}"
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log(f"{out}: {size / 2**20:.1f} MiB, {time.perf_counter() - t_start:.0f} s")
    if size > CARRY_LIMIT:
        print(f"error: the bundle is over {CARRY_LIMIT / 2**20:.0f} MiB", file=sys.stderr)
        return 1
    return 0


# --- run (on the GPU machine) -----------------------------------------------------------------

SITE = Path("/tmp/site")
# The IREE CUDA driver's runtime flag (iree-run-module --help, hal/drivers/cuda/registration):
# command buffers as CUDA graphs instead of launches on a stream. IREE memoizes the step's command
# buffer (--iree-hal-memoization and --iree-hal-indirect-command-buffers are on by default in
# 3.13: adding either leaves the module byte-identical), so in graph mode a step replays one
# instantiated graph instead of launching every dispatch from the host.
GRAPHS_FLAG = "--cuda_use_streams=false"
KEEP = (
    "id", "form", "quant", "representation", "head", "flag_set", "flags", "dispatches", "transposes",
    "transposed_bytes_per_step", "dequant_verdict", "materialized_bytes_per_step", "compile_seconds",
    "gemv_kernels",
)  # fmt: skip
TIMED = ("step_s", "spread_s", "synced_step_s")  # what a byte-identical module takes from the one timed


def install_runtime(bundle: Path, manifest: dict) -> str:
    """``iree.runtime`` as installed, else the carried wheel in /tmp/site (as gpu_run.sh)."""
    if (SITE / "iree" / "runtime").is_dir():
        wheels.on_path(SITE)
    try:
        import iree.runtime

        return f"importable ({Path(iree.runtime.__file__).parent})"
    except ImportError:
        pass
    if not manifest.get("wheel"):
        raise RuntimeError(f"iree.runtime is not installed and {bundle} carries no wheel (built with --no-wheel)")
    wheels.install(bundle / manifest["wheel"], SITE)
    import iree.runtime  # noqa: F401

    return f"{Path(manifest['wheel']).name} installed into {SITE}"


def time_variant(runner) -> dict:
    """The suite's decode timer on ``runner``: one step to JIT and warm, one to size the rounds,
    then ``timing.time_decode`` (2 warm-up steps, synced steps, queued rounds)."""
    runner.reset(MAX_SEQ)
    t0 = time.perf_counter()
    token, _ = runner.decode(runner.put_token(1), PROMPT_TOKENS)
    runner.token_id(token)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    token, _ = runner.decode(token, PROMPT_TOKENS + 1)
    runner.token_id(token)
    estimate = time.perf_counter() - t0
    fast = estimate < 0.01
    steps = max(4, min(32, round(0.25 / max(estimate, 1e-4))))
    measured = timing.time_decode(
        runner,
        MAX_SEQ,
        synced_steps=8 if fast else 4,
        queued_rounds=5 if fast else 3,
        steps_per_round=steps,
        start_pos=PROMPT_TOKENS,
    )
    rounds = measured.device_bound
    return {
        "step_s": statistics.median(rounds),
        "spread_s": [min(rounds), max(rounds)],
        "synced_step_s": statistics.median(measured.synced),
        "first_call_s": first,
        "rounds": len(rounds),
        "steps_per_round": steps,
        "tokens": measured.tokens,
    }


def _ms(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f} ms"


def read_manifest(bundle: Path) -> dict:
    """The bundle's manifest, or a ValueError naming ``--bundle``."""
    try:
        return json.loads((bundle / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(
            f"--bundle {bundle}: no bundle there (run `iree-study build` first): {error_line(e)}"
        ) from None


class Run:
    """One ``run``: the result so far (rewritten to ``out`` as :func:`speed_record` after every
    measurement), the bundle, the host weights, and the clock its budget is kept by."""

    def __init__(self, args, manifest: dict, variants: list[dict]):
        self.args, self.manifest, self.variants = args, manifest, variants
        self.bundle, self.out = Path(args.bundle), Path(args.out)
        self.t_start = time.perf_counter()
        self.cfg = config(manifest.get("shapes", "llama-3.2-1b"))
        self.result = {"about": __doc__.split("\n\n")[0], "command": sys.argv[1:], "budget_s": args.budget_s}
        self.dense = self.int4 = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def log(self, message: str) -> None:
        print(f"[{self.elapsed():6.1f} s] {message}", flush=True)

    def write(self) -> None:
        self.result["wall_s"] = self.elapsed()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(speed_record(self.result), indent=1, default=str) + "\n")

    def fail(self, message: str) -> int:
        self.result["error"] = message
        self.write()
        print(f"error: {message}", file=sys.stderr, flush=True)
        return 2

    def host_weights(self, form: str, expected: str | None) -> Weights:
        """``form``'s weights, made here from the seeded bf16 tree; a ValueError where their
        signature is not the compiled module's."""
        if FORMS[form][0] == "int4" and self.int4 is None:
            t0 = time.perf_counter()
            self.int4 = quantize_layers_parallel(self.dense_weights())
            self.log(f"int4 weights quantized in {time.perf_counter() - t0:.1f} s")
        w = build_weights(form, self.dense_weights(), self.int4)
        got = signature_digest(iree_compile.weight_specs(w))
        if expected and got != expected:
            raise ValueError(
                f"the {form} weights' signature {got} is not the compiled module's {expected} "
                "(model_impl changed since `build`? rebuild the bundle)"
            )
        return w

    def xla(self, form: str) -> None:
        t0 = time.perf_counter()
        try:
            s, spread, hoisted = timing.time_xla_decode_loop(
                "xla-cuda",
                self.cfg,
                convert_dense(self.dense_weights(), form),
                XLA_STEPS,
                max_seq=MAX_SEQ,
                start_pos=PROMPT_TOKENS,
            )
            rec = {"step_s": s, "spread_s": spread, "hoisted_dequants": hoisted}
        except Exception as e:  # a failure is a finding
            rec = {"error": error_line(e)}
        rec.update(form=form, steps_per_call=XLA_STEPS, wall_s=time.perf_counter() - t0)
        self.result["xla"][f"{DTYPE}:{form}"] = rec
        self.log(f"xla-cuda dense bf16 {form}: {_ms(rec.get('step_s'))} {rec.get('error', '')}")
        self.write()
        gc.collect()

    def dense_weights(self) -> Weights:
        """The seeded bf16 tree every form is built from, made once."""
        if self.dense is None:
            t0 = time.perf_counter()
            self.dense = synthetic(self.cfg, seed=0)
            self.log(f"bf16 weights made in {time.perf_counter() - t0:.1f} s")
        return self.dense

    def xla_dot(self) -> float | None:
        return self.result["xla"].get(f"{DTYPE}:dot", {}).get("step_s")

    def upload(self, iree: IreeDevice, form: str, expected: str | None):
        """(the form's weights on ``iree``, seconds to build them, seconds to upload them)."""
        t0 = time.perf_counter()
        host = self.host_weights(form, expected)
        built = time.perf_counter() - t0
        t0 = time.perf_counter()
        device_weights = [iree.put(x) for x in jax.tree_util.tree_leaves(host)]
        return device_weights, built, time.perf_counter() - t0

    def time_on(self, iree: IreeDevice, device_weights, vmfb: str) -> dict:
        t0 = time.perf_counter()
        fn = iree.load(self.bundle / vmfb)
        load_s = time.perf_counter() - t0
        runner = IreeRunner.loaded(
            self.cfg, iree, device_weights, {("decode", 0, MAX_SEQ): fn}, "iree-cuda", CUDA_TARGET
        )
        return {"load_s": load_s, **time_variant(runner)}

    def streams(self) -> dict:
        """Every variant on the driver's default (stream) mode: id -> record of those timed."""
        budget = self.args.budget_s - (0 if self.args.no_graphs else 75) - 20
        iree = None if self.args.host_only else IreeDevice("cuda")
        timed = {}
        for form in dict.fromkeys(v["form"] for v in self.variants):
            recs = [v for v in self.variants if v["form"] == form]
            rows = [{k: v.get(k) for k in KEEP} for v in recs]
            self.result["iree"].extend(rows)
            for v, r in zip(recs, rows):
                if v.get("error"):
                    r["compile_error"] = v["error"]
                if v.get("same_module_as"):
                    r["same_module_as"] = v["same_module_as"]
            todo = [(v, r) for v, r in zip(recs, rows) if not (v.get("error") or v.get("same_module_as"))]
            if not todo:
                continue
            if self.elapsed() > budget:
                for _, r in todo:
                    r["skipped"] = "time budget"
                continue
            if self.args.host_only:
                self.check_host_weights(form, todo)
                continue
            try:
                device_weights, built, upload = self.upload(iree, form, todo[0][0].get("weights_signature"))
                gc.collect()
            except Exception as e:
                for _, r in todo:
                    r["error"] = error_line(e)
                self.log(f"{form}: {error_line(e)}")
                self.write()
                continue
            self.log(f"{form}: weights built in {built:.1f} s, uploaded in {upload:.1f} s")
            reference = None
            for v, r in todo:
                r["upload_s"] = upload
                if self.elapsed() > budget:
                    r["skipped"] = "time budget"
                    continue
                try:
                    r.update(self.time_on(iree, device_weights, v["vmfb"]))
                    if v["flag_set"] != CALL_OVERHEAD:
                        reference = reference or r
                        r["tokens_match_first_of_form"] = r["tokens"] == reference["tokens"]
                    timed[r["id"]] = r
                except Exception as e:  # a runtime failure is a finding of the variant
                    r["error"] = error_line(e)
                gc.collect()
                ratio = f"{r['step_s'] / self.xla_dot():.2f}x XLA" if r.get("step_s") and self.xla_dot() else ""
                self.log(
                    f"{r['id']}: {_ms(r.get('step_s'))} (synced {_ms(r.get('synced_step_s'))}; first call "
                    f"{r.get('first_call_s', 0):.2f} s) {ratio} {r.get('error', '')}"
                )
                self.write()
            del device_weights
            gc.collect()
        self.write()
        return timed

    def check_host_weights(self, form: str, todo) -> None:
        """``--host-only``: the form's weights built here, their signature the module's."""
        t0 = time.perf_counter()
        try:
            host = self.host_weights(form, todo[0][0].get("weights_signature"))
        except Exception as e:
            for _, r in todo:
                r["error"] = error_line(e)
            self.log(f"{form}: {error_line(e)}")
            return
        leaves = jax.tree_util.tree_leaves(host, is_leaf=lambda x: isinstance(x, LinearForm))
        kinds = sorted({type(x).__name__ for x in leaves})
        self.log(f"{form}: host weights built in {time.perf_counter() - t0:.1f} s, signature matches ({kinds})")
        for _, r in todo:
            r["skipped"] = "host only"

    def graphs(self, timed: dict) -> None:
        """The fastest dense and int4 decode variants and the dense call overhead again, on a
        driver created after ``GRAPHS_FLAG`` (the weights uploaded again to its device)."""
        import iree.runtime as rt

        decode = [r for r in timed.values() if r["flag_set"] != CALL_OVERHEAD and r.get("step_s")]
        picks = []
        for quant in ("dense", "int4"):
            mine = [r for r in decode if r["quant"] == quant]
            if mine:
                picks.append(min(mine, key=lambda r: r["step_s"])["id"])
        picks += [r["id"] for r in timed.values() if r["flag_set"] == CALL_OVERHEAD and r["quant"] == "dense"]
        section = {"runtime_flags": [GRAPHS_FLAG], "variants": []}
        self.result["cuda_graphs"] = section
        if not picks or self.elapsed() > self.args.budget_s - 60:
            section["skipped"] = "nothing timed" if not picks else "time budget"
            self.write()
            return
        try:
            rt.flags.parse_flags(GRAPHS_FLAG)
            iree = IreeDevice("cuda", fresh_driver=True)
        except Exception as e:
            section["error"] = error_line(e)
            self.write()
            return
        by_id = {v["id"]: v for v in self.variants}
        for form in dict.fromkeys(by_id[i]["form"] for i in picks):
            ids = [i for i in picks if by_id[i]["form"] == form]
            if self.elapsed() > self.args.budget_s - 40:
                section["variants"] += [{"id": i, "skipped": "time budget"} for i in ids]
                continue
            try:
                device_weights, _, _ = self.upload(iree, form, by_id[ids[0]].get("weights_signature"))
            except Exception as e:
                section["variants"] += [{"id": i, "error": error_line(e)} for i in ids]
                continue
            for i in ids:
                r = {"id": i, "streams_step_s": timed[i]["step_s"]}
                section["variants"].append(r)
                try:
                    r.update(self.time_on(iree, device_weights, by_id[i]["vmfb"]))
                    if by_id[i]["flag_set"] != CALL_OVERHEAD:
                        r["tokens_match_streams"] = r["tokens"] == timed[i]["tokens"]
                except Exception as e:
                    r["error"] = error_line(e)
                self.log(
                    f"cuda graphs {i}: {_ms(r.get('step_s'))} (streams {_ms(r['streams_step_s'])}) {r.get('error', '')}"
                )
                self.write()
            del device_weights
            gc.collect()

    def __call__(self) -> int:
        args, manifest, result = self.args, self.manifest, self.result
        for key in ("iree_compiler", "cuda_target", "dtype", "shapes", "max_seq", "start_pos", "graph_sources_digest"):
            result[key] = manifest.get(key)
        # the modules run the graphs as compiled at `build`; the weights are built by today's sources
        result["graph_sources_changed_since_build"] = (
            cache.source_digest(*GRAPH_SOURCES) != manifest["graph_sources_digest"]
        )
        shapes = manifest.get("shapes", "llama-3.2-1b")
        result["model"] = f"{shapes} shapes, synthetic weights seed 0 (int4: MLX affine g64 of the same)"
        result["flag_sets"] = manifest["flag_sets"]
        os.environ.setdefault("MODEL_IMPL_IREE_COMPILER", manifest["iree_compiler"])
        os.environ.setdefault("MODEL_IMPL_IREE_CUDA_TARGET", manifest["cuda_target"])
        from ..backends import generate
        from . import fusion

        try:
            result["iree_runtime"] = install_runtime(self.bundle, manifest)
            if not args.host_only:
                generate.require_device("xla-cuda")
                generate.require_device("iree-cuda")
        except Exception as e:  # no GPU, no wheel: one line, exit 2
            return self.fail(error_line(e))
        backends = ["xla-cuda", "iree-cuda"]
        result["environment"] = env.environment("cpu") if args.host_only else fusion.environment(backends)
        result["xla"], result["iree"] = {}, []
        self.log(f"{len(self.variants)} variants, runtime {result['iree_runtime']}")
        self.write()
        if not (args.host_only or args.skip_xla):
            self.xla("dot")
        timed = self.streams()
        if not (args.host_only or args.no_graphs):
            self.graphs(timed)
        dot_wall = result["xla"].get(f"{DTYPE}:dot", {}).get("wall_s") or 60.0
        if not (args.host_only or args.skip_xla) and self.elapsed() + 1.3 * dot_wall < args.budget_s:
            self.xla("reduce")  # XLA's other dense form, if the budget holds another compile
        self.write()
        for line in summary(speed_record(result)):
            self.log(line)
        return 0


SAME_MODULE = "byte-identical module: the time is that module's"


def _best(rows: list[dict], xla_dot: float | None) -> dict | None:
    if not rows or not xla_dot:
        return None
    r = min(rows, key=lambda r: r["step_s"])
    return {"id": r["id"], "step_s": r["step_s"], "ratio_vs_xla_bf16": r["step_s"] / xla_dot}


def speed_record(result: dict) -> dict:
    """The results file the report reads (``report/vs_bf16_section.iree_cuda_lines``) from a
    run's state: XLA's dense steps (``xla_cuda_bf16_step_s``), the timed IREE variants fastest
    first (a byte-identical module with the figure of the one timed), those that failed to
    compile, failed to run or were skipped, the CUDA-graph pass, and the fastest decode variant
    (``best``, over both passes) and fastest int4 one against XLA's dot. ``best`` is None until
    XLA and a variant have been timed."""
    xla = result.get("xla") or {}
    xla_steps = {k: v["step_s"] for k, v in xla.items() if v.get("step_s")}
    xla_dot = xla_steps.get(f"{DTYPE}:dot")
    rows = result.get("iree") or []
    by_id = {r["id"]: r for r in rows}

    def figures(r: dict) -> dict:
        """The row with its ratio to XLA's dot; a byte-identical module's with the figures of
        the one timed."""
        same = by_id.get(r.get("same_module_as")) or {}
        if same.get("step_s"):
            r = dict(r, **{k: same[k] for k in TIMED if k in same}, note=SAME_MODULE)
        return dict(r, ratio_vs_xla_bf16=r["step_s"] / xla_dot if xla_dot and r.get("step_s") else None)

    rows = [figures(r) for r in rows]
    timed = sorted((r for r in rows if r.get("step_s")), key=lambda r: r["step_s"])
    decode = [r for r in timed if r["flag_set"] != CALL_OVERHEAD and not r.get("same_module_as")]
    graphs = dict(result.get("cuda_graphs") or {})
    graphs["variants"] = [figures(r) for r in graphs.get("variants", [])]
    graph_rows = [
        dict(r, id=f"{r['id']} [cuda graphs]")
        for r in graphs["variants"]
        if r.get("step_s") and by_id[r["id"]]["flag_set"] != CALL_OVERHEAD
    ]
    head = ("about", "command", "environment", "iree_compiler", "cuda_target", "dtype", "shapes", "model")
    tail = ("max_seq", "start_pos", "graph_sources_digest", "graph_sources_changed_since_build", "iree_runtime")
    tail += ("budget_s", "wall_s")
    return {
        **{k: result.get(k) for k in head},
        "xla_cuda_bf16_step_s": xla_steps,
        "xla": xla,
        "flag_sets": result.get("flag_sets"),
        "variants": timed,
        "failed_to_compile": [{"id": r["id"], "error": r["compile_error"]} for r in rows if r.get("compile_error")],
        "failed_to_run": [{"id": r["id"], "error": r["error"]} for r in rows if r.get("error")],
        "skipped": [{"id": r["id"], "why": r["skipped"]} for r in rows if r.get("skipped")],
        "cuda_graphs": graphs,
        "best": _best(decode + graph_rows, xla_dot),
        "best_int4": _best([r for r in decode if r["quant"] == "int4"], xla_dot),
        **{k: result.get(k) for k in tail},
        **({"error": result["error"]} if result.get("error") else {}),
    }


def summary(record: dict) -> list[str]:
    """One line per timed variant, fastest first, and the fastest against XLA's dot."""
    xla = record["xla_cuda_bf16_step_s"]
    lines = ["XLA-CUDA bf16 dense: " + ", ".join(f"{k} {_ms(v)}" for k, v in xla.items())]
    graph_rows = [
        dict(r, id=f"{r['id']} [cuda graphs]") for r in record["cuda_graphs"].get("variants", []) if r.get("step_s")
    ]
    rows = [r for r in record["variants"] if not r.get("same_module_as")] + graph_rows
    for r in sorted(rows, key=lambda r: r["step_s"]):
        ratio = f" {r['ratio_vs_xla_bf16']:.2f}x XLA bf16" if r.get("ratio_vs_xla_bf16") else ""
        lines.append(f"{r['id']}: {_ms(r['step_s'])}{ratio}")
    for key in ("best", "best_int4"):
        if record[key]:
            b = record[key]
            lines.append(f"{key}: {b['id']} {_ms(b['step_s'])} = {b['ratio_vs_xla_bf16']:.2f}x XLA-CUDA bf16")
    return lines


# --- the command ------------------------------------------------------------------------------


def cmd_build(args) -> int:
    try:
        if args.shapes not in SHAPES:
            raise ValueError(f"--shapes: unknown {args.shapes!r}; known: {', '.join(SHAPES)}")
        variants = select(ALL_VARIANTS if args.all else VARIANTS, args.only)
    except ValueError as e:  # one line naming the option, before anything is built
        print(f"error: {e}", file=sys.stderr)
        return 2
    return build(Path(args.out), variants, args.shapes, args.survey, wheel=not args.no_wheel)


def cmd_run(args) -> int:
    # The IREE runtime shares the GPU with JAX: JAX must not take 75% of it up front.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        if args.budget_s <= 0:
            raise ValueError(f"--budget-s must be positive, got {args.budget_s:g}")
        manifest = read_manifest(Path(args.bundle))
        listed = {(v["form"], v["flag_set"]): v for v in manifest["variants"]}
        variants = [listed[k] for k in select(list(listed), args.only)]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return Run(args, manifest, variants)()


def add_parser(sub) -> None:
    p = sub.add_parser("iree-study", help="IREE-CUDA's decode step against XLA-CUDA: build here, run on the GPU")
    modes = p.add_subparsers(dest="mode", required=True)
    b = modes.add_parser("build", help="compile the variants for CUDA here, write the bundle")
    b.add_argument("--out", default=str(BUNDLE), help=f"the bundle's directory, replaced (default {BUNDLE})")
    b.add_argument("--only", help="comma-separated variant ids (form@flag-set), forms or flag sets")
    b.add_argument("--survey", action="store_true", help="the dispatch survey only: no module, no wheel")
    b.add_argument("--all", action="store_true", help="every form x every flag set (with --survey)")
    b.add_argument("--shapes", default="llama-3.2-1b", help=f"one of {', '.join(SHAPES)} (tiny: a 2-layer model)")
    b.add_argument("--no-wheel", action="store_true", help="carry no runtime wheel (the GPU machine has iree.runtime)")
    b.set_defaults(func=cmd_build)
    r = modes.add_parser("run", help="time the carried variants against XLA-CUDA on the GPU")
    r.add_argument("--bundle", default=str(BUNDLE))
    r.add_argument("--out", required=True, help="the results file, e.g. $OUT/iree-cuda-speed-h200.json")
    r.add_argument("--only", help="comma-separated variant ids, forms or flag sets")
    r.add_argument("--budget-s", type=float, default=330.0, help="wall seconds: no new measurement starts after")
    r.add_argument("--skip-xla", action="store_true", help="no XLA-CUDA baseline")
    r.add_argument("--no-graphs", action="store_true", help=f"no second pass under {GRAPHS_FLAG}")
    r.add_argument(
        "--host-only", action="store_true", help="no GPU: build each form's host weights, check them against the bundle"
    )
    r.set_defaults(func=cmd_run)
