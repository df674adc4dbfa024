"""What each compiler made of the in-graph dequant, read from its own dumps.

Plain functions over text: the exported StableHLO, XLA's optimized HLO
(``compiled.as_text()``) and IREE's executable sources (``--compile-to=executable-sources``
or ``--iree-hal-dump-executable-sources-to``). Each answers per graph: is there a
``custom_call``; does the unpack/convert/scale sit in the same kernel as the matmul
(``fused``) or does a kernel write the full float weight (``materialized``), and how many
bytes that is.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

FUSED, MATERIALIZED, NO_DEQUANT = "fused", "materialized", "no-dequant"

# --- StableHLO ---------------------------------------------------------------------------

_STABLEHLO_OP = re.compile(r"\b(?:stablehlo|chlo|mhlo)\.([a-z_]+)")
_U32_TO_F32 = re.compile(r"stablehlo\.convert\b[^\n]*xui32>\)? -> tensor<[^>]*xf32>")


@dataclasses.dataclass(frozen=True)
class StableHloInventory:
    op_counts: Counter
    custom_calls: tuple[str, ...]  # call_target_name of each custom_call
    shifts: int  # stablehlo.shift_right_logical: one per quantized linear
    masks: int  # stablehlo.and
    u32_to_f32_converts: int

    @property
    def has_custom_call(self) -> bool:
        return bool(self.custom_calls) or self.op_counts.get("custom_call", 0) > 0


def stablehlo_inventory(text: str) -> StableHloInventory:
    ops = Counter(_STABLEHLO_OP.findall(text))
    targets = tuple(re.findall(r"custom_call\s*@([\w$.\-]+)", text)) + tuple(
        re.findall(r'call_target_name\s*=\s*"([^"]+)"', text)
    )
    return StableHloInventory(
        op_counts=ops,
        custom_calls=targets,
        shifts=ops.get("shift_right_logical", 0),
        masks=ops.get("and", 0),
        u32_to_f32_converts=len(_U32_TO_F32.findall(text)),
    )


# --- XLA optimized HLO ------------------------------------------------------------------

_HLO_SHAPE = re.compile(r"\b(f32|bf16|f16)\[([\d,]*)\]")
_COMPUTATION_HEAD = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s+->\s+.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s+=\s+(.+?)\s+([a-z][\w\-]*)\((.*)$")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_CONTRACTION_OPS = ("dot", "convolution")
_GEMM_TARGET = re.compile(r'custom_call_target="[^"]*(gemm|matmul|dot)[^"]*"', re.IGNORECASE)
_DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2}


@dataclasses.dataclass(frozen=True)
class HloInstruction:
    name: str
    shape: str
    opcode: str
    rest: str

    @property
    def calls(self) -> list[str]:
        return _CALLS.findall(self.rest)


def parse_hlo(text: str) -> dict[str, list[HloInstruction]]:
    """Computation name -> its instructions (the entry computation is keyed ``ENTRY``)."""
    comps, current = {}, None
    for line in text.splitlines():
        head = _COMPUTATION_HEAD.match(line)
        if head:
            current = "ENTRY" if head.group(1) else head.group(2)
            comps[current] = []
            continue
        if line.strip() == "}":
            current = None
            continue
        if current is not None:
            m = _INSTRUCTION.match(line)
            if m:
                comps[current].append(HloInstruction(*m.groups()))
    return comps


def _reaches(comps, name, predicate, seen=None) -> bool:
    """Does computation ``name`` (or one it calls) hold an instruction matching predicate?

    ``predicate(computation)`` returns the per-instruction test for that computation.
    """
    seen = set() if seen is None else seen
    if name in seen or name not in comps:
        return False
    seen.add(name)
    test = predicate(comps[name])
    return any(
        test(i) or any(_reaches(comps, c, predicate, seen) for c in i.calls)
        for i in comps[name]
    )


_SUB_BYTE = re.compile(r"^[su][24]\[")


def _unpack_predicate(comp: list[HloInstruction]):
    """Unpacking codes: a shift of packed words, or a convert from a 4-bit integer type."""
    shapes = {i.name: i.shape for i in comp}

    def is_unpack(i: HloInstruction) -> bool:
        if i.opcode == "shift-right-logical":
            return True
        if i.opcode == "convert":
            operand = i.rest.split(")", 1)[0].strip().lstrip("%").split(",")[0].strip()
            return bool(_SUB_BYTE.match(shapes.get(operand, "")))
        return False

    return is_unpack


# XLA rewrites a dot with a size-1 dimension (a GEMV: decode's M=1) into multiply + reduce;
# the reduce keeps the dot's op_name, which is how it is told apart from other reductions.
_DOT_OP_NAME = re.compile(r'op_name="[^"]*dot_general"')


def _is_contraction(i: HloInstruction) -> bool:
    if i.opcode in _CONTRACTION_OPS:
        return True
    if i.opcode == "custom-call":
        return bool(_GEMM_TARGET.search(i.rest))
    return i.opcode == "reduce" and bool(_DOT_OP_NAME.search(i.rest))


@dataclasses.dataclass(frozen=True)
class XlaDequant:
    """One kernel (fusion or lone op) that unpacks int4 codes."""

    name: str
    kind: str  # fused (a contraction in the same fusion) | materialized
    output: str
    weight_bytes: int  # bytes of full-size float weights this kernel writes (0 if fused)


@dataclasses.dataclass(frozen=True)
class XlaVerdict:
    verdict: str  # fused | materialized | no-dequant
    dequants: tuple[XlaDequant, ...]

    @property
    def materialized_bytes(self) -> int:
        return sum(d.weight_bytes for d in self.dequants)

    @property
    def fused_count(self) -> int:
        return sum(d.kind == FUSED for d in self.dequants)


def _float_outputs(shape: str):
    for dtype, dims in _HLO_SHAPE.findall(shape):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        yield dtype, n


def analyze_xla_hlo(text: str, weight_elements: set[int]) -> XlaVerdict:
    """Classify every kernel of optimized HLO that unpacks int4 codes.

    ``weight_elements``: element counts (out * in) of the quantized linears; a dequant kernel
    whose float output has one of these sizes writes a full-size weight to memory.
    """
    comps = parse_hlo(text)
    if "ENTRY" not in comps:
        raise ValueError("no ENTRY computation: not an HLO module dump")
    # Kernels are the instructions of non-fused computations (entry, while bodies, ...):
    # a fusion call is one kernel, a lone op is another.
    called_by_fusion = {c for comp in comps.values() for i in comp if i.opcode == "fusion" for c in i.calls}
    dequants = []
    for cname, instructions in comps.items():
        if cname in called_by_fusion:
            continue
        for i in instructions:
            if i.opcode == "fusion":
                body = i.calls[0] if i.calls else None
                if not body or not _reaches(comps, body, _unpack_predicate):
                    continue
                fused = _reaches(comps, body, lambda _: _is_contraction)
            elif _unpack_predicate(instructions)(i):
                fused = False
            else:
                continue
            weight_bytes = 0 if fused else sum(
                n * _DTYPE_BYTES[dt] for dt, n in _float_outputs(i.shape) if n in weight_elements
            )
            dequants.append(XlaDequant(i.name, FUSED if fused else MATERIALIZED, i.shape, weight_bytes))
    if not dequants:
        verdict = NO_DEQUANT
    elif all(d.kind == FUSED for d in dequants):
        verdict = FUSED
    else:
        verdict = MATERIALIZED
    return XlaVerdict(verdict, tuple(dequants))


# --- XLA: the verdict per quantized linear ---------------------------------------------

_CODES_PARAM = re.compile(r"^(?:[us]4\[[\d,]+\]|u32\[\d+,\d+\])")
_PASS_THROUGH = ("bitcast", "copy", "reshape", "transpose", "get-tuple-element", "tuple")


def _kernel_kind(comps, kernel) -> str:
    """How a fused linear's contraction runs: a Triton/cuBLAS gemm or a reduction (XLA's
    rewrite of an M=1 dot into multiply + reduce)."""
    if kernel.opcode == "custom-call" or "triton" in kernel.rest or "__cublas" in kernel.rest:
        return "gemm"
    body = kernel.calls[0] if kernel.calls else None
    if body and _reaches(comps, body, lambda _: lambda i: i.opcode in _CONTRACTION_OPS):
        return "dot"
    return "reduction"


def xla_linears_fused(text: str) -> tuple[int, int, dict]:
    """(quantized linears whose codes are read only by kernels that also contract, all of them,
    {kernel kind: fused linears}).

    A linear is identified by its codes parameter of the entry computation (4-bit or uint32
    words); its readers are followed through layout-only ops.
    """
    comps = parse_hlo(text)
    entry = comps["ENTRY"]
    by_operand: dict[str, list] = {}
    for i in entry:
        for name in set(re.findall(r"%([\w.\-]+)", i.rest.split("),", 1)[0] + ")")):
            by_operand.setdefault(name, []).append(i)
    fused = total = 0
    kinds: dict[str, int] = {}
    for p in entry:
        if p.opcode != "parameter" or not _CODES_PARAM.match(p.shape):
            continue
        total += 1
        kernels, frontier, seen = [], [p.name], set()
        while frontier:
            name = frontier.pop()
            for user in by_operand.get(name, []):
                if user.name in seen:
                    continue
                seen.add(user.name)
                (frontier.append(user.name) if user.opcode in _PASS_THROUGH else kernels.append(user))
        if kernels and all(_contracts(comps, k) for k in kernels):
            fused += 1
            kind = "+".join(sorted({_kernel_kind(comps, k) for k in kernels}))
            kinds[kind] = kinds.get(kind, 0) + 1
    return fused, total, kinds


def _contracts(comps, kernel) -> bool:
    if _is_contraction(kernel):
        return True
    return kernel.opcode == "fusion" and bool(kernel.calls) and _reaches(
        comps, kernel.calls[0], lambda _: _is_contraction)


def entry_unpack_kernels(text: str) -> int:
    """Kernels of the entry computation that unpack int4 codes: in a graph whose work sits in
    a loop, the dequants XLA hoisted out of it."""
    comps = parse_hlo(text)
    entry = comps["ENTRY"]
    is_unpack = _unpack_predicate(entry)
    return sum(
        (_reaches(comps, i.calls[0], _unpack_predicate) if i.opcode == "fusion" and i.calls else is_unpack(i))
        for i in entry
    )


# --- IREE executables -------------------------------------------------------------------

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
_FLOAT_BYTES = {"f32": 4, "f16": 2, "bf16": 2}


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
        (name, text[start: starts[k + 1][0] if k + 1 < len(starts) else end_of_last])
        for k, (start, name) in enumerate(starts)
    ]


def _stored_weight_bytes(body: str, weight_elements) -> int:
    total = 0
    for dims, dtype in _STORED_TENSOR.findall(body):
        n = 1
        for d in dims.split("x"):
            n *= int(d)
        if n in weight_elements:
            total += n * _FLOAT_BYTES[dtype]
    return total


def classify_executable(name: str, body: str, sites: int = 1, weight_elements=frozenset()) -> IreeExecutable:
    exports = tuple(_EXPORT.findall(body))
    unpack = bool(_BIT_UNPACK.search(body))
    contraction = bool(_LINALG_CONTRACTIONS.search(body)) or any(
        _CONTRACTION_NAME.search(e + "_") for e in exports
    )
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
        classify_executable(n, b, sites.get(n, 0) if sites else 1, weight_elements)
        for n, b in split_executables(text)
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
