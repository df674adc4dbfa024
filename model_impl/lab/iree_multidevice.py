"""``python -m model_impl iree-multidevice``: what multi-device support IREE has for a JAX graph
sharded with NamedShardings (issue 16, item 5: column-parallel w1, row-parallel w2, all-reduce of
the partial sums), and so whether the tensor-parallel study can run on IREE.

Smallest reproducer: f(x, w1, w2) = (x @ w1) @ w2 on a 2-device "tp" mesh, w1 sharded by
columns, w2 by rows. Runs on the CPU only (two XLA host devices, IREE llvm-cpu and local-task);
every compile is a few-kilobyte module (about 15 s in all on 2 cores).

Trials:
  A  jax.export, Shardy (jax default)     -> iree-compile
  B  jax.export, GSPMD (mhlo.sharding)     -> iree-compile to flow/stream, 1 and 2 target
                                              devices, then run the vmfb on one device
  C  shard_map export (manual SPMD), GSPMD and Shardy -> iree-compile
  D  XLA's SPMD-partitioned HLO (jit.lower.compile) -> hlo_to_stablehlo -> iree-compile
  E  per-device StableHLO with stablehlo.all_reduce (shard_map body) -> iree-compile
     (flow.collective.all_reduce?) -> run on local-task (channel?)
  F  the documented multi-device route: one program, two devices (#hal.device.promise,
     iree.abi.affinity, flow.tensor.transfer), partial sums added on device 0; run with two
     local-task devices from the Python runtime and compare with numpy

The record (``--out``; the report reads ``results/iree-multidevice.json``): ``cpu_probe`` (what
each trial did), ``trials`` (one line each, read from it, and the GPU follow-up of E and F, run
once on 2x H200 and recorded in :data:`GPU_FOLLOW_UP`), and ``verdict`` (:func:`verdict`, from
the trials' outcomes: the line the report's tensor-parallel section prints). ``--cuda-bundle
DIR`` also compiles E and F for CUDA with a ``run_gpu.sh`` for a 2-GPU host.
"""

from __future__ import annotations

import gc
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from .. import env

M, K, N = 4, 8, 16  # x: MxK, w1: KxN (column-sharded), w2: NxK (row-sharded)
# float32 products of ~N(0,1) entries summed over 8 and 16 terms, in another order than numpy's:
# ~1e-6; 1e-4 leaves two orders of magnitude and is far below any wrong answer (O(1)).
MATCH_ATOL = 1e-4
CPU = ["--iree-hal-local-target-device-backends=llvm-cpu", "--iree-llvmcpu-target-cpu=generic"]
ONE_DEV = ["--iree-hal-target-device=local"] + CPU
TWO_DEV = ["--iree-hal-target-device=local[0]", "--iree-hal-target-device=local[1]"] + CPU
TWO_NAMED = [  # named devices referenced by #hal.device.promise<@dev0/@dev1>
    "--iree-hal-target-device=dev0=local[0]",
    "--iree-hal-target-device=dev1=local[1]",
] + CPU

OPS = {
    "collective": r"flow\.collective\.\w+|stream\.(?:async|cmd)\.collective|hal\.command_buffer\.collective",
    "channel": r"flow\.channel\.\w+|stream\.channel\.\w+|hal\.channel\.\w+",
    "transfer": r"flow\.tensor\.transfer|stream\.async\.transfer",
    # after stream scheduling a cross-device transfer is a copy bracketed by these:
    "cross_device_sync": r"stream\.cmd\.(?:flush to|invalidate from)\(",
    "devices": r"util\.global private @(__device_\d+|dev\d)\b",
    "affinities": r"#hal\.device\.affinity<@\w+>",
}

# The GPU follow-up of trials E and F (``--cuda-bundle``'s run_gpu.sh on a 2-GPU host), run once:
# what it found, and whether the route worked. The verdict reads ``works``.
GPU_FOLLOW_UP = {
    "machine": "2x NVIDIA H200",
    "date": "2026-11-26",
    "iree_runtime": "3.13.0",
    "cuda_target": "sm_89",
    "trials": [
        {
            "id": "F-cuda",
            "input": "F compiled for dev0=cuda[0], dev1=cuda[1]; iree-run-module --device=cuda://0 --device=cuda://1",
            "result": "fails: INVALID_ARGUMENT in hal.device.queue.dealloca (with --cuda_async_allocations=false: "
            "CUDA_ERROR_INVALID_HANDLE); works with both devices on one GPU. The CUDA driver never enables peer "
            "access (the HIP driver does)",
            "works": False,
        },
        {
            "id": "E-cuda",
            "input": "E for cuda, one iree-run-module per GPU under mpirun -np 2 (OpenMPI + NCCL on the host)",
            "result": "works: both ranks return the full product, error 3.8e-6; in one process without MPI: "
            "'no channel provider has been set'",
            "works": True,
        },
    ],
}
SOURCES = [
    "compiler/plugins/input/StableHLO/Conversion/StableHLOToIREEInputDialects.cpp (stripFrontendAttrs drops "
    "mhlo.* attributes)",
    "compiler/plugins/input/StableHLO/Conversion/ConvertCollectives.cpp",
    "runtime/src/iree/hal/utils/mpi_channel_provider.c",
    "https://iree.dev/reference/mlir-passes/HAL/",
    "https://github.com/iree-org/iree/issues/9580",
]


