"""The collectives in XLA's partitioned, optimized HLO (``compiled.as_text()`` of a sharded
graph): kind, bytes, where they run, and whether any of them moves weights.

A value *is weights* when it depends on the weights and on nothing else the graph is given:
the packed codes, scales and biases as passed in, and what is computed from them alone (a
dequantized weight, a slice of it, a copy). A value that also depends on tokens, positions or
the KV cache is an activation (a GEMV's partial sums, an embedding row picked by a token) even
when its bytes come from a weight. Weight parameters are the entry parameters whose
``op_name`` metadata starts with :data:`WEIGHT_ARGUMENT` (JAX names a parameter after its
argument path). A collective whose operand is weights means a shard reads another shard's
weights every step: "weights move"; none means "weights stay local".

Dependence is tracked through every computation a collective can sit in: the entry, while
bodies (their carried tuple element by element), and the computations of calls and async ops
(``calls=``);
fusions are taken whole (their output depends on their operands).
"""

from __future__ import annotations

import dataclasses
import re

from .xla_hlo import HloInstruction, parse_hlo

WEIGHT_ARGUMENT = "weights"
KINDS = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "ragged-all-to-all",
    "collective-permute",
    "collective-broadcast",
)
STAYS_LOCAL, WEIGHTS_MOVE = "weights stay local", "weights move"

_OP_NAME = re.compile(r'op_name="([^"]*)"')
_OPERAND = re.compile(r"%([\w.\-]+)")
_ARRAY = re.compile(r"\b(pred|bf16|[suf]\d+)\[([\d,]*)\]")
_BODY = re.compile(r"body=%?([\w.\-]+)")
_INDEX = re.compile(r"index=(\d+)")


def array_bytes(shape: str) -> int:
    """Bytes of every array in an HLO shape string (a tuple's elements summed; 4-bit types at
    half a byte)."""
    total = 0.0
    for dtype, dims in _ARRAY.findall(shape):
        bits = 8 if dtype == "pred" else int(re.sub(r"\D", "", dtype))
        n = 1
        for d in dims.split(","):
            n *= int(d) if d else 1
        total += n * bits / 8
    return int(total)


def _operands(i: HloInstruction) -> list[str]:
    depth, end = 1, len(i.rest)
    for k, ch in enumerate(i.rest):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            end = k
            break
    return _OPERAND.findall(i.rest[:end])


@dataclasses.dataclass(frozen=True)
class Dep:
    """What a value depends on: weight parameters (their names) and whether any other input."""

    weights: frozenset = frozenset()
    other: bool = False

    @property
    def is_weights(self) -> bool:
        return bool(self.weights) and not self.other

    def __or__(self, o: Dep) -> Dep:
        return Dep(self.weights | o.weights, self.other or o.other)


NONE = Dep()


def _join(deps) -> Dep:
    out = NONE
    for d in deps:
        out = out | (_join(d) if isinstance(d, list) else d)
    return out


@dataclasses.dataclass(frozen=True)
class Collective:
    kind: str
    name: str
    computation: str
    in_loop: bool  # in a while body: runs once per iteration (a decode loop's step)
    bytes: int  # of its operands on one device
    shape: str  # its result's HLO shape
    moves_weights: bool
    weights: tuple[str, ...]  # the weight parameters it moves (when it does)
    op_name: str = ""  # JAX's name of the op whose result it communicates

    @property
    def op(self) -> str:
        """The JAX op behind it with its name scopes, the jitted function's name dropped
        (``ti,oi->to/dot_general``, ``gemv_reduce/reduce_sum``, ``reduce``, ...)."""
        return re.sub(r"^jit\([^)]*\)/", "", self.op_name)


def _op_name(i: HloInstruction) -> str:
    m = _OP_NAME.search(i.rest)
    return m.group(1) if m else ""


def _kind(opcode: str) -> str | None:
    base = opcode.removesuffix("-start")
    return base if base in KINDS else None


