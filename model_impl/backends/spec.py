"""The backends, described once: a name maps to its compiler, JAX platform and IREE runtime.

Everything that needs to know what ``"iree-cuda"`` means asks :func:`backend`; no other code
splits or prefix-matches a backend name.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str  # what the command line, results and reports call it
    compiler: str  # "xla" | "iree"
    platform: str  # "cpu" | "cuda": the JAX platform of the device (and of its environment record)
    iree_target: str | None = None  # iree-compile's target: "llvm-cpu" | "cuda"
    iree_driver: str | None = None  # iree-runtime's driver: "local-task" | "cuda"

    @property
    def is_xla(self) -> bool:
        return self.compiler == "xla"

    @property
    def is_iree(self) -> bool:
        return self.compiler == "iree"

    @property
    def is_cuda(self) -> bool:
        return self.platform == "cuda"


XLA_CPU = Backend("xla-cpu", "xla", "cpu")
IREE_CPU = Backend("iree-cpu", "iree", "cpu", "llvm-cpu", "local-task")
XLA_CUDA = Backend("xla-cuda", "xla", "cuda")
IREE_CUDA = Backend("iree-cuda", "iree", "cuda", "cuda", "cuda")
ALL = (XLA_CPU, IREE_CPU, XLA_CUDA, IREE_CUDA)
BACKENDS = tuple(b.name for b in ALL)  # report order
_BY_NAME = {b.name: b for b in ALL}


def backend(name: str | Backend) -> Backend:
    """The description of ``name``; one clear error for a name that is not a backend."""
    if isinstance(name, Backend):
        return name
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}") from None


def for_iree_target(target: str) -> Backend:
    """The IREE backend that compiles for ``target`` ("llvm-cpu" or "cuda")."""
    found = [b for b in ALL if b.iree_target == target]
    if not found:
        raise ValueError(f"unknown IREE target {target!r}; known: llvm-cpu, cuda")
    return found[0]