def tool(name: str) -> str:
    """The path of an IREE command-line tool: the compiler's from iree-base-compiler, the
    runtime's from iree-base-runtime."""
    if name == "iree-compile":
        from iree.compiler.tools.binaries import find_tool

        return find_tool(name)
    import iree._runtime_libs

    return str(Path(iree._runtime_libs.__file__).parent / name)


def count_ops(text: str) -> dict:
    out = {}
    for key, pat in OPS.items():
        found = re.findall(pat, text)
        out[key] = sorted(set(found)) if key in ("devices", "affinities") else len(found)
    return out


def first_error(text: str) -> str:
    for line in text.splitlines():
        if "error:" in line:
            return re.sub(r"\s+", " ", line.split("error:", 1)[1]).strip()[:300]
    return text.strip().splitlines()[-1][:300] if text.strip() else ""


class Work:
    """The directory the trials write their modules in, and iree-compile run on them."""

    def __init__(self, root: Path):
        self.root = root

    def write(self, name: str, text: str) -> Path:
        p = self.root / name
        p.write_text(text)
        return p

    def compile(self, src: Path, flags: list[str], to: str | None, out: str) -> dict:
        cmd = [tool("iree-compile"), str(src), "--iree-input-type=stablehlo", *flags]
        if to:
            cmd.append(f"--compile-to={to}")
        cmd += ["-o", str(self.root / out)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        res = {"cmd": " ".join(["iree-compile", src.name] + cmd[2:-2] + ["-o", out]), "rc": r.returncode}
        if r.returncode != 0:
            res["error"] = first_error(r.stderr)
        elif to:
            res["ops"] = count_ops((self.root / out).read_text())
        return res


def mesh_and_args():
    # Auto axes: GSPMD/Shardy-style NamedShardings (not explicit sharding-in-types).
    mesh = jax.make_mesh((2,), ("tp",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices("cpu")[:2])

    def S(*s):
        return NamedSharding(mesh, P(*s))

    shard = (S(), S(None, "tp"), S("tp", None))
    shapes = [(M, K), (K, N), (N, K)]
    args = [jax.ShapeDtypeStruct(s, jnp.float32, sharding=sh) for s, sh in zip(shapes, shard)]
    return mesh, shard, args


def f(x, w1, w2):
    return (x @ w1) @ w2


def export_text(fn, args, shardy: bool) -> str:
    was = jax.config.jax_use_shardy_partitioner
    jax.config.update("jax_use_shardy_partitioner", shardy)
    try:
        return jax.export.export(fn)(*args).mlir_module()
    finally:
        jax.config.update("jax_use_shardy_partitioner", was)


def sharding_attrs(text: str) -> dict:
    return {
        "sdy.mesh": "sdy.mesh" in text,
        "sdy.sharding": text.count("sdy.sharding ="),
        "sdy.manual_computation": "sdy.manual_computation" in text,
        "mhlo.sharding": text.count("mhlo.sharding ="),
        "custom_call@Sharding": text.count("custom_call @Sharding"),
        "custom_call@SPMDFullToShardShape": text.count("@SPMDFullToShardShape"),
        "stablehlo.all_reduce": text.count("stablehlo.all_reduce"),
        "mhlo.num_partitions": (re.findall(r"mhlo\.num_partitions = (\d+)", text) or [None])[0],
    }


def shard_map_fn(mesh):
    def body(x, w1, w2):
        return jax.lax.psum((x @ w1) @ w2, "tp")

    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P(None, "tp"), P("tp", None)), out_specs=P()))


