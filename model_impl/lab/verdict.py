"""``python -m model_impl verdict``: everything the int4-against-bf16 decision rests on, measured
on this machine in one run, written to ``results/verdict-<machine>-<date>.json`` after every
measurement (a run killed at a device's time limit keeps what it measured; ``--resume FILE``
goes on from there), and printed as the decision table (:mod:`model_impl.decide` decides).

What it measures, per backend (:mod:`.protocol` times each the same way on every backend):

- ``bandwidth``: every copy the device can be timed with, each named (:meth:`Protocol.copies`);
- ``dense``: the dense decode step in the compute dtype in every form the suite knows (the
  dot, multiply + reduce, stacked projections) at 1 row and padded to 2, 4, 8, 16 rows, and a
  64-token prefill; float16 and float32 as the dot at one row;
- ``int4``: each candidate form's check (lowering verdict, parity against the host dequant,
  tokens against the baseline form) and its steps at 1, 2, 4 and 16 rows and the prefill;
  XLA's own int4 GEMM on the same codes with per-channel scales (an anchor: never qualifies);
- ``anchors``: torch's cuBLAS bf16 and tinygemm step linears where torch and CUDA are present;
- ``profile``: per-kernel device time of the fastest dense and fastest qualifying int4 step;
- ``generate``: the same two forms through the serving path (``generate``'s on-device loop, 32
  steps per dispatch, token ids streamed back), seconds per token.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import json
import re
from pathlib import Path

from .. import checks, decide
from ..backends.spec import backend as backend_spec
from ..llama.config import Config
from ..llama.representations import BASELINE, PALLAS, convert, convert_dense
from ..llama.shapes import REAL_SHAPES, shrunk_llama32_config
from ..llama.weights import cast_weights, nbytes
from . import anchors, fusion, roofline, xla_int4_gemm
from .fusion_matrix import MAX_SEQ, PROMPT_TOKENS, STACKED, Cell, applicability, cell_record, error_line, layout
from .fusion_matrix import lowering_cell as lower_cell
from .protocol import NotMeasurable, protocol


def _smollm2_shapes() -> Config:
    from ..checkpoints import load_config

    return load_config(None)


# The shapes a verdict runs on (seeded synthetic weights): the real configs; the embedded
# SmolLM2-135M's (what a 2-core CPU can time in minutes); a 2-layer model for the tests.
SHAPES = {**REAL_SHAPES, "smollm2-135m": _smollm2_shapes, "tiny": shrunk_llama32_config}
PARTS = ("bandwidth", "dense", "int4", "anchors", "profile", "generate")
GENERATE_TOKENS = 64  # new tokens per timed generation (two chunks of the device loop)
DENSE_ROWS = (1, 2, 4, 8, 16)  # a server pads a batch to a graph it has: each serves every batch <= rows
INT4_ROWS = (1, 2, 4, 16)
PREFILL_TOKENS = 64
DENSE_FORMS = (("dot", "default"), ("reduce", "default"), ("dot", STACKED), ("reduce", STACKED))
OTHER_DTYPES = ("float16", "float32")  # columns beside the compute dtype: the dot at one row
# (representation, layout, head): the baseline (MLX's words), the forms XLA-CUDA fuses fastest,
# the stacked layout, the word form; our Pallas kernel, plain and stacked (a custom_call: the
# other route; stacked, the k/v GEMVs join q's and gate joins up: fewer, larger launches).
CANDIDATES = (
    (BASELINE, "default", "dot"),
    ("u4-magic", "default", "reduce"),
    ("u4-magic", STACKED, "reduce"),
    ("u4-magic-f32", "default", "reduce"),
    ("u32-word-split", "default", "reduce"),
    ("s4-grouped", "default", "dot"),
    (PALLAS, "default", "dot"),
    (PALLAS, STACKED, "dot"),
)
QUICK_CANDIDATES = CANDIDATES[:3]


def parse_forms(text: str) -> tuple[tuple[str, str, str], ...]:
    """``representation[:layout[:head]],...`` -> candidate triples (layout ``default``, head
    ``dot`` when left out); a ValueError names the item it cannot read."""
    from ..llama.representations import HEAD_FORMS, REPRESENTATIONS

    out = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        rep, lay, head, *extra = [*item.split(":"), "", ""][:3] + item.split(":")[3:]
        lay, head = lay or "default", head or "dot"
        if extra or rep not in REPRESENTATIONS or lay not in ("default", STACKED) or head not in HEAD_FORMS:
            raise ValueError(
                f"{item!r} is not representation[:layout[:head]] of {', '.join(REPRESENTATIONS)}; layout default or "
                f"{STACKED}; head {', '.join(HEAD_FORMS)}"
            )
        out.append((rep, lay, head))
    if not out:
        raise ValueError("no form given")
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class Plan:
    shapes: str
    dtype: str
    steps: int
    parity_model: str
    quick: bool
    parts: tuple[str, ...] = PARTS
    forms: tuple | None = None  # int4 candidates (default: CANDIDATES, or QUICK_CANDIDATES)
    rows: tuple[int, ...] | None = None  # int4 rows (default INT4_ROWS, or 1 when quick)
    dense_rows: tuple[int, ...] = DENSE_ROWS

    @property
    def int4_rows(self):
        return self.rows or ((1,) if self.quick else INT4_ROWS)

    @property
    def candidates(self):
        return self.forms or (QUICK_CANDIDATES if self.quick else CANDIDATES)


def machine_slug(environment: dict) -> str:
    """``h200``, ``h100``, ... from the GPU's name; ``cpu`` without one."""
    gpu = environment["machine"].get("gpu")
    if not gpu:
        return "cpu"
    found = re.search(r"\b([A-Z]+\d+[A-Za-z]*)\b", gpu.replace("NVIDIA", ""))
    return (found.group(1) if found else re.sub(r"\W+", "-", gpu)).lower()