def collectives(text: str) -> list[Collective]:
    """Every collective of a compiled module's HLO, with the weights it moves (if any)."""
    comps = parse_hlo(text)
    found: list[Collective] = []
    seen: set[tuple[str, bool]] = set()
    shapes = {c: {i.name: i.shape for i in instrs} for c, instrs in comps.items()}

    def walk(comp: str, params: list, in_loop: bool):
        if comp not in comps or (comp, in_loop) in seen:
            return
        seen.add((comp, in_loop))
        values: dict[str, Dep | list] = {}
        for i in comps[comp]:
            ops = [values.get(o, NONE) for o in _operands(i)]
            if i.opcode == "parameter":
                k = int(re.match(r"\s*(\d+)", i.rest).group(1))
                if comp == "ENTRY":
                    op_name = _OP_NAME.search(i.rest)
                    is_w = op_name is not None and op_name.group(1).startswith(WEIGHT_ARGUMENT)
                    values[i.name] = Dep(frozenset([op_name.group(1)]), False) if is_w else Dep(other=True)
                else:
                    values[i.name] = params[k] if k < len(params) else Dep(other=True)
                continue
            if i.opcode == "tuple":
                values[i.name] = ops
            elif i.opcode == "get-tuple-element":
                src = ops[0] if ops else NONE
                k = int(_INDEX.search(i.rest).group(1))
                values[i.name] = src[k] if isinstance(src, list) and k < len(src) else src
            elif i.opcode in ("opt-barrier", "while") and len(ops) == 1:
                values[i.name] = ops[0]
            else:
                values[i.name] = _join(ops)
            if i.opcode == "while":
                body = _BODY.search(i.rest)
                if body:
                    walk(body.group(1), [ops[0]] if ops else [], True)
            elif i.opcode != "fusion":  # calls and async ops (reducers hold no collectives)
                for called in i.calls:
                    walk(called, ops, in_loop)
            kind = _kind(i.opcode)
            if kind:
                dep = _join(ops)
                operand_bytes = sum(array_bytes(shapes[comp].get(o, "")) for o in _operands(i))
                found.append(
                    Collective(
                        kind,
                        i.name,
                        comp,
                        in_loop,
                        operand_bytes,
                        i.shape,
                        dep.is_weights,
                        tuple(sorted(dep.weights)) if dep.is_weights else (),
                        _op_name(i),
                    )
                )

    walk("ENTRY", [], False)
    return found


def custom_calls(text: str) -> int:
    return len(re.findall(r"\bcustom-call\(", text))


def per_step(found: list[Collective]) -> list[Collective]:
    """The collectives one decode step runs: a loop graph's body, else the whole graph."""
    looped = [c for c in found if c.in_loop]
    return looped or found


def summary(text: str) -> dict:
    """Per step: ``{kind: {count, bytes, by_op}}`` (``by_op``: counts per JAX op, with its name
    scopes, whose result it communicates), the verdict (:data:`STAYS_LOCAL` or
    :data:`WEIGHTS_MOVE`), the weight-moving collectives, and the module's custom_calls."""
    found = per_step(collectives(text))
    kinds: dict[str, dict] = {}
    for c in found:
        k = kinds.setdefault(c.kind, {"count": 0, "bytes": 0, "by_op": {}})
        k["count"] += 1
        k["bytes"] += c.bytes
        k["by_op"][c.op] = k["by_op"].get(c.op, 0) + 1
    moving = [c for c in found if c.moves_weights]
    return {
        "collectives": kinds,
        "bytes": sum(c.bytes for c in found),
        "verdict": WEIGHTS_MOVE if moving else STAYS_LOCAL,
        "weight_collectives": [
            {"kind": c.kind, "bytes": c.bytes, "shape": c.shape, "weights": list(c.weights), "op_name": c.op_name}
            for c in moving
        ],
        "custom_calls": custom_calls(text),
    }