def per_device_module(gspmd_shard_map_text: str) -> str:
    """The shard_map body of the GSPMD export as a standalone module: the per-device program
    (x: 4x8, w1 shard: 8x8, w2 shard: 8x8) ending in stablehlo.all_reduce over [[0, 1]]."""
    from jax._src.interpreters import mlir as jmlir
    from jax._src.lib.mlir import ir

    with jmlir.make_ir_context():
        mod = ir.Module.parse(gspmd_shard_map_text)
        body = None
        for op in list(mod.body.operations):
            name = ir.StringAttr(op.attributes["sym_name"]).value
            if name == "main":
                op.erase()
            elif "shmap_body" in name:
                body = op
        if body is None:
            raise ValueError("the shard_map export has no shmap_body function")
        body.attributes["sym_name"] = ir.StringAttr.get("main")
        body.attributes["sym_visibility"] = ir.StringAttr.get("public")
        return mod.operation.get_asm(enable_debug_info=False)


# Trial F: hand-placed tensor parallelism through IREE's multi-device IR (no collectives):
# each device computes its column/row shard pair, device 1's partial sum is transferred to
# device 0 and added there (the "all-reduce" is a gather+add on one device).
TP_TWO_DEVICE = f"""
func.func public @tp_step(
    %x: tensor<{M}x{K}xf32> {{iree.abi.affinity = #hal.device.promise<@dev0>}},
    %w1a: tensor<{K}x{N // 2}xf32> {{iree.abi.affinity = #hal.device.promise<@dev0>}},
    %w1b: tensor<{K}x{N // 2}xf32> {{iree.abi.affinity = #hal.device.promise<@dev1>}},
    %w2a: tensor<{N // 2}x{K}xf32> {{iree.abi.affinity = #hal.device.promise<@dev0>}},
    %w2b: tensor<{N // 2}x{K}xf32> {{iree.abi.affinity = #hal.device.promise<@dev1>}}
  ) -> (tensor<{M}x{K}xf32> {{iree.abi.affinity = #hal.device.promise<@dev0>}}) {{
  %xb = flow.tensor.transfer %x : tensor<{M}x{K}xf32> to #hal.device.promise<@dev1>
  %ha = stablehlo.dot_general %x, %w1a, contracting_dims = [1] x [0]
      : (tensor<{M}x{K}xf32>, tensor<{K}x{N // 2}xf32>) -> tensor<{M}x{N // 2}xf32>
  %ya = stablehlo.dot_general %ha, %w2a, contracting_dims = [1] x [0]
      : (tensor<{M}x{N // 2}xf32>, tensor<{N // 2}x{K}xf32>) -> tensor<{M}x{K}xf32>
  %hb = stablehlo.dot_general %xb, %w1b, contracting_dims = [1] x [0]
      : (tensor<{M}x{K}xf32>, tensor<{K}x{N // 2}xf32>) -> tensor<{M}x{N // 2}xf32>
  %yb = stablehlo.dot_general %hb, %w2b, contracting_dims = [1] x [0]
      : (tensor<{M}x{N // 2}xf32>, tensor<{N // 2}x{K}xf32>) -> tensor<{M}x{K}xf32>
  %yb0 = flow.tensor.transfer %yb : tensor<{M}x{K}xf32> to #hal.device.promise<@dev0>
  %y = stablehlo.add %ya, %yb0 : tensor<{M}x{K}xf32>
  return %y : tensor<{M}x{K}xf32>
}}
"""


def run_vmfb(vmfb: Path, fn: str, args: list[np.ndarray], n_devices: int) -> dict:
    """Runs `fn` with `n_devices` local-task devices handed to the HAL module (the Python
    equivalent of `iree-run-module --device=local-task --device=local-task`)."""
    import iree.runtime as rt

    instance = rt.VmInstance()
    driver = rt.get_driver("local-task")
    devices = [driver.create_default_device() for _ in range(n_devices)]
    hal = module = ctx = inv = out = None
    try:
        hal = rt.create_hal_module(instance, devices=devices)
        module = rt.VmModule.copy_buffer(instance, vmfb.read_bytes())
        ctx = rt.VmContext(instance, modules=[hal, module])
        inv = rt.FunctionInvoker(ctx, devices[0], module.lookup_function(fn))
        out = inv(*args)
        res = {"ok": True, "result": np.array(out.to_host())}
    except Exception as e:  # the probe records whatever the runtime says
        msg = re.sub(r"\s+", " ", str(e)).strip()
        res = {"ok": False, "error": f"{type(e).__name__}: {msg[:400]}"}
    # Release in dependency order (the bindings can crash if devices die before buffers).
    del out, inv
    gc.collect()
    del ctx
    gc.collect()
    del module, hal
    gc.collect()
    del devices
    gc.collect()
    return res