def default_backends() -> list[str]:
    """The GPU backends where this machine has a GPU jax sees, else the CPU ones."""
    import jax

    try:
        jax.devices("cuda")
    except RuntimeError:
        return ["xla-cpu", "iree-cpu"]
    try:
        import iree.runtime  # noqa: F401

        return ["xla-cuda", "iree-cuda"]
    except ImportError:
        return ["xla-cuda"]


KEY_FIELDS = {
    "bandwidth": ("backend", "name"),
    "step": ("backend", "weights", "dtype", "form", "layout", "head", "rows", "phase"),
    "check": ("backend", "dtype", "form", "layout", "head"),
    "profile": ("backend", "of", "rows"),
    "generate": ("backend", "of"),
    "anchor": ("backend", "name"),
}


# What a resumed file and the run that continues it must share (ratios never mix plans or machines)
SAME_PLAN = ("machine", "shapes", "dtype", "steps", "parity_model")


class Run:
    """The results file being written: its records, what is already measured (``--resume``)."""

    def __init__(self, path: Path, header: dict, log, resume: Path | None = None):
        self.path, self.log = path, log
        source = resume or path
        self.data = json.loads(source.read_text()) if source.exists() else {**header, "records": []}
        differ = [
            f"{k} {self.data.get(k)!r} (asked: {header[k]!r})" for k in SAME_PLAN if self.data.get(k) != header[k]
        ]
        if differ:
            raise ValueError(f"--resume {source}: measured with another plan or machine: {', '.join(differ)}")
        self.data["quick"] = bool(self.data.get("quick")) and header["quick"]  # full once a full plan ran
        self.done = {self.key(r) for r in self.data["records"]}

    @staticmethod
    def key(record: dict) -> tuple:
        """What identifies a measurement of its kind (a resumed run skips what it has)."""
        return (record["kind"], *(record.get(f) for f in KEY_FIELDS[record["kind"]]))

    def has(self, **record) -> bool:
        return self.key(record) in self.done

    def add(self, record: dict, line: str) -> None:
        self.data["records"].append(record)
        self.done.add(self.key(record))
        self.data["decision"] = decide.decide(self.data)
        self.write()
        self.log(f"[{len(self.data['records'])}] {line}")

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)


def _ms(s) -> str:
    return f"{s * 1e3:.3f} ms" if s else "-"


