"""IREE-CUDA's decode GEMV against XLA-CUDA (issue 15, item 5): weight layouts, the GEMV as
multiply + reduce, and IREE's own GPU codegen options, for bf16 and int4, on the Llama-3.2-1B
decode step (bf16 compute, batch 1, max_seq 128, seeded synthetic weights).

Two modes:

    # here (the CPU machine, iree-base-compiler installed): compile every variant for CUDA sm_80
    .venv/bin/python scripts/probe_iree_cuda.py build [--only ID,ID] [--survey]

    # on the GPU machine (carry .gpu-bundle/iree-probe; no IREE installed there):
    python3 scripts/probe_iree_cuda.py run --bundle .gpu-bundle/iree-probe --out $OUT/iree-probe.json

``build`` writes ``.gpu-bundle/iree-probe/``: one ``<variant>.vmfb`` per distinct module,
``manifest.json`` (per variant: form, head, flags, where each flag is documented, compile
seconds, dispatches per step, transpose dispatches, the dequant verdict, the codegen pipeline
of each contraction-like dispatch) and the iree-base-runtime cp312 wheel. Modules are compiled
through the package's cache (``iree_compile.compile_cached``, keyed by the graph's identity,
flags and compiler) and carried by file name, so the device does not recompute keys from
sources another engineer may be editing; the weights' signature is checked instead.

``run`` installs the wheel into /tmp/site, builds the bf16 weights once (int4 quantized from
them), times the dense bf16 decode step on XLA-CUDA (``timing.time_xla_decode_loop``: 32 steps
per jitted call, the figure the fusion matrix reports), then each IREE-CUDA variant with the
suite's timer (``timing.time_decode`` on an ``IreeRunner`` over the carried module: synced
steps, each ending with its token on the host, and queued rounds), each form's weights uploaded
once for all its flag sets. The JSON is rewritten after every variant (a timeout keeps what was
measured); a time budget skips what would not fit.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import inspect
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

# The IREE runtime shares the GPU with JAX in ``run``: JAX must not take 75% of it up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from model_impl import env  # noqa: E402
from model_impl.backends import iree_compile  # noqa: E402
from model_impl.backends.iree_runtime import IreeDevice, IreeRunner  # noqa: E402
from model_impl.backends.spec import backend as backend_spec  # noqa: E402
from model_impl.lab import timing  # noqa: E402
from model_impl.lab.fusion_matrix import MAX_SEQ, PROMPT_TOKENS, error_line  # noqa: E402
from model_impl.llama.graphs import export_stablehlo, graph_args, shape_bucket  # noqa: E402
from model_impl.llama.linears import LinearForm, contract  # noqa: E402
from model_impl.llama.representations import convert, convert_dense  # noqa: E402
from model_impl.llama.shapes import llama32_config  # noqa: E402
from model_impl.llama.weights import Weights, map_linears, quantize_weights, synthetic  # noqa: E402
from model_impl.llama.weights import specs as weight_specs  # noqa: E402

BUNDLE = ROOT / ".gpu-bundle" / "iree-probe"
CUDA_TARGET = "sm_80"  # iree-compile 3.13 has no sm_90; sm_80 PTX is JIT-compiled on the H100
WHEEL = "iree-base-runtime==3.13.0"
DTYPE = "bfloat16"
XLA_STEPS = 32  # the in-graph loop's steps per call (as the fusion matrix)
CARRY_LIMIT = 60 * 2**20


# --- the weight form this probe adds: float weights laid [in, out] ---------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DenseIOLinear(LinearForm):
    """A float weight stored ``[in, out]`` (the host transposes once at load): ``x @ W`` is the
    dot's natural right-hand side, so no compiler has to transpose W before the GEMV."""

    w: jax.Array

    def matmul(self, x: jax.Array, out_dtype=None) -> jax.Array:
        return contract("ti,io->to", x, self.w.astype(x.dtype)).astype(out_dtype or x.dtype)