def run_cli(vmfb: Path, fn: str, args: list[np.ndarray], n_devices: int, root: Path) -> dict:
    """Same through the iree-run-module tool (one --device flag per device)."""
    inputs = []
    for i, a in enumerate(args):
        np.save(root / f"in{i}.npy", a)
        inputs.append(f"--input=@{root / f'in{i}.npy'}")
    out = root / "out.npy"
    cmd = [tool("iree-run-module"), f"--module={vmfb}", f"--function={fn}"]
    cmd += ["--device=local-task"] * n_devices + ["--task_topology_group_count=1"]
    cmd += inputs + [f"--output=@{out}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    res = {
        "cmd": f"iree-run-module --module={vmfb.name} --function={fn} "
        + "--device=local-task " * n_devices
        + "--task_topology_group_count=1 --input=@inN.npy ...",
        "rc": r.returncode,
    }
    if r.returncode != 0:
        res["error"] = re.sub(r"\s+", " ", (r.stderr or r.stdout).strip())[:300]
    elif out.exists():
        y = np.load(out)
        w1 = np.concatenate(args[1 : 1 + n_devices], axis=1)
        w2 = np.concatenate(args[1 + n_devices :], axis=0)
        res["max_abs_err_vs_numpy"] = float(np.max(np.abs(y - args[0] @ w1 @ w2)))
    return res


RUN_GPU_SH = """#!/bin/bash
# Trials E and F on a host with 2 NVIDIA GPUs. RUN: iree-run-module of iree-base-runtime 3.13.
set -u; cd "$(dirname "$0")"; RUN=${IREE_RUN_MODULE:-iree-run-module}; OUT=${OUT:-.}
IN="--input=@in0.npy --input=@in1.npy --input=@in2.npy --input=@in3.npy --input=@in4.npy"
echo "--- F: one program, dev0=cuda[0] dev1=cuda[1] (flow.tensor.transfer)"
$RUN --module=F_cuda.vmfb --function=tp_step --device=cuda://0 --device=cuda://1 $IN --output=@$OUT/F_2gpu.npy
echo "--- F: both promises on the same GPU"
$RUN --module=F_cuda.vmfb --function=tp_step --device=cuda://0 --device=cuda://0 $IN --output=@$OUT/F_1gpu.npy
echo "--- E: per-device program with all_reduce, one process, no MPI"
$RUN --module=E_cuda.vmfb --function=main --device=cuda://0 --input=@in0.npy --input=@in1.npy --input=@in3.npy
echo "--- E: 2 ranks under mpirun (MPI channel provider + NCCL), rank r on cuda://r"
cat > rank.sh <<'EOS'
#!/bin/bash
r=$OMPI_COMM_WORLD_RANK
$RUN --module=E_cuda.vmfb --function=main --device=cuda://$r --input=@in0.npy \\
  --input=@in$((1+r)).npy --input=@in$((3+r)).npy --output=@$OUT/E_rank$r.npy
EOS
chmod +x rank.sh; RUN=$RUN OUT=$OUT mpirun --allow-run-as-root -np 2 -x RUN -x OUT ./rank.sh
"""


