"""IREE's module after dispatch formation (``--compile-to=executable-sources``): each
executable classified as dequant-only, matmul-only, fused or other, with the float weight
bytes a dequant-only dispatch stores, and the graph's verdict."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

from . import FLOAT_BYTES, FUSED, MATERIALIZED, NO_DEQUANT, element_count

_EXECUTABLE = re.compile(r"^\s*hal\.executable(?:\.source)?\s+(?:private\s+|public\s+)?@([\w$.\-]+)", re.M)
_EXPORT = re.compile(r"hal\.executable\.export\s+(?:public\s+)?@([\w$.\-]+)")
_LINALG_CONTRACTIONS = re.compile(
    r"\blinalg\.(matmul|matvec|vecmat|batch_matmul|batch_matvec|batch_vecmat|contract|mmt4d|"
    r"batch_mmt4d|matmul_transpose_[ab]|batch_reduce_matmul)\b"
)
_CONTRACTION_NAME = re.compile(r"_(matmul|matvec|vecmat|contract|mmt4d)(_like)?_")
# Unpacking sub-byte codes: a logical right shift of an integer (packed words), a conversion
# from i4 to a wider type, or a named contraction that reads an i4 operand directly (the
# extension then happens inside the contraction's kernel; seen with and without an
# ``indexing_maps`` attribute before ``ins``). A generic that only moves i4 codes (a
# transpose) does not unpack.
_BIT_UNPACK = re.compile(
    r"\barith\.shrui\b"
    r"|\barith\.(?:extui|extsi|uitofp|sitofp)\b[^\n]*\bi4\b"
    r"|\blinalg\.(?:matmul|matvec|vecmat|batch_\w+|contract|mmt4d|matmul_transpose_[ab])\b"
    r"[^\n]*?\bins\([^\n]*?xi4\b"
)

DEQUANT_ONLY, MATMUL_ONLY, FUSED_DISPATCH, OTHER = "dequant-only", "matmul-only", "fused", "other"


_DISPATCH_SITE = re.compile(
    r"^\s*(?:stream\.cmd\.dispatch|flow\.dispatch|hal\.command_buffer\.dispatch)\s+@([\w$.\-]+)::", re.M
)
_STORED_TENSOR = re.compile(r"dispatch\.tensor\.store\b[^\n]*writeonly:tensor<([\dx]+)x(f32|f16|bf16)[,>]")


@dataclasses.dataclass(frozen=True)
class IreeExecutable:
    name: str
    exports: tuple[str, ...]
    kind: str  # dequant-only | matmul-only | fused | other
    sites: int  # dispatch sites in the host program that launch it (1 when unknown)
    weight_bytes: int  # per launch: bytes of full-size float weights it stores (dequant-only)


def split_executables(text: str) -> list[tuple[str, str]]:
    """(name, body) of each ``hal.executable`` of a module after dispatch formation."""
    starts = [(m.start(), m.group(1)) for m in _EXECUTABLE.finditer(text)]
    host = re.search(r"^\s*util\.func\s", text, re.M)
    end_of_last = host.start() if host and starts and host.start() > starts[-1][0] else len(text)
    return [
        (name, text[start : starts[k + 1][0] if k + 1 < len(starts) else end_of_last])
        for k, (start, name) in enumerate(starts)
    ]


def _stored_weight_bytes(body: str, weight_elements) -> int:
    total = 0
    for dims, dtype in _STORED_TENSOR.findall(body):
        n = element_count(dims.split("x"))
        if n in weight_elements:
            total += n * FLOAT_BYTES[dtype]
    return total


def classify_executable(name: str, body: str, sites: int = 1, weight_elements=frozenset()) -> IreeExecutable:
    exports = tuple(_EXPORT.findall(body))
    unpack = bool(_BIT_UNPACK.search(body))
    contraction = bool(_LINALG_CONTRACTIONS.search(body)) or any(_CONTRACTION_NAME.search(e + "_") for e in exports)
    kind = {
        (True, True): FUSED_DISPATCH,
        (True, False): DEQUANT_ONLY,
        (False, True): MATMUL_ONLY,
        (False, False): OTHER,
    }[(unpack, contraction)]
    weight_bytes = _stored_weight_bytes(body, weight_elements) if kind == DEQUANT_ONLY else 0
    return IreeExecutable(name, exports, kind, sites, weight_bytes)


@dataclasses.dataclass(frozen=True)
class IreeVerdict:
    verdict: str  # fused | materialized | no-dequant
    executables: tuple[IreeExecutable, ...]

    @property
    def dispatches(self) -> int:
        """Dispatches the host program launches per call (executables may be reused)."""
        return sum(e.sites for e in self.executables)

    def count(self, kind: str) -> int:
        return sum(e.sites for e in self.executables if e.kind == kind)

    @property
    def materialized_bytes(self) -> int:
        return sum(e.sites * e.weight_bytes for e in self.executables)


def analyze_iree_executables(text: str, weight_elements=frozenset()) -> IreeVerdict:
    """Classify the executables of an IREE module after dispatch formation.

    ``weight_elements``: element counts of the quantized linears, to count the bytes of
    full-size float weights that dequant-only dispatches write.
    """
    sites = Counter(_DISPATCH_SITE.findall(text))
    execs = tuple(
        classify_executable(n, b, sites.get(n, 0) if sites else 1, weight_elements) for n, b in split_executables(text)
    )
    if not execs:
        raise ValueError("no hal.executable found: not IREE executable sources")
    kinds = Counter(e.kind for e in execs if e.sites)
    if kinds[DEQUANT_ONLY]:
        verdict = MATERIALIZED
    elif kinds[FUSED_DISPATCH]:
        verdict = FUSED
    else:
        verdict = NO_DEQUANT
    return IreeVerdict(verdict, execs)