def _timed(run: Run, key: dict, measure, extra: dict | None = None) -> dict | None:
    """Measure one step unless the run has it; a figure the backend cannot give, or a failure,
    is recorded as such (``skipped`` / ``error``), never as a time."""
    if run.has(**key):
        return None
    record = {**key, **(extra or {})}
    try:
        record.update(measure())
    except NotMeasurable as e:
        record.update(seconds=None, skipped=str(e))
    except Exception as e:  # a compiler or runtime failure is a finding of the measurement
        record.update(seconds=None, error=error_line(e))
    gc.collect()
    what = f"{key['backend']} {key['weights']} {key['dtype']} {decide.form_name(key)} {key['phase']} rows={key['rows']}"
    outcome = _ms(record["seconds"]) if record.get("seconds") else record.get("skipped") or record.get("error")
    run.add(record, f"{what}: {outcome}")
    return record


def _step_key(backend, weights, dtype, form, layout_, head, rows, phase="decode") -> dict:
    return {"kind": "step", "backend": backend, "weights": weights, "dtype": dtype, "form": form,
            "layout": layout_, "head": head, "rows": rows, "phase": phase}  # fmt: skip


def bytes_per_step(cfg: Config, weights, rows: int) -> int:
    return roofline.decode_bytes_read(cfg, weights, PROMPT_TOKENS, rows)


def measure_dense(run: Run, proto, plan: Plan, setup) -> None:
    cfg = setup.cfg
    for dtype in (plan.dtype, *[d for d in OTHER_DTYPES if d != plan.dtype]):
        dcfg = dataclasses.replace(cfg, dtype=dtype)
        base = cast_weights(setup.fp32, dtype)
        forms = DENSE_FORMS if dtype == plan.dtype else (("dot", "default"),)
        for form, lay in forms:
            weights = convert_dense(layout(base, lay), form)
            size = nbytes(weights)
            rows_ = plan.dense_rows if (dtype == plan.dtype and form == "dot") else (1,)
            for rows in rows_:
                _timed(
                    run,
                    _step_key(proto.backend, "dense", dtype, form, lay, form, rows),
                    lambda w=weights, r=rows, c=dcfg: proto.decode(c, w, plan.steps, r),
                    {"weight_bytes": size, "bytes_per_step": bytes_per_step(dcfg, weights, rows)},
                )
            if dtype == plan.dtype and form == "dot":
                _timed(
                    run,
                    _step_key(proto.backend, "dense", dtype, form, lay, form, PREFILL_TOKENS, "prefill"),
                    lambda w=weights, c=dcfg: proto.prefill(c, w, PREFILL_TOKENS),
                    {"weight_bytes": size},
                )
            del weights
        del base
        gc.collect()


def check_record(cell: Cell) -> dict:
    rec = cell_record(cell)
    keep = (*decide._CHECK_FIELDS, "skipped", "compile_seconds", "fused_kernels", "materialized_bytes_per_step",
            "parity_model")  # fmt: skip
    return {"kind": "check", "backend": cell.backend, "form": cell.representation, "layout": cell.option,
            "head": cell.head, "dtype": cell.dtype, **{k: rec.get(k) for k in keep}}  # fmt: skip