def cuda_bundle(dest: Path, root: Path, shards: list[np.ndarray]) -> dict:
    """Trials E and F compiled for CUDA (sm_89, see backends/cuda_target.py), their inputs and
    run_gpu.sh, in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    w = Work(root)
    cuda = ["--iree-cuda-target=sm_89"]
    res = {
        "F_cuda": w.compile(
            root / "F_tp_two_devices.mlir",
            ["--iree-hal-target-device=dev0=cuda[0]", "--iree-hal-target-device=dev1=cuda[1]"] + cuda,
            None,
            "F_cuda.vmfb",
        ),
        "E_cuda": w.compile(
            root / "E_per_device_all_reduce.mlir", ["--iree-hal-target-device=cuda"] + cuda, None, "E_cuda.vmfb"
        ),
    }
    for name in ("F_cuda.vmfb", "E_cuda.vmfb"):
        if (root / name).exists():
            shutil.copy(root / name, dest / name)
    for i, a in enumerate(shards):
        np.save(dest / f"in{i}.npy", a)
    (dest / "run_gpu.sh").write_text(RUN_GPU_SH)
    (dest / "run_gpu.sh").chmod(0o755)
    res["dir"] = str(dest)
    return res


def probe(root: Path, cuda_dir: Path | None = None) -> dict:
    """Trials A-F in ``root`` (two CPU devices): what each export holds, what iree-compile made
    of it, and what the runtime did with it."""
    w = Work(root)
    from importlib.metadata import version

    ver = subprocess.run([tool("iree-compile"), "--version"], capture_output=True, text=True).stdout
    summary: dict = {
        "jax": jax.__version__,
        "jax_devices": [str(d) for d in jax.devices("cpu")],
        "iree_compile": re.search(r"version (\S+)", ver).group(1) if "version" in ver else ver,
        "iree_packages": {p: version(p) for p in ("iree-base-compiler", "iree-base-runtime")},
    }

    rng = np.random.default_rng(0)
    x = rng.standard_normal((M, K), dtype=np.float32)
    w1 = rng.standard_normal((K, N), dtype=np.float32)
    w2 = rng.standard_normal((N, K), dtype=np.float32)
    ref = (x @ w1) @ w2
    shards = [x, w1[:, : N // 2], w1[:, N // 2 :], w2[: N // 2], w2[N // 2 :]]

    mesh, shard, args = mesh_and_args()
    jf = jax.jit(f, in_shardings=shard, out_shardings=shard[0])

    # A: Shardy export (jax default).
    t = export_text(jf, args, shardy=True)
    src = w.write("A_export_shardy.mlir", t)
    summary["A_shardy_export"] = {
        "attrs": sharding_attrs(t),
        "compile": w.compile(src, ONE_DEV, "input", "A_input.mlir"),
    }

    # B: GSPMD export: mhlo.sharding strings on the arguments.
    t = export_text(jf, args, shardy=False)
    src = w.write("B_export_gspmd.mlir", t)
    b = {"attrs": sharding_attrs(t)}
    b["to_input"] = w.compile(src, ONE_DEV, "input", "B_input.mlir")
    if b["to_input"]["rc"] == 0:
        txt = (root / "B_input.mlir").read_text()
        b["to_input"]["sharding_attrs_left"] = sharding_attrs(txt)
        b["to_input"]["arg_shapes"] = re.findall(r"%arg\d+: (tensor<[^>]+>)", txt)[:3]
    b["one_device_stream"] = w.compile(src, ONE_DEV, "stream", "B_1dev_stream.mlir")
    b["two_devices_stream"] = w.compile(src, TWO_DEV, "stream", "B_2dev_stream.mlir")
    b["two_devices_vmfb"] = w.compile(src, TWO_DEV, None, "B_2dev.vmfb")
    c = w.compile(src, ONE_DEV, None, "B_1dev.vmfb")
    b["one_device_vmfb"] = c
    if c["rc"] == 0:
        r = run_vmfb(root / "B_1dev.vmfb", "main", [x, w1, w2], 1)
        if r["ok"]:
            r = {"ok": True, "matches_unsharded_numpy": bool(np.allclose(r["result"], ref, 0, MATCH_ATOL))}
        b["run_one_local_task_device"] = r
    summary["B_gspmd_export"] = b

    # C: shard_map (manual SPMD) exports.
    smf = shard_map_fn(mesh)
    sm_gspmd = export_text(smf, args, shardy=False)
    sm_shardy = export_text(smf, args, shardy=True)
    summary["C_shard_map_export"] = {
        "gspmd": {
            "attrs": sharding_attrs(sm_gspmd),
            "compile": w.compile(w.write("C_shmap_gspmd.mlir", sm_gspmd), ONE_DEV, "flow", "C1.mlir"),
        },
        "shardy": {
            "attrs": sharding_attrs(sm_shardy),
            "compile": w.compile(w.write("C_shmap_shardy.mlir", sm_shardy), ONE_DEV, "flow", "C2.mlir"),
        },
    }

    summary["D_xla_partitioned_hlo"] = xla_partitioned_trial(w, jf, args)

    # E: per-device program with stablehlo.all_reduce.
    t = per_device_module(sm_gspmd)
    src = w.write("E_per_device_all_reduce.mlir", t)
    e = {"attrs": sharding_attrs(t)}
    e["to_flow"] = w.compile(src, ONE_DEV, "flow", "E_flow.mlir")
    e["to_stream"] = w.compile(src, ONE_DEV, "stream", "E_stream.mlir")
    c = w.compile(src, ONE_DEV, None, "E.vmfb")
    e["vmfb"] = c
    if c["rc"] == 0:
        r = run_vmfb(root / "E.vmfb", "main", [x, w1[:, : N // 2], w2[: N // 2]], 1)
        e["run_one_local_task_device"] = {k: v for k, v in r.items() if k != "result"}
        e["iree_run_module"] = run_cli(root / "E.vmfb", "main", [x, w1[:, : N // 2], w2[: N // 2]], 1, root)
    summary["E_per_device_all_reduce"] = e

    summary["F_manual_two_device_tp"] = two_device_trial(w, shards, ref)
    if cuda_dir is not None:
        summary["cuda_bundle"] = cuda_bundle(cuda_dir, root, shards)
    return summary


def xla_partitioned_trial(w: Work, jf, args) -> dict:
    """D: XLA's own SPMD-partitioned program (after jit.lower().compile()) as StableHLO."""
    from jax._src.interpreters import mlir as jmlir
    from jax._src.lib import _jax
    from jax._src.lib.mlir import ir

    d: dict = {}
    try:
        compiled = jf.lower(*args).compile()
        hlo = compiled.as_text()
        d["xla_partitioned_hlo"] = {
            "param_shapes": re.findall(r"entry_computation_layout=\{\(([^)]*)\)", hlo)[:1],
            "all_reduce": len(re.findall(r"= f32\[[^\]]*\]\{[^}]*\} all-reduce\(", hlo)),
        }
        proto = compiled.runtime_executable().hlo_modules()[0].as_serialized_hlo_module_proto()
        bc = _jax.mlir.hlo_to_stablehlo(proto)
        with jmlir.make_ir_context():
            t = ir.Module.parse(bc).operation.get_asm(enable_debug_info=False)
        src = w.write("D_xla_partitioned.mlir", t)
        d["attrs"] = sharding_attrs(t)
        d["has_mhlo_fusion"] = '"mhlo.fusion"' in t
        d["replica_groups_form"] = (re.findall(r"replica_groups = (#stablehlo\.\w+|dense)", t) or [None])[0]
        d["compile"] = w.compile(src, ONE_DEV, "flow", "D_flow.mlir")
    except Exception as e:  # what JAX's internals do not offer is a finding of the trial
        d["error"] = f"{type(e).__name__}: {e}"[:400]
    return d


