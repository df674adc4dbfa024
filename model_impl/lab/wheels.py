"""Wheels a run on the GPU machine carries: it has no package index, and its Python (3.12) is
not this machine's. :func:`download_wheels` fetches them here; :func:`install` puts one into a
site directory there (as ``scripts/gpu_run.sh`` does in shell)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def download_wheels(dest: Path, wheels, python_version: str = "3.12") -> None:
    """``pip download`` of ``wheels`` (``name==version``), binaries for the GPU machine, into ``dest``."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        + ["--python-version", python_version, "--implementation", "cp", *platforms, "-d", str(dest), *wheels],
        check=True,
    )


def install(wheel: Path, site: Path) -> None:
    """``wheel`` into ``site`` (no index, no dependencies), importable from this process on."""
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir"]
    subprocess.run([*pip, "--upgrade", "--target", str(site), str(wheel)], check=True)
    on_path(site)


def on_path(site: Path) -> None:
    if str(site) not in sys.path:
        sys.path.insert(0, str(site))
    importlib.invalidate_caches()