def measure_int4(run: Run, proto, plan: Plan, setup) -> None:
    from ..llama.weights import specs as weight_specs

    backend, cfg = proto.backend, setup.cfg
    references = fusion.make_references(backend, setup, fusion.parity_prompt(setup.parity_cfg))
    for representation, lay, head in plan.candidates:
        key = {"kind": "check", "backend": backend, "dtype": cfg.dtype, "form": representation, "layout": lay,
               "head": head}  # fmt: skip
        cell = Cell(backend, representation, lay, head, cfg.dtype)
        cell.skipped = applicability(representation, lay, backend)
        if cell.skipped:
            if not run.has(**key):
                run.add(check_record(cell), f"{backend} check {representation} [{lay}]: n/a ({cell.skipped})")
            continue
        if not run.has(**key):
            try:
                specs = convert(layout(weight_specs(cfg, "int4", embedding=head == "int4"), lay), representation, head)
                lower_cell(cell, cfg, specs)
                fusion.parity_cell(cell, setup, fusion.parity_prompt(setup.parity_cfg), references)
            except Exception as e:  # a compiler or runtime failure is the form's finding
                cell.error = error_line(e)
            c = check_record(cell)
            verdict_ = "qualifies" if decide.qualifies(c) else "; ".join(decide.why_not(c))
            run.add(c, f"{backend} check {decide.form_name(c)}: {verdict_}")
        # a form that does not qualify is timed at one row only (the fastest of all, for context),
        # except a custom kernel that computes the right thing: the other route, at every batch
        c = next(r for r in run.data["records"] if run.key(r) == run.key(key))
        ok = decide.qualifies(c) or decide.exact_custom_kernel(c)
        weights = convert(layout(setup.quantized(head), lay), representation, head)
        size = nbytes(weights)
        for rows in plan.int4_rows if ok else (1,):
            _timed(
                run,
                _step_key(backend, "int4", cfg.dtype, representation, lay, head, rows),
                lambda r=rows, w=weights: proto.decode(cfg, w, plan.steps, r),
                {"weight_bytes": size, "bytes_per_step": bytes_per_step(cfg, weights, rows)},
            )
        if ok and not plan.quick:
            _timed(
                run,
                _step_key(backend, "int4", cfg.dtype, representation, lay, head, PREFILL_TOKENS, "prefill"),
                lambda w=weights: proto.prefill(cfg, w, PREFILL_TOKENS),
                {"weight_bytes": size},
            )
        del weights
        gc.collect()
    if backend_spec(backend).is_xla:
        weights = xla_int4_gemm.convert(setup.int4)
        size = nbytes(weights)
        for rows in plan.int4_rows:
            _timed(
                run,
                _step_key(backend, "anchor", cfg.dtype, xla_int4_gemm.FORM, "default", "dot", rows),
                lambda r=rows: proto.decode(cfg, weights, plan.steps, r),
                {"weight_bytes": size, "bytes_per_step": bytes_per_step(cfg, weights, rows),
                 "note": "per-channel scales: not the MLX format, never qualifies"},
            )  # fmt: skip
        del weights


def measure_profile(run: Run, proto, plan: Plan, setup) -> None:
    """Per-kernel times of the fastest dense and the fastest qualifying int4 step at one row."""
    cfg, backend = setup.cfg, proto.backend
    picks = {"dense": decide.best_dense(run.data, backend, 1), "int4": decide.best_int4(run.data, backend, 1)}
    for of, step in picks.items():
        key = {"kind": "profile", "backend": backend, "of": of, "rows": 1}
        if step is None or run.has(**key):
            continue
        weights = _weights_of(setup, step, of)
        record = {**key, "form": decide.form_name(step), "step_rows": step["rows"]}
        try:
            record["kernels"] = proto.profile(cfg, weights, plan.steps, step["rows"])[:12]
        except NotMeasurable as e:
            record.update(kernels=[], skipped=str(e))
        except Exception as e:
            record.update(kernels=[], error=error_line(e))
        why = record.get("skipped") or record.get("error") or f"{len(record['kernels'])} kernels"
        run.add(record, f"{backend} profile of {of} ({record['form']}): {why}")
        del weights
        gc.collect()


def _weights_of(setup, step: dict, of: str):
    form, lay, head = decide.form_key(step)
    base = layout(setup.quantized(head) if of == "int4" else cast_weights(setup.fp32, step["dtype"]), lay)
    return convert(base, form, head) if of == "int4" else convert_dense(base, form)