def two_device_trial(w: Work, shards: list[np.ndarray], ref: np.ndarray) -> dict:
    """F: the documented multi-device route: two devices in one program, explicit placement."""
    src = w.write("F_tp_two_devices.mlir", TP_TWO_DEVICE)
    fres = {
        "flow": w.compile(src, TWO_NAMED, "flow", "F_flow.mlir"),
        "stream": w.compile(src, TWO_NAMED, "stream", "F_stream.mlir"),
    }
    if fres["stream"]["rc"] == 0:
        st = (w.root / "F_stream.mlir").read_text()
        fres["stream"]["dispatches_per_device"] = {
            dev: len(re.findall(rf"stream\.cmd\.execute on\(#hal\.device\.affinity<@{dev}>", st))
            for dev in ("dev0", "dev1")
        }
    c = w.compile(src, TWO_NAMED, None, "F.vmfb")
    fres["vmfb"] = c
    if c["rc"] == 0:
        r = run_vmfb(w.root / "F.vmfb", "tp_step", shards, 2)
        if r["ok"]:
            err = float(np.max(np.abs(r["result"] - ref)))
            r = {"ok": True, "max_abs_err_vs_numpy": err, "matches": err <= MATCH_ATOL}
        fres["run_two_local_task_devices"] = r
        one = run_vmfb(w.root / "F.vmfb", "tp_step", shards, 1)
        fres["run_one_device_only"] = {k: v for k, v in one.items() if k != "result"}
        fres["iree_run_module_two_devices"] = run_cli(w.root / "F.vmfb", "tp_step", shards, 2, w.root)
    return fres


# --- what the trials say ----------------------------------------------------------------------


def short_error(text: str) -> str:
    """The telling part of a compiler's or runtime's error line."""
    legalize = re.search(r"failed to legalize operation '([\w.]+)'.*?call_target_name = \"(\w+)\"", text)
    if legalize:
        return f"failed to legalize {legalize.group(1)} @{legalize.group(2)}"
    status = re.search(r"\b([A-Z_]{5,}); ([^;]+);.*?native function ([\w.]+)", text)
    if status:
        return f"{status.group(1)} {status.group(2).strip()} ({status.group(3)})"
    return text.strip()[:160]


def _compiled(res: dict) -> str:
    return "compiles" if res["rc"] == 0 else f"iree-compile rc {res['rc']}: {short_error(res.get('error', ''))}"


# The probe's record of each trial, A to F.
TRIALS = (
    "A_shardy_export",
    "B_gspmd_export",
    "C_shard_map_export",
    "D_xla_partitioned_hlo",
    "E_per_device_all_reduce",
    "F_manual_two_device_tp",
)


