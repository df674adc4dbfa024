"""XLA's optimized HLO (``compiled.as_text()``): which kernels unpack int4 codes, whether each
also holds its contraction, per graph and per quantized linear, and dequants hoisted out of
a loop."""

from __future__ import annotations

import dataclasses
import re

from ..llama.linears import REDUCE_SCOPE
from . import FLOAT_BYTES, FUSED, MATERIALIZED, NO_DEQUANT, element_count

_HLO_SHAPE = re.compile(r"\b(f32|bf16|f16)\[([\d,]*)\]")
_COMPUTATION_HEAD = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s+->\s+.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s+=\s+(.+?)\s+([a-z][\w\-]*)\((.*)$")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_CONTRACTION_OPS = ("dot", "convolution")
_GEMM_TARGET = re.compile(r'custom_call_target="[^"]*(gemm|matmul|dot)[^"]*"', re.IGNORECASE)


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
    return any(test(i) or any(_reaches(comps, c, predicate, seen) for c in i.calls) for i in comps[name])


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
# the reduce keeps the dot's op_name, which is how it is told apart from other reductions. The
# model's own multiply + reduce GEMV (linears.reduce_matmul) runs under a name scope, kept too.
_DOT_OP_NAME = re.compile(rf'op_name="[^"]*(dot_general|{REDUCE_SCOPE}/reduce_sum)"')


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
        yield dtype, element_count(dims.split(","))


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
            weight_bytes = (
                0 if fused else sum(n * FLOAT_BYTES[dt] for dt, n in _float_outputs(i.shape) if n in weight_elements)
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
    return (
        kernel.opcode == "fusion" and bool(kernel.calls) and _reaches(comps, kernel.calls[0], lambda _: _is_contraction)
    )


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


_WHILE_BODY = re.compile(r"\bbody=%?([\w.\-]+)")


def loop_contractions(text: str) -> int | None:
    """Kernels that contract (a dot, a GEMM call, a GEMV's reduce; fused or alone) in the body
    of the first ``while`` loop of an optimized HLO, None without a loop: what one round of a
    timing loop runs, so a GEMV that XLA deleted as dead or hoisted out is missing from it.
    Custom kernels (Triton, Mosaic) are not contractions here."""
    comps = parse_hlo(text)
    loop = next((i for comp in comps.values() for i in comp if i.opcode == "while"), None)
    body = _WHILE_BODY.search(loop.rest) if loop is not None else None
    if body is None:
        return None
    return sum(_contracts(comps, i) for i in comps.get(body.group(1), []))


# --- bytes per kernel --------------------------------------------------------------------

_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16|f8e\w+)\[([\d,]*)\]")
_BITS = {"pred": 8, "bf16": 16}


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape (a tuple sums its arrays; 4-bit types at half a byte each)."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        bits = _BITS.get(dtype) or int(re.sub(r"\D", "", dtype.split("e")[0]) or 8)
        total += element_count(dims.split(",")) * bits // 8
    return total


def kernel_name(instruction: str) -> str:
    """The name a profiler shows for the kernel of an HLO instruction (XLA-GPU names kernels
    after their fusion, with ``.`` and ``-`` made ``_``)."""
    return re.sub(r"[.\-]", "_", instruction)


_KERNEL_OPS = ("fusion", "custom-call")


def kernel_bytes(text: str) -> dict[str, int]:
    """``{kernel name: bytes it reads and writes}`` for every fusion and custom call of an
    optimized module (operands' shapes and the result's, looked up by name), so a profile's
    per-kernel time gives a rate of the kernel's own bytes."""
    comps = parse_hlo(text)
    shapes = {i.name: i.shape for comp in comps.values() for i in comp}
    out = {}
    for comp in comps.values():
        for i in comp:
            if i.opcode not in _KERNEL_OPS:
                continue
            operands = re.findall(r"%([\w.\-]+)", i.rest.split("),", 1)[0] + ")")
            nbytes = shape_bytes(i.shape) + sum(shape_bytes(shapes.get(o, "")) for o in operands)
            out[kernel_name(i.name)] = nbytes
    return out