def _transposed(a):
    if isinstance(a, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(tuple(reversed(a.shape)), a.dtype)
    return np.ascontiguousarray(np.asarray(a).T)


def io_linears(weights: Weights) -> Weights:
    """The 7 float linears of every layer as :class:`DenseIOLinear` (arrays or specs)."""
    return map_linears(weights, lambda w: DenseIOLinear(_transposed(w)))


def io_head(weights: Weights) -> Weights:
    """The float head as :class:`DenseIOLinear`, ``[hidden, vocab]``: the embedding stays
    ``[vocab, hidden]`` for the token gather, the head becomes its own (untied) transposed copy
    (the step reads the same bytes: one embedding row and the whole head)."""
    head = weights.embed if weights.lm_head is None else weights.lm_head
    return dataclasses.replace(weights, lm_head=DenseIOLinear(_transposed(head)))


# --- what is compiled -------------------------------------------------------------------------

# form -> (quant, representation or dense form, head). Heads: "dot" (x @ E.T, as loaded),
# "reduce" (multiply + reduce), "io" (an [hidden, vocab] copy, DenseIOLinear).
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

# The variants compiled, in the order the device times them: forms in order (each form's weights
# are uploaded once), within a form the most telling first. Flag sets whose module is byte-identical
# to one already listed are compiled and recorded (``same_module_as``) but not timed again.
VARIANTS = [
    ("dense-dot", "default"),
    ("dense-dot", "O3"),
    ("dense-dot", "propagate-transposes"),
    ("dense-dot", "call-overhead"),
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
    ("s4-grouped", "call-overhead"),
    ("u4-magic", "O3"),
    ("u4-magic", "default"),
    ("u4-affine-io", "O3"),
    ("u4-affine-io", "default"),
    ("s4-grouped+io-head", "O3"),
]


def variant_id(form: str, flag_set: str) -> str:
    return f"{form}@{flag_set}"


def build_weights(form: str, dense: Weights, int4: Weights | None) -> Weights:
    """``form``'s weights from the dense bf16 tree and its int4 quantization (arrays or specs)."""
    quant, rep, head = FORMS[form]
    if quant == "dense":
        w = io_linears(dense) if rep == "io" else convert_dense(dense, rep)
    else:
        w = convert(int4, rep, head="reduce" if head == "reduce" else "dot")
    return io_head(w) if head == "io" else w


def quantize_layers_parallel(dense: Weights) -> Weights:
    """``quantize_weights(dense)``, one layer per thread (numpy releases the GIL in the
    quantizer's array ops): the same tree, several times sooner on the GPU machine's 16 cores."""
    from concurrent.futures import ThreadPoolExecutor

    def one(layer):
        return quantize_weights(dataclasses.replace(dense, layers=(layer,))).layers[0]

    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        layers = tuple(pool.map(one, dense.layers))
    return dataclasses.replace(quantize_weights(dataclasses.replace(dense, layers=())), layers=layers)


def config():
    return dataclasses.replace(llama32_config(), dtype=DTYPE)


def form_specs(form: str) -> Weights:
    cfg = config()
    return build_weights(form, weight_specs(cfg, "dense"), weight_specs(cfg, "int4"))


def signature_digest(specs) -> str:
    return hashlib.sha256(
        json.dumps(iree_compile.weights_signature(specs), sort_keys=True, default=str).encode()
    ).hexdigest()[:16]


def target_flags() -> list[str]:
    return iree_compile.target_flags("cuda", CUDA_TARGET)


# A variant whose graph takes the same arguments as the decode step and does nothing with them
# (token + pos): the cost of one call through the IREE runtime with this many buffers.
CALL_OVERHEAD = "call-overhead"


def variant_flags(flag_set: str) -> list[str]:
    return target_flags() + ([] if flag_set == CALL_OVERHEAD else list(FLAG_SETS[flag_set][0]))


def null_mlir(cfg, specs) -> str:
    import jax.numpy as jnp

    def null_step(weights, token, pos, cache):
        return token + pos, jnp.zeros((1,), jnp.float32), cache

    fn = jax.jit(null_step, keep_unused=True)
    return jax.export.export(fn)(*graph_args(cfg, specs, "decode", 0, MAX_SEQ)).mlir_module()


def probe_source_digest() -> str:
    """What of this script shapes a graph: the [in, out] form and the null step."""
    text = inspect.getsource(DenseIOLinear) + inspect.getsource(io_head) + inspect.getsource(null_mlir)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- build (here) -----------------------------------------------------------------------------

CONFIG_FLAGS = ("--compile-to=executable-configurations", "--mlir-print-debuginfo=false")
_TINY = (
    "func.func @f(%a: tensor<64xf32>) -> tensor<64xf32> {\n"
    "  %b = stablehlo.multiply %a, %a : tensor<64xf32>\n  return %b : tensor<64xf32>\n}"
)


def flag_error(flags) -> str | None:
    """None when iree-compile accepts ``flags`` (with the CUDA target) on a one-op module."""
    import iree.compiler as ic

    try:
        ic.compile_str(_TINY, input_type="stablehlo", extra_args=target_flags() + list(flags))
    except Exception as e:  # an unknown flag or value is one error line
        return error_line(e)
    return None


def _kernel_name(export: str) -> str:
    import re

    return re.sub(r"^\w*?_dispatch_\d+_", "", export)


def survey(text: str, cfg) -> dict:
    """Per step, from the module after codegen configuration: dispatches, transposes (and the
    bytes they write), the dequant verdict, and each kernel's pipeline and workgroup size."""
    import re
    from collections import Counter

    from model_impl.analyzers import FLOAT_BYTES, iree_dispatch
    from model_impl.llama.weights import linear_weight_elements

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


def _wheel(dest: Path) -> Path:
    """The iree-base-runtime cp312 wheel: one another bundle already holds, else pip download."""
    dest.mkdir(parents=True, exist_ok=True)
    name = "iree_base_runtime-3.13.0-cp312-abi3-manylinux_2_28_x86_64.whl"
    for found in sorted((ROOT / ".gpu-bundle").glob(f"*/whl/{name}")):
        if found.parent != dest:
            shutil.copy(found, dest / name)
            return dest / name
    sys.path.insert(0, str(ROOT / "scripts"))
    import gpu_bundle

    gpu_bundle.download_wheels(dest, [WHEEL])
    return next(dest.glob("iree_base_runtime-*.whl"))


def selected(only: str | None):
    if not only:
        return list(VARIANTS)
    keep = set(only.split(","))
    return [v for v in VARIANTS if variant_id(*v) in keep or v[0] in keep or v[1] in keep]


def build(args) -> int:
    from model_impl.backends.cache import source_digest
    from model_impl.llama.graphs import GRAPH_SOURCES

    cfg = config()
    out = BUNDLE
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t_start = time.perf_counter()
    used_sets = sorted({fs for _, fs in selected(args.only) if fs != CALL_OVERHEAD})
    flag_errors = {name: flag_error(FLAG_SETS[name][0]) for name in used_sets}
    for name, err in flag_errors.items():
        print(f"flag set {name} {list(FLAG_SETS[name][0])}: {'parses' if err is None else err}", flush=True)
    manifest = {
        "about": __doc__.split("\n\n")[0],
        "iree_compiler": iree_compile.compiler_version(),
        "cuda_target": CUDA_TARGET,
        "target_flags": target_flags(),
        "dtype": DTYPE,
        "max_seq": MAX_SEQ,
        "start_pos": PROMPT_TOKENS,
        "config": repr(cfg),
        "graph_sources_digest": source_digest(*GRAPH_SOURCES),
        "probe_source_digest": probe_source_digest(),
        "flag_sets": {
            name: {"flags": list(flags), "documented": doc, "parse_error": flag_errors.get(name)}
            for name, (flags, doc) in FLAG_SETS.items()
            if name in flag_errors
        },
        "variants": [],
    }
    mlir = {}
    by_sha = {}
    for form, flag_set in selected(args.only):
        vid = variant_id(form, flag_set)
        quant, rep, head = FORMS[form]
        flags = variant_flags(flag_set)
        rec = {"id": vid, "form": form, "quant": quant, "representation": rep, "head": head, "flag_set": flag_set}
        rec["flags"] = flags[len(target_flags()) :]
        manifest["variants"].append(rec)
        if flag_set != CALL_OVERHEAD and flag_errors.get(flag_set):
            rec["error"] = f"flags rejected by iree-compile: {flag_errors[flag_set]}"
            print(f"{vid}: {rec['error']}", flush=True)
            continue
        try:
            specs = form_specs(form)
            rec["weights_signature"] = signature_digest(specs)
            graph = "null-decode" if flag_set == CALL_OVERHEAD else "decode"
            identity = {**iree_compile.graph_identity(cfg, specs, "decode", 0, MAX_SEQ), "graph": graph}
            identity["probe"] = probe_source_digest()

            def make(form=form, specs=specs, graph=graph):
                if (form, graph) not in mlir:
                    mlir[(form, graph)] = (
                        null_mlir(cfg, specs)
                        if graph == "null-decode"
                        else export_stablehlo(cfg, specs, "decode", 0, MAX_SEQ)
                    )
                return mlir[(form, graph)]

            t0 = time.perf_counter()
            configs, _ = iree_compile.compile_cached(
                identity, make, flags + list(CONFIG_FLAGS), kind="iree-configs", suffix=".mlir"
            )
            rec.update(survey(configs.read_text(), cfg))
            if not args.survey:
                path, seconds = iree_compile.compile_cached(identity, make, flags)
                rec["compile_seconds"] = seconds
                sha = hashlib.sha256(path.read_bytes()).hexdigest()
                rec["vmfb_sha256"] = sha[:16]
                if sha in by_sha:
                    rec["same_module_as"] = by_sha[sha]
                else:
                    by_sha[sha] = vid
                    rec["vmfb"] = vid.replace("@", "__").replace("+", "_") + ".vmfb"
                    shutil.copy(path, out / rec["vmfb"])
                    os.chmod(out / rec["vmfb"], 0o644)  # the cache writes 0600 temp files
                    rec["vmfb_bytes"] = path.stat().st_size
            took = time.perf_counter() - t0
        except Exception as e:  # a compiler failure is a finding of the variant
            rec["error"] = error_line(e)
            print(f"{vid}: error {rec['error']}", flush=True)
            continue
        same = f" = {rec['same_module_as']}" if rec.get("same_module_as") else ""
        print(
            f"{vid}: {rec['dispatches']} dispatches, {rec['transposes']} transposes "
            f"({rec['transposed_bytes_per_step'] / 2**20:.0f} MiB), {rec['dequant_verdict']} "
            f"{rec['fused_dispatches']}/{rec['fused_dispatches'] + rec['dequant_only_dispatches']}, "
            f"{took:.1f} s{same}",
            flush=True,
        )
    if not args.survey:
        wheel = _wheel(out / "whl")
        manifest["wheel"] = f"whl/{wheel.name}"
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {size / 2**20:.1f} MiB, {time.perf_counter() - t_start:.0f} s", flush=True)
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


def install_runtime(bundle: Path, manifest: dict) -> str:
    """``iree.runtime`` as installed, else the carried wheel in /tmp/site (as gpu_run.sh)."""
    import importlib

    if (SITE / "iree" / "runtime").is_dir() and str(SITE) not in sys.path:
        sys.path.insert(0, str(SITE))
    try:
        import iree.runtime  # noqa: F401

        return f"importable ({Path(iree.runtime.__file__).parent})"
    except ImportError:
        pass
    wheel = bundle / manifest["wheel"]
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir"]
    subprocess.run([*pip, "--upgrade", "--target", str(SITE), str(wheel)], check=True)
    if str(SITE) not in sys.path:
        sys.path.insert(0, str(SITE))
    importlib.invalidate_caches()
    import iree.runtime  # noqa: F401

    return f"{wheel.name} installed into {SITE}"


class CarriedRunner(IreeRunner):
    """The suite's IREE runner (its ``decode``, ``reset``, token handling) over weights already on
    the device and a module loaded from the bundle (no compiler, no cache key)."""

    def __init__(self, cfg, iree, device_weights, decode_fn):
        self.spec = backend_spec("iree-cuda")
        self.cfg, self.backend, self.cuda_target = cfg, self.spec.name, CUDA_TARGET
        self.target, self.extra_flags, self.specs = self.spec.iree_target, (), None
        self.iree, self.weights = iree, device_weights
        self.upload_seconds, self.compile_seconds, self.cache = None, {}, None
        self._functions = {("decode", shape_bucket("decode", 0), MAX_SEQ): decode_fn}


class DriverDevice(IreeDevice):
    """An IREE device on a driver created now, under the runtime flags parsed so far (the
    runtime caches one driver per name: flags parsed later do not reach the cached one)."""

    def __init__(self, driver: str):
        import iree.runtime as rt

        self._rt = rt
        self.config = rt.Config(device=rt._binding.create_hal_driver(driver).create_default_device())
        self.device = self.config.device


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


def run(args) -> int:
    t_start = time.perf_counter()

    def elapsed() -> float:
        return time.perf_counter() - t_start

    def log(message: str) -> None:
        print(f"[{elapsed():6.1f} s] {message}", flush=True)

    bundle, out = Path(args.bundle), Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"about": __doc__.split("\n\n")[0], "command": sys.argv[1:], "budget_s": args.budget_s}

    def write() -> None:
        result["wall_s"] = elapsed()
        out.write_text(json.dumps(result, indent=1, default=str) + "\n")

    def fail(message: str) -> int:
        result["error"] = message
        write()
        print(f"error: {message}", file=sys.stderr, flush=True)
        return 2

    try:
        manifest = json.loads((bundle / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        return fail(f"no bundle at {bundle} (run `build` here first): {error_line(e)}")
    for key in ("iree_compiler", "cuda_target", "dtype", "max_seq", "start_pos", "graph_sources_digest"):
        result[key] = manifest.get(key)
    from model_impl.backends.cache import source_digest
    from model_impl.llama.graphs import GRAPH_SOURCES

    # the modules run the graphs as compiled at `build`; the weights are built by today's sources
    result["graph_sources_changed_since_build"] = source_digest(*GRAPH_SOURCES) != manifest["graph_sources_digest"]
    result["model"] = "Llama-3.2-1B shapes, synthetic weights seed 0 (int4: MLX affine g64 of the same)"
    result["flag_sets"] = manifest["flag_sets"]
    os.environ.setdefault("MODEL_IMPL_IREE_COMPILER", manifest["iree_compiler"])
    os.environ.setdefault("MODEL_IMPL_IREE_CUDA_TARGET", manifest["cuda_target"])
    from model_impl.backends import generate
    from model_impl.lab import fusion

    try:
        result["iree_runtime"] = install_runtime(bundle, manifest)
        if not args.host_only:
            generate.require_device("xla-cuda")
            generate.require_device("iree-cuda")
    except Exception as e:  # no GPU, no wheel: one line, exit 2
        return fail(error_line(e))
    result["environment"] = env.environment("cpu") if args.host_only else fusion.environment(["xla-cuda", "iree-cuda"])
    keep = set(args.only.split(",")) if args.only else None
    variants = [v for v in manifest["variants"] if keep is None or {v["id"], v["form"], v["flag_set"]} & keep]
    log(f"{len(variants)} variants, runtime {result['iree_runtime']}")
    write()

    cfg = config()
    t0 = time.perf_counter()
    dense = synthetic(cfg, seed=0)
    log(f"bf16 weights made in {time.perf_counter() - t0:.1f} s")
    quantized = {}

    def int4():
        if "w" not in quantized:
            t0 = time.perf_counter()
            quantized["w"] = quantize_layers_parallel(dense)
            log(f"int4 weights quantized in {time.perf_counter() - t0:.1f} s")
        return quantized["w"]

    def host_weights(form: str, expected: str | None):
        w = build_weights(form, dense, int4() if FORMS[form][0] == "int4" else None)
        got = signature_digest(iree_compile.weight_specs(w))
        if expected and got != expected:
            raise ValueError(
                f"the {form} weights' signature {got} is not the compiled module's {expected} "
                "(model_impl changed since `build`? rebuild the bundle)"
            )
        return w

    result["xla"] = {}

    def xla(form: str) -> None:
        t0 = time.perf_counter()
        try:
            s, spread, hoisted = timing.time_xla_decode_loop(
                "xla-cuda", cfg, convert_dense(dense, form), XLA_STEPS, max_seq=MAX_SEQ, start_pos=PROMPT_TOKENS
            )
            rec = {"step_s": s, "spread_s": spread, "hoisted_dequants": hoisted}
        except Exception as e:  # a failure is a finding
            rec = {"error": error_line(e)}
        rec.update(form=form, steps_per_call=XLA_STEPS, wall_s=time.perf_counter() - t0)
        result["xla"][f"{DTYPE}:{form}"] = rec
        log(f"xla-cuda dense bf16 {form}: {_ms(rec.get('step_s'))} {rec.get('error', '')}")
        write()
        gc.collect()

    if not (args.host_only or args.skip_xla):
        xla("dot")
    xla_dot = result["xla"].get(f"{DTYPE}:dot", {}).get("step_s")

    # --- IREE-CUDA, the driver's default (stream) mode
    result["iree"] = []
    graphs_reserve = 0 if args.no_graphs else 75
    stream_deadline = args.budget_s - graphs_reserve - 20
    iree = None if args.host_only else IreeDevice("cuda")
    forms = list(dict.fromkeys(v["form"] for v in variants))
    timed = {}  # id -> record
    for form in forms:
        recs = [v for v in variants if v["form"] == form]
        rows = [{k: v.get(k) for k in KEEP} for v in recs]
        result["iree"].extend(rows)
        todo = [(v, r) for v, r in zip(recs, rows) if not (v.get("error") or v.get("same_module_as"))]
        for v, r in zip(recs, rows):
            if v.get("error"):
                r["error"] = v["error"]
            if v.get("same_module_as"):
                r["same_module_as"] = v["same_module_as"]
        if not todo:
            continue
        if elapsed() > stream_deadline:
            for _, r in todo:
                r["skipped"] = "time budget"
            continue
        try:
            t0 = time.perf_counter()
            host = host_weights(form, todo[0][0].get("weights_signature"))
            built = time.perf_counter() - t0
            if args.host_only:
                shapes = {
                    type(x).__name__
                    for x in jax.tree_util.tree_leaves(host, is_leaf=lambda x: isinstance(x, LinearForm))
                }
                log(f"{form}: host weights built in {built:.1f} s, signature matches the module's ({sorted(shapes)})")
                for _, r in todo:
                    r["skipped"] = "host only"
                continue
            t0 = time.perf_counter()
            device_weights = [iree.put(x) for x in jax.tree_util.tree_leaves(host)]
            upload = time.perf_counter() - t0
            del host
            gc.collect()
        except Exception as e:
            for _, r in todo:
                r["error"] = error_line(e)
            log(f"{form}: {error_line(e)}")
            write()
            continue
        log(f"{form}: weights built in {built:.1f} s, uploaded in {upload:.1f} s")
        reference = None
        for v, r in todo:
            r["upload_s"] = upload
            if elapsed() > stream_deadline:
                r["skipped"] = "time budget"
                continue
            try:
                t0 = time.perf_counter()
                fn = iree.load(bundle / v["vmfb"])
                r["load_s"] = time.perf_counter() - t0
                r.update(time_variant(CarriedRunner(cfg, iree, device_weights, fn)))
                del fn
                r["ratio_vs_xla_bf16"] = r["step_s"] / xla_dot if xla_dot else None
                if v["flag_set"] != CALL_OVERHEAD:
                    reference = reference or r
                    r["tokens_match_first_of_form"] = r["tokens"] == reference["tokens"]
                timed[r["id"]] = r
            except Exception as e:  # a runtime failure is a finding of the variant
                r["error"] = error_line(e)
            gc.collect()
            ratio = f"{r['ratio_vs_xla_bf16']:.2f}x XLA" if r.get("ratio_vs_xla_bf16") else ""
            log(
                f"{r['id']}: {_ms(r.get('step_s'))} (synced {_ms(r.get('synced_step_s'))}; first call "
                f"{r.get('first_call_s', 0):.2f} s) {ratio} {r.get('error', '')}"
            )
            write()
        del device_weights
        gc.collect()
    for r in result["iree"]:  # identical modules: the figure of the one timed
        same = timed.get(r.get("same_module_as"))
        if same:
            r.update({k: same[k] for k in ("step_s", "spread_s", "synced_step_s", "ratio_vs_xla_bf16") if k in same})
    write()

    # --- the same modules with the step's command buffer replayed as one CUDA graph
    if not (args.host_only or args.no_graphs):
        graphs_mode(args, result, variants, timed, cfg, host_weights, xla_dot, elapsed, log, write)

    # --- XLA's other dense form, if the budget holds another compile
    dot_wall = result["xla"].get(f"{DTYPE}:dot", {}).get("wall_s") or 60.0
    if not (args.host_only or args.skip_xla) and elapsed() + 1.3 * dot_wall < args.budget_s:
        xla("reduce")
    best = [r["step_s"] for r in result["xla"].values() if r.get("step_s")]
    result["xla_best_step_s"] = min(best) if best else None
    for r in [*result["iree"], *result.get("cuda_graphs", {}).get("variants", [])]:
        if r.get("step_s") and best:
            r["ratio_vs_xla_best"] = r["step_s"] / min(best)
    result["summary"] = summary(result)
    write()
    for line in result["summary"]:
        log(line)
    return 0


def graphs_mode(args, result, variants, timed, cfg, host_weights, xla_dot, elapsed, log, write) -> None:
    """The fastest dense and int4 decode variants and the dense call overhead again, on a driver
    created after ``GRAPHS_FLAG`` (the weights uploaded again to its device)."""
    import iree.runtime as rt

    decode = [r for r in timed.values() if r["flag_set"] != CALL_OVERHEAD and r.get("step_s")]
    picks = []
    for quant in ("dense", "int4"):
        mine = [r for r in decode if r["quant"] == quant]
        if mine:
            picks.append(min(mine, key=lambda r: r["step_s"])["id"])
    picks += [r["id"] for r in timed.values() if r["flag_set"] == CALL_OVERHEAD and r["quant"] == "dense"]
    section = {"runtime_flags": [GRAPHS_FLAG], "variants": []}
    result["cuda_graphs"] = section
    if not picks or elapsed() > args.budget_s - 60:
        section["skipped"] = "nothing timed" if not picks else "time budget"
        write()
        return
    try:
        rt.flags.parse_flags(GRAPHS_FLAG)
        iree = DriverDevice("cuda")
    except Exception as e:
        section["error"] = error_line(e)
        write()
        return
    by_id = {v["id"]: v for v in variants}
    for form in dict.fromkeys(by_id[i]["form"] for i in picks):
        ids = [i for i in picks if by_id[i]["form"] == form]
        if elapsed() > args.budget_s - 40:
            section["variants"] += [{"id": i, "skipped": "time budget"} for i in ids]
            continue
        try:
            host = host_weights(form, by_id[ids[0]].get("weights_signature"))
            device_weights = [iree.put(x) for x in jax.tree_util.tree_leaves(host)]
            del host
        except Exception as e:
            section["variants"] += [{"id": i, "error": error_line(e)} for i in ids]
            continue
        for i in ids:
            r = {"id": i, "streams_step_s": timed[i]["step_s"]}
            section["variants"].append(r)
            try:
                r.update(
                    time_variant(
                        CarriedRunner(cfg, iree, device_weights, iree.load(Path(args.bundle) / by_id[i]["vmfb"]))
                    )
                )
                r["ratio_vs_xla_bf16"] = r["step_s"] / xla_dot if xla_dot else None
                if by_id[i]["flag_set"] != CALL_OVERHEAD:
                    r["tokens_match_streams"] = r["tokens"] == timed[i]["tokens"]
            except Exception as e:
                r["error"] = error_line(e)
            log(f"cuda graphs {i}: {_ms(r.get('step_s'))} (streams {_ms(r['streams_step_s'])}) {r.get('error', '')}")
            write()
        del device_weights
        gc.collect()


def summary(result) -> list[str]:
    """One line per timed variant, fastest first, and the verdict against the 2x target."""
    xla_dot = result["xla"].get(f"{DTYPE}:dot", {}).get("step_s")
    lines = ["XLA-CUDA bf16 dense: " + ", ".join(f"{k} {_ms(v.get('step_s'))}" for k, v in result["xla"].items())]
    rows = [r for r in result.get("iree", []) if r.get("step_s") and not r.get("same_module_as")]
    rows += [
        dict(r, id=f"{r['id']} [cuda graphs]")
        for r in result.get("cuda_graphs", {}).get("variants", [])
        if r.get("step_s")
    ]
    for r in sorted(rows, key=lambda r: r["step_s"]):
        ratio = f"{r['step_s'] / xla_dot:.2f}x XLA bf16" if xla_dot else ""
        lines.append(f"{r['id']}: {_ms(r['step_s'])} {ratio}")
    decode = [r for r in rows if CALL_OVERHEAD not in r["id"]]
    if xla_dot and decode:
        best = min(decode, key=lambda r: r["step_s"])
        met = "met" if best["step_s"] <= 2 * xla_dot else "not met"
        lines.append(
            f"target (within 2x of XLA-CUDA bf16 {_ms(xla_dot)}): {met} by {best['id']} ({_ms(best['step_s'])})"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    b = sub.add_parser("build", help="compile the variants here, write the bundle")
    b.add_argument("--only", help="comma-separated variant ids, forms or flag sets")
    b.add_argument("--survey", action="store_true", help="configurations only: no vmfb, no wheel")
    b.add_argument("--all", action="store_true", help="every form x every flag set (with --survey)")
    r = sub.add_parser("run", help="time the carried variants on the GPU")
    r.add_argument("--bundle", default=str(BUNDLE))
    r.add_argument("--out", required=True)
    r.add_argument("--only", help="comma-separated variant ids, forms or flag sets")
    r.add_argument("--budget-s", type=float, default=330.0, help="wall seconds: no new measurement starts after")
    r.add_argument("--skip-xla", action="store_true", help="no XLA-CUDA baseline")
    r.add_argument("--no-graphs", action="store_true", help=f"no second pass under {GRAPHS_FLAG}")
    r.add_argument(
        "--host-only", action="store_true", help="no GPU: build each form's host weights, check them against the bundle"
    )
    args = parser.parse_args()
    if args.mode == "build":
        if args.all:
            VARIANTS[:] = [(f, s) for f in FORMS for s in FLAG_SETS]
        return build(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
