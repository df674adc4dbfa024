"""Probe (issue 16, item 5): what multi-device support IREE 3.13 has for a JAX graph sharded
with NamedShardings (column-parallel w1, row-parallel w2, all-reduce of the partial sums).

Smallest reproducer: f(x, w1, w2) = (x @ w1) @ w2 on a 2-device "tp" mesh, w1 sharded by
columns, w2 by rows. Runs on the CPU only (XLA host devices forced to 2, IREE llvm-cpu and
local-task); every compile is a few-kilobyte module. Prints one JSON summary.

    python scripts/probe_iree_multidevice.py [--keep DIR]

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
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

BIN = Path(sys.executable).parent
IREE_COMPILE = str(BIN / "iree-compile")
M, K, N = 4, 8, 16  # x: MxK, w1: KxN (column-sharded), w2: NxK (row-sharded)
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
    def __init__(self, root: Path):
        self.root = root

    def write(self, name: str, text: str) -> Path:
        p = self.root / name
        p.write_text(text)
        return p

    def compile(self, src: Path, flags: list[str], to: str | None, out: str) -> dict:
        cmd = [IREE_COMPILE, str(src), "--iree-input-type=stablehlo", *flags]
        if to:
            cmd.append(f"--compile-to={to}")
        cmd += ["-o", str(self.root / out)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        res = {
            "cmd": " ".join(["iree-compile", src.name] + cmd[2:-2] + ["-o", out]),
            "rc": r.returncode,
        }
        if r.returncode != 0:
            res["error"] = first_error(r.stderr)
        elif to:
            res["ops"] = count_ops((self.root / out).read_text())
        return res


def mesh_and_args():
    # Auto axes: GSPMD/Shardy-style NamedShardings (not explicit sharding-in-types).
    mesh = jax.make_mesh((2,), ("tp",), axis_types=(jax.sharding.AxisType.Auto,))

    def S(*s):
        return NamedSharding(mesh, P(*s))

    shard = (S(), S(None, "tp"), S("tp", None))
    shapes = [(M, K), (K, N), (N, K)]
    args = [jax.ShapeDtypeStruct(s, jnp.float32, sharding=sh) for s, sh in zip(shapes, shard)]
    return mesh, shard, args


def f(x, w1, w2):
    return (x @ w1) @ w2


def export_text(fn, args, shardy: bool) -> str:
    jax.config.update("jax_use_shardy_partitioner", shardy)
    try:
        return jax.export.export(fn)(*args).mlir_module()
    finally:
        jax.config.update("jax_use_shardy_partitioner", True)


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
        assert body is not None
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
    import gc

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
    except Exception as e:  # noqa: BLE001 - the probe records whatever the runtime says
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
    cmd = [str(BIN / "iree-run-module"), f"--module={vmfb}", f"--function={fn}"]
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
            root / "E_per_device_all_reduce.mlir",
            ["--iree-hal-target-device=cuda"] + cuda,
            None,
            "E_cuda.vmfb",
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", help="keep the generated .mlir/.vmfb files in this directory")
    ap.add_argument(
        "--cuda-bundle",
        help="also compile trials E and F for CUDA (sm_89, see model_impl/backends/cuda_target.py) "
        "into this directory with inputs and a run_gpu.sh for a 2-GPU host",
    )
    ns = ap.parse_args()
    root = Path(ns.keep or tempfile.mkdtemp(prefix="iree_md_"))
    root.mkdir(parents=True, exist_ok=True)
    w = Work(root)

    from importlib.metadata import version

    ver = subprocess.run([IREE_COMPILE, "--version"], capture_output=True, text=True).stdout
    summary: dict = {
        "jax": jax.__version__,
        "jax_devices": [str(d) for d in jax.devices()],
        "iree_compile": re.search(r"version (\S+)", ver).group(1) if "version" in ver else ver,
        "iree_packages": {p: version(p) for p in ("iree-base-compiler", "iree-base-runtime")},
        "workdir": str(root),
    }

    rng = np.random.default_rng(0)
    x = rng.standard_normal((M, K), dtype=np.float32)
    w1 = rng.standard_normal((K, N), dtype=np.float32)
    w2 = rng.standard_normal((N, K), dtype=np.float32)
    ref = (x @ w1) @ w2

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
            r = {"ok": True, "matches_unsharded_numpy": bool(np.allclose(r["result"], ref, 1e-4, 1e-4))}
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

    # D: XLA's own SPMD-partitioned program (after jit.lower().compile()) as StableHLO.
    d: dict = {}
    try:
        from jax._src.lib import _jax

        compiled = jf.lower(*args).compile()
        hlo = compiled.as_text()
        d["xla_partitioned_hlo"] = {
            "param_shapes": re.findall(r"entry_computation_layout=\{\(([^)]*)\)", hlo)[:1],
            "all_reduce": len(re.findall(r"= f32\[[^\]]*\]\{[^}]*\} all-reduce\(", hlo)),
        }
        proto = compiled.runtime_executable().hlo_modules()[0].as_serialized_hlo_module_proto()
        bc = _jax.mlir.hlo_to_stablehlo(proto)
        from jax._src.interpreters import mlir as jmlir
        from jax._src.lib.mlir import ir

        with jmlir.make_ir_context():
            t = ir.Module.parse(bc).operation.get_asm(enable_debug_info=False)
        src = w.write("D_xla_partitioned.mlir", t)
        d["attrs"] = sharding_attrs(t)
        d["has_mhlo_fusion"] = '"mhlo.fusion"' in t
        d["replica_groups_form"] = (re.findall(r"replica_groups = (#stablehlo\.\w+|dense)", t) or [None])[0]
        d["compile"] = w.compile(src, ONE_DEV, "flow", "D_flow.mlir")
    except Exception as e:  # noqa: BLE001
        d["error"] = f"{type(e).__name__}: {e}"[:400]
    summary["D_xla_partitioned_hlo"] = d

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

    # F: documented multi-device route: two devices in one program, explicit placement.
    src = w.write("F_tp_two_devices.mlir", TP_TWO_DEVICE)
    fres = {
        "flow": w.compile(src, TWO_NAMED, "flow", "F_flow.mlir"),
        "stream": w.compile(src, TWO_NAMED, "stream", "F_stream.mlir"),
    }
    if fres["stream"]["rc"] == 0:
        st = (root / "F_stream.mlir").read_text()
        fres["stream"]["dispatches_per_device"] = {
            dev: len(re.findall(rf"stream\.cmd\.execute on\(#hal\.device\.affinity<@{dev}>", st))
            for dev in ("dev0", "dev1")
        }
    c = w.compile(src, TWO_NAMED, None, "F.vmfb")
    fres["vmfb"] = c
    if c["rc"] == 0:
        shards = [x, w1[:, : N // 2], w1[:, N // 2 :], w2[: N // 2], w2[N // 2 :]]
        r = run_vmfb(root / "F.vmfb", "tp_step", shards, 2)
        if r["ok"]:
            r = {
                "ok": True,
                "max_abs_err_vs_numpy": float(np.max(np.abs(r["result"] - ref))),
                "matches": bool(np.allclose(r["result"], ref, 1e-4, 1e-4)),
            }
        fres["run_two_local_task_devices"] = r
        fres["run_one_device_only"] = {
            k: v for k, v in run_vmfb(root / "F.vmfb", "tp_step", shards, 1).items() if k != "result"
        }
        fres["iree_run_module_two_devices"] = run_cli(root / "F.vmfb", "tp_step", shards, 2, root)
    summary["F_manual_two_device_tp"] = fres

    if ns.cuda_bundle:
        summary["cuda_bundle"] = cuda_bundle(
            Path(ns.cuda_bundle), root, [x, w1[:, : N // 2], w1[:, N // 2 :], w2[: N // 2], w2[N // 2 :]]
        )

    print(json.dumps(summary, indent=1, default=str))
    if not ns.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
