"""Where a figure was measured: the one environment record every results file carries.

Schema (``results/*.json`` key ``environment``, and ``findings.json``)::

    {"date": "2026-11-25T01:22:46+00:00",
     "machine": {"node", "cpu", "cores", "platform", "python",
                 "gpu", "compute_capability", "driver"},   # the last three on a GPU machine
     "versions": {package: version or null},
     ...}                                                   # extra keys a producer adds

Nothing here imports the rest of the package: it is the bottom of the data flow.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform as _platform
import subprocess

PACKAGES = (
    "jax",
    "jaxlib",
    "jax-cuda13-plugin",
    "iree-base-compiler",
    "iree-base-runtime",
    "numpy",
    "transformers",
    "torch",
    "mlx",
    "mlx-lm",
    "gguf",
    "safetensors",
)


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def host_cpu() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return _platform.processor() or _platform.machine()


def gpu_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def machine(platform: str = "cpu") -> dict:
    """The host, and on ``platform="cuda"`` the first GPU JAX sees."""
    info = {
        "node": _platform.node(),
        "cpu": host_cpu(),
        "cores": os.cpu_count(),
        "platform": _platform.platform(),
        "python": _platform.python_version(),
    }
    if platform == "cuda":
        import jax

        device = jax.devices("cuda")[0]
        info.update(
            gpu=device.device_kind,
            compute_capability=device.compute_capability,
            driver=gpu_driver(),
        )
    return info


def environment(platform: str = "cpu", **extra) -> dict:
    """``{"date", "machine", "versions", **extra}`` for a results file."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(platform),
        "versions": {name: version(name) for name in PACKAGES},
        **extra,
    }


def describe(env: dict) -> str:
    """One line naming the machine of an environment record, for reports."""
    m = env.get("machine", {})
    return m.get("gpu") or f"{m.get('cpu')} ({m.get('cores')} cores)"