def outcomes(cpu: dict) -> dict:
    """The facts the verdict rests on, from the CPU probe."""
    a, b, _, _, e, f_ = (cpu[k] for k in TRIALS)
    two = b["two_devices_stream"]
    b_compiles = b["to_input"]["rc"] == 0 and two["rc"] == 0
    b_dropped = (
        b_compiles
        and not any(b["to_input"]["sharding_attrs_left"][k] for k in ("mhlo.sharding", "sdy.sharding", "sdy.mesh"))
        and len(two["ops"]["devices"]) <= 1
        and two["ops"]["collective"] == two["ops"]["transfer"] == 0
    )
    return {
        "shardy_parses": a["compile"]["rc"] == 0,
        "shardy_error": a["compile"].get("error", ""),
        "gspmd_compiles": b_compiles,
        "gspmd_sharding_dropped": b_dropped,
        "gspmd_runs_unsharded": bool((b.get("run_one_local_task_device") or {}).get("matches_unsharded_numpy")),
        "all_reduce_compiles": e["vmfb"]["rc"] == 0 and (e["to_flow"].get("ops") or {}).get("collective", 0) > 0,
        "all_reduce_runs_on_cpu": bool((e.get("run_one_local_task_device") or {}).get("ok")),
        "placement_works_on_cpu": bool((f_.get("run_two_local_task_devices") or {}).get("matches")),
    }


def trial_lines(cpu: dict) -> list[dict]:
    """One line per CPU trial, read from the probe (and the GPU follow-up, as recorded)."""
    o = outcomes(cpu)
    a, b, c, d, e, f_ = (cpu[k] for k in TRIALS)
    if not o["gspmd_compiles"]:
        b_result = _compiled(b["to_input"] if b["to_input"]["rc"] else b["two_devices_stream"])
    elif o["gspmd_sharding_dropped"]:
        b_result = (
            "compiles; sharding dropped silently: full shapes, no collective/transfer ops, one device even with two "
            "--iree-hal-target-device" + ("; runs the unsharded product" if o["gspmd_runs_unsharded"] else "")
        )
    else:
        ops = b["two_devices_stream"]["ops"]
        b_result = (
            f"compiles with its shardings: {len(ops['devices'])} devices, {ops['collective']} collective and "
            f"{ops['transfer']} transfer ops"
        )
    d_result = d["error"] if "error" in d else _compiled(d["compile"])
    if d.get("has_mhlo_fusion"):
        d_result += " (and the program holds mhlo.fusion)"
    e_run = e.get("run_one_local_task_device") or {}
    e_result = _compiled(e["vmfb"])
    if o["all_reduce_compiles"]:
        e_result = f"compiles ({e['to_flow']['ops']['collective']} flow.collective op on the default channel)"
    if e_run:
        e_result += "; on local-task: " + ("runs" if e_run["ok"] else short_error(e_run["error"]))
    f_run = f_.get("run_two_local_task_devices") or {}
    if o["placement_works_on_cpu"]:
        f_result = f"works on CPU (two local-task devices): max error {f_run['max_abs_err_vs_numpy']:.1e} vs numpy"
    else:
        f_result = _compiled(f_["vmfb"]) + (f"; two local-task devices: {f_run.get('error')}" if f_run else "")
    lines = [
        ("A", "jax.export, Shardy (JAX default): sdy.mesh / sdy.sharding", _compiled(a["compile"])),
        ("B", "jax.export, GSPMD (mhlo.sharding strings)", b_result),
        (
            "C",
            "shard_map export (GSPMD and Shardy forms)",
            f"GSPMD: {_compiled(c['gspmd']['compile'])}; Shardy: {_compiled(c['shardy']['compile'])}",
        ),
        ("D", "XLA's partitioned HLO (jit.lower.compile) -> StableHLO", d_result),
        ("E", "per-device program ending in stablehlo.all_reduce", e_result),
        ("F", "one program, hand-placed on two devices (iree.abi.affinity, flow.tensor.transfer)", f_result),
    ]
    gpu = [{"id": t["id"], "machine": GPU_FOLLOW_UP["machine"], **t} for t in GPU_FOLLOW_UP["trials"]]
    return [{"id": i, "input": what, "result": result} for i, what, result in lines] + gpu