def measure_generate(run: Run, proto, plan: Plan, setup) -> None:
    """The fastest dense and the fastest qualifying int4 form at one sequence, through the
    generate path a server runs (:func:`timing.time_generate`): seconds per token."""
    from ..backends import generate
    from ..llama.graphs import DECODE_CHUNK
    from . import timing

    backend = proto.backend
    picks = {"dense": decide.best_dense(run.data, backend, 1), "int4": decide.best_int4(run.data, backend, 1)}
    for of, step in picks.items():
        key = {"kind": "generate", "backend": backend, "of": of}
        if step is None or run.has(**key):
            continue
        record = {**key, "form": decide.form_name(step), "dtype": step["dtype"], "chunk": DECODE_CHUNK,
                  "new_tokens": GENERATE_TOKENS, "prompt_tokens": PROMPT_TOKENS}  # fmt: skip
        weights = _weights_of(setup, step, of)
        try:
            runner = generate.make_runner(setup.cfg, weights, backend)
            t = timing.time_generate(runner, PROMPT_TOKENS, GENERATE_TOKENS, MAX_SEQ, DECODE_CHUNK, rounds=3)
            record.update(seconds=float(sorted(t.rounds)[len(t.rounds) // 2]), spread=[min(t.rounds), max(t.rounds)])
            record["bytes_per_step"] = bytes_per_step(setup.cfg, weights, 1)
            del runner
        except Exception as e:
            record.update(seconds=None, error=error_line(e))
        outcome = _ms(record["seconds"]) if record.get("seconds") else record.get("error")
        run.add(record, f"{backend} generate path, {of} ({record['form']}): {outcome} per token")
        del weights
        gc.collect()


def measure_anchors(run: Run, proto, plan: Plan, setup) -> None:
    key = {"kind": "anchor", "backend": proto.backend, "name": "torch"}
    if not backend_spec(proto.backend).is_cuda or run.has(**key):
        return
    result = anchors.measure(setup.cfg, batches=plan.int4_rows)
    run.add({**key, **result}, f"{proto.backend} torch anchors: {result.get('skipped') or 'measured'}")


def measure_bandwidth(run: Run, proto) -> None:
    try:
        copies = proto.copies()
    except Exception as e:  # recorded: the roofline then says it has no copy
        copies = [{"name": "copies", "kernel_class": None, "bytes_per_s": None, "error": error_line(e)}]
    for copy in copies:
        key = {"kind": "bandwidth", "backend": proto.backend, **copy}
        if not run.has(**key):
            rate = copy.get("bytes_per_s")
            run.add(key, f"{proto.backend} copy, {copy['name']}: {rate / 1e12 if rate else 0:.2f} TB/s")


def default_out(environment: dict) -> Path:
    return Path("results") / f"verdict-{machine_slug(environment)}-{datetime.date.today().isoformat()}.json"


def run(
    backends: list[str],
    out: Path | None,
    plan: Plan,
    resume: Path | None = None,
    log=lambda m: print(m, flush=True),
) -> dict:
    """Measure ``plan`` on ``backends`` (each resolved to its protocol first: a backend this
    machine lacks fails before anything is built) and return the run."""
    protos = [protocol(b, MAX_SEQ, PROMPT_TOKENS) for b in backends]
    environment = fusion.environment(backends)
    path = Path(out or resume or default_out(environment))
    if path.exists() and resume is None:
        raise FileExistsError(f"{path}: exists; pass --resume {path} to continue it, or --out for a new file")
    header = {
        "kind": "verdict",
        "machine": machine_slug(environment),
        "environment": environment,
        "shapes": plan.shapes,
        "dtype": plan.dtype,
        "steps": plan.steps,
        "parity_model": plan.parity_model,
        "parity_atol": fusion.parity_atol(plan.dtype),
        "greedy_tokens": checks.GREEDY_TOKENS,
        "quick": plan.quick,
        "max_seq": MAX_SEQ,
        "start_pos": PROMPT_TOKENS,
    }
    r = Run(path, header, log, resume)
    r.data.setdefault("runs", []).append({"environment": environment, "parts": list(plan.parts)})
    cfg = SHAPES[plan.shapes]()
    setup = fusion.make_setup(plan.parity_model, plan.steps, log, plan.dtype, cfg=cfg)
    for proto in protos:
        if "bandwidth" in plan.parts:
            measure_bandwidth(r, proto)
        if "dense" in plan.parts:
            measure_dense(r, proto, plan, setup)
        if "int4" in plan.parts:
            measure_int4(r, proto, plan, setup)
        if "anchors" in plan.parts:
            measure_anchors(r, proto, plan, setup)
        if "profile" in plan.parts:
            measure_profile(r, proto, plan, setup)
        if "generate" in plan.parts:
            measure_generate(r, proto, plan, setup)
    r.data["decision"] = decide.decide(r.data)
    r.write()
    log(f"wrote {path}")
    return r.data