def verdict(cpu: dict) -> str:
    """What IREE can do for the tensor-parallel graph: read from the trials' outcomes (and the
    recorded GPU follow-up); each clause flips with the outcome it states."""
    o = outcomes(cpu)
    iree = ".".join(cpu["iree_packages"]["iree-base-compiler"].split(".")[:2])
    gpu = {t["id"]: t["works"] for t in GPU_FOLLOW_UP["trials"]}
    if o["shardy_parses"]:
        shardy = "JAX's default (Shardy) export compiles"
    elif "sdy" in o["shardy_error"]:
        shardy = "JAX's default (Shardy) export fails to parse ('sdy' dialect not found)"
    else:
        shardy = f"JAX's default (Shardy) export fails ({short_error(o['shardy_error'])})"
    if not o["gspmd_compiles"]:
        gspmd = "a GSPMD export fails to compile"
    elif o["gspmd_sharding_dropped"]:
        gspmd = (
            "a GSPMD export compiles with its mhlo.sharding silently dropped (the whole unsharded step on one device)"
        )
    else:
        gspmd = "a GSPMD export compiles with its shardings kept (more than one device, or collectives or transfers)"
    if not o["gspmd_sharding_dropped"] and o["gspmd_compiles"]:
        return (
            f"IREE {iree} consumes GSPMD shardings: {shardy}, {gspmd}. The tensor-parallel graph can be tried "
            "on IREE: no IREE tensor-parallel figures yet."
        )
    cpu_f = "works on CPU" if o["placement_works_on_cpu"] else "fails on CPU"
    gpu_f = "works on 2 CUDA GPUs" if gpu["F-cuda"] else "fails at run time on 2 CUDA GPUs"
    joint = " and " if o["placement_works_on_cpu"] == gpu["F-cuda"] else " but "
    per_rank = (
        "a per-rank program with stablehlo.all_reduce works on 2 GPUs as one process per GPU under MPI + NCCL, "
        "a route this suite has no exporter or launcher for"
        if gpu["E-cuda"]
        else "a per-rank program with stablehlo.all_reduce fails on 2 GPUs"
    )
    return (
        f"IREE {iree} does not consume GSPMD/Shardy shardings: {shardy}, {gspmd}. Multi-device needs per-device "
        f"code built outside IREE: one program with hand-written placement (flow.tensor.transfer, device "
        f"affinities) {cpu_f}{joint}{gpu_f}; {per_rank}. No IREE tensor-parallel figures."
    )


def record(cpu: dict) -> dict:
    """The results file: what the report prints (``verdict``), the trials it rests on, the probe."""
    return {
        "about": " ".join(__doc__.split("\n\n")[0].replace("``", "`").split()),
        "environment": env.environment("cpu", gpu_follow_up={k: v for k, v in GPU_FOLLOW_UP.items() if k != "trials"}),
        "verdict": verdict(cpu),
        "trials": trial_lines(cpu),
        "sources": SOURCES,
        "cpu_probe": cpu,
    }


# --- the command ------------------------------------------------------------------------------


def cmd(args) -> int:
    from ..llama.sharding import host_devices

    host_devices(2)  # before JAX starts its CPU client
    try:
        for flag, value in (("--keep", args.keep), ("--cuda-bundle", args.cuda_bundle)):
            if value and Path(value).exists() and not Path(value).is_dir():
                raise ValueError(f"{flag} {value}: not a directory")
        if args.out and not Path(args.out).parent.is_dir():
            raise ValueError(f"--out {args.out}: no directory {Path(args.out).parent}")
        if len(jax.devices("cpu")) < 2:
            raise ValueError(f"the trials need 2 CPU devices; JAX started with {len(jax.devices('cpu'))}")
    except ValueError as e:  # one line, before anything is compiled
        print(f"error: {e}", file=sys.stderr)
        return 2
    root = Path(args.keep or tempfile.mkdtemp(prefix="iree_md_"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        out = record(probe(root, Path(args.cuda_bundle) if args.cuda_bundle else None))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(out, indent=1, default=str)
    if args.out:
        Path(args.out).write_text(text + "\n")
        print(f"{out['verdict']}\nwrote {args.out}")
    else:
        print(text)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("iree-multidevice", help="IREE's multi-device support for a sharded JAX graph (CPU trials)")
    p.add_argument("--out", help="write the record here (e.g. results/iree-multidevice.json); default: print it")
    p.add_argument("--keep", metavar="DIR", help="keep the generated .mlir/.vmfb files in this directory")
    p.add_argument(
        "--cuda-bundle",
        metavar="DIR",
        help="also compile trials E and F for CUDA (sm_89) into DIR, with their inputs and a 2-GPU run_gpu.sh",
    )
    p.set_defaults(func=cmd)
