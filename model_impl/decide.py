"""The policy that decides: pure functions over a loaded verdict run (``results/verdict-*.json``,
written by :mod:`model_impl.lab.verdict`) or over the older matrix files of a machine that has
no verdict run (:func:`from_matrix`).

Nothing here measures or loads files; the report sections only render what these functions
return. A verdict run is a dict with ``records``: a flat list, each one of

- ``{"kind": "bandwidth", "backend", "name", "kernel_class", "bytes_per_s"}``: one copy;
- ``{"kind": "step", "backend", "weights": "dense" | "int4" | "anchor", "dtype", "form",
  "layout", "head", "rows", "phase": "decode" | "prefill", "seconds", "weight_bytes",
  "bytes_per_step"}``: one timed step (``rows`` activation rows per linear; a prefill's
  ``rows`` is its token count);
- ``{"kind": "check", "backend", "form", "layout", "head", ...}``: an int4 form's lowering and
  parity (:func:`qualifies` reads it);
- ``{"kind": "profile", "backend", "of", "rows", "kernels": [...]}``: top kernels of a step;
- ``{"kind": "anchor", ...}``: the other route's linears (torch), rendered as they are.
"""

from __future__ import annotations

from . import checks

TARGET, STRETCH = 1.5, 2.0  # best qualifying int4 / best bf16 step at batch 1 (XLA-CUDA's goal)
ROOFLINE_TARGET = 0.5
COMPUTE_DTYPE = "bfloat16"  # the dtype int4 is held to; f16 and fp32 are columns beside it


def form_key(record: dict) -> tuple[str, str, str]:
    """(form, layout, head): one int4 or dense form, across its batches and its check."""
    return record["form"], record.get("layout", "default"), record.get("head", "dot")


def form_name(record: dict) -> str:
    form, layout, head = form_key(record)
    name = form + ("" if layout == "default" else f" [{layout}]")
    return name + ("" if head in ("dot", None, form) else f" (head {head})")


def _of(run: dict, kind: str, backend: str | None = None) -> list[dict]:
    return [r for r in run["records"] if r["kind"] == kind and (backend is None or r["backend"] == backend)]


def backends(run: dict) -> list[str]:
    """The backends a run measured, in the order it measured them."""
    seen = []
    for r in run["records"]:
        if r.get("backend") and r["backend"] not in seen:
            seen.append(r["backend"])
    return seen


# --- the qualifying rule ---------------------------------------------------------------------


def why_not(check: dict | None) -> list[str]:
    """Why an int4 form may not carry the verdict; empty when it qualifies. Every condition is
    checked (a cell can fail several at once), each reason named:

    - no ``custom_call`` in the exported graph (a custom kernel is the other route);
    - every quantized linear's dequant fused into its contraction (the analyzers' verdict and
      the per-linear count agree);
    - logits within the dtype's bound of the host dequant (``parity_atol`` of the run);
    - greedy tokens 48/48 against the baseline int4 form, or a first divergence at a near-tie
      (the half-precision rule: :func:`checks.greedy_agreement`); a near-tie does not excuse
      any other condition.
    """
    if check is None:
        return ["not checked"]
    if check.get("skipped"):
        return [f"n/a: {check['skipped']}"]
    if check.get("error"):
        return [f"error: {check['error']}"]
    reasons = []
    if check.get("custom_call") is not False:
        reasons.append("custom_call" if check.get("custom_call") else "custom_call not checked")
    fused, total = check.get("linears_fused"), check.get("linears_total")
    if check.get("verdict") != "fused" or fused is None or fused != total:
        reasons.append(f"dequant {check.get('verdict') or 'not analyzed'} ({fused}/{total} linears fused)")
    diff, atol = check.get("max_abs_logit_diff_vs_host"), check.get("parity_atol")
    if diff is None or atol is None:
        reasons.append("parity not measured")
    elif not diff <= atol:
        reasons.append(f"|dlogit| {diff:.3g} over the bound {atol:.3g}")
    all_tokens = f"{checks.GREEDY_TOKENS}/{checks.GREEDY_TOKENS}"
    if check.get("tokens_vs_baseline") != all_tokens and not check.get("tokens_agree_or_near_tie"):
        gap = check.get("tokens_gap_at_divergence")
        reasons.append(
            f"tokens {check.get('tokens_vs_baseline')} parted off a near-tie"
            + ("" if gap is None else f" (top-2 gap {gap:.3g})")
        )
    return reasons


def qualifies(check: dict | None) -> bool:
    return not why_not(check)


# What a custom kernel (the other route) cannot meet by construction: it is a custom_call and
# its dequant is in the kernel, not fused by the compiler.
BY_CONSTRUCTION = ("custom_call", "dequant ")


def exact_custom_kernel(check: dict | None) -> bool:
    """A custom-kernel form that computes what the route must: a ``custom_call`` whose only
    reasons not to qualify are being one (no compiler fusion to analyze), with its logits
    within the bound of the host dequant and the baseline's tokens (or a near-tie)."""
    if not check or not check.get("custom_call"):
        return False
    return all(r.startswith(BY_CONSTRUCTION) for r in why_not(check))


# --- the references --------------------------------------------------------------------------


def serves(record: dict, batch: int) -> bool:
    """Whether a timed decode step can serve ``batch`` sequences: a step of ``rows`` >= batch
    (a server pads a batch up to a graph it has), in the decode phase."""
    return record.get("phase", "decode") == "decode" and record["rows"] >= batch and record.get("seconds")


def best_dense(run: dict, backend: str, batch: int, dtype: str = COMPUTE_DTYPE) -> dict | None:
    """The fastest dense step of ``dtype`` on ``backend`` that serves ``batch`` sequences: every
    form the run timed (the dot, multiply + reduce, stacked projections), padded batches
    included; None when the run timed none."""
    steps = [
        r for r in _of(run, "step", backend) if r["weights"] == "dense" and r["dtype"] == dtype and serves(r, batch)
    ]
    return min(steps, key=lambda r: r["seconds"], default=None)


def best_prefill(run: dict, backend: str, weights: str, forms=None, dtype: str = COMPUTE_DTYPE) -> dict | None:
    steps = [
        r
        for r in _of(run, "step", backend)
        if r["weights"] == weights
        and r["dtype"] == dtype
        and r.get("phase") == "prefill"
        and r.get("seconds")
        and (forms is None or form_key(r) in forms)
    ]
    return min(steps, key=lambda r: r["seconds"], default=None)


def qualifying_forms(run: dict, backend: str) -> set[tuple[str, str, str]]:
    return {form_key(c) for c in _of(run, "check", backend) if qualifies(c)}


def best_int4(run: dict, backend: str, batch: int, qualifying: bool = True) -> dict | None:
    """The fastest int4 step on ``backend`` that serves ``batch`` (padding allowed, as for
    dense); ``qualifying``: only forms whose check passes :func:`qualifies`."""
    ok = qualifying_forms(run, backend)
    steps = [
        r
        for r in _of(run, "step", backend)
        if r["weights"] == "int4" and serves(r, batch) and (not qualifying or form_key(r) in ok)
    ]
    return min(steps, key=lambda r: r["seconds"], default=None)


def roofline_bandwidth(run: dict, backend: str) -> dict | None:
    """The copy the roofline divides by: the fastest one measured on the backend's device
    (each copy is recorded with its name; a graph-replayed memcpy runs on the copy engine and
    is the slowest on Hopper, so the best is a kernel-class copy there)."""
    copies = [r for r in _of(run, "bandwidth", backend) if r.get("bytes_per_s")]
    return max(copies, key=lambda r: r["bytes_per_s"], default=None)


def roofline_fraction(step: dict | None, bandwidth: dict | None) -> float | None:
    """(least bytes the step reads / the copy's rate) / the step's time."""
    if not step or not bandwidth or not step.get("bytes_per_step"):
        return None
    return step["bytes_per_step"] / bandwidth["bytes_per_s"] / step["seconds"]


# --- the decision ----------------------------------------------------------------------------


def what_stops(
    best: dict | None,
    dense: dict | None,
    fastest: dict | None,
    checks_: list[dict],
    bandwidth: dict | None,
    profiles: list[dict],
) -> str:
    """One sentence: why int4 does not beat bf16 at this batch (or by how little it does),
    from the records of the run: no qualifying form (and why the fastest one fails), the
    steps' roofline fractions, and where a profile exists, the int4 kernels' rate of their own
    bytes against bf16's."""
    if dense is None:
        return "no dense step measured"
    if best is None:
        if not checks_:
            return "no int4 form measured"
        if fastest is not None:
            c = next((c for c in checks_ if form_key(c) == form_key(fastest)), None)
            return f"no form qualifies; the fastest, {form_name(fastest)}, fails: {'; '.join(why_not(c))}"
        return "no form qualifies"
    ratio = dense["seconds"] / best["seconds"]
    parts = []
    fi, fd = roofline_fraction(best, bandwidth), roofline_fraction(dense, bandwidth)
    if fi is not None and fd is not None:
        parts.append(f"int4 reaches {fi:.0%} of its byte floor, bf16 {fd:.0%}")
    rates = {p["of"]: kernel_rate(p) for p in profiles if p["rows"] == best["rows"]}
    if rates.get("int4") and rates.get("dense"):
        parts.append(
            f"int4's kernels move {rates['int4'] / 1e12:.2f} TB/s of their bytes, bf16's {rates['dense'] / 1e12:.2f}"
        )
    if best["rows"] > 1 and best["rows"] != dense["rows"]:
        parts.append(f"int4 served from {best['rows']} rows, bf16 from {dense['rows']}")
    if ratio >= TARGET:
        return "target met" + (f" ({'; '.join(parts)})" if parts else "")
    head = "int4 is slower" if ratio < 1 else f"below the {TARGET}x target"
    return head + (f": {'; '.join(parts)}" if parts else "")


def kernel_rate(profile: dict) -> float | None:
    """Bytes/s over a profile's kernels whose bytes are known (their bytes / their time)."""
    known = [k for k in profile["kernels"] if k.get("bytes") and k.get("seconds")]
    seconds = sum(k["seconds"] for k in known)
    moved = sum(k["bytes"] * k.get("launches_per_step", 1) for k in known)
    return moved / seconds if seconds else None


def decide_backend(run: dict, backend: str) -> dict:
    """Per batch: the fastest dense bf16 step serving it, the fastest qualifying int4 step, their
    ratio, the weight memory int4 saves, and what stops int4; the prefill; the crossover; the
    target at batch 1."""
    checks_ = _of(run, "check", backend)
    bandwidth = roofline_bandwidth(run, backend)
    profiles = _of(run, "profile", backend)
    batches = sorted(
        {
            r["rows"]
            for r in _of(run, "step", backend)
            if r["weights"] == "int4" and r["phase"] == "decode" and r["seconds"]
        }
    )
    rows = []
    for b in batches:
        dense, best = best_dense(run, backend, b), best_int4(run, backend, b)
        fastest = best_int4(run, backend, b, qualifying=False)
        ratio = dense["seconds"] / best["seconds"] if dense and best else None
        rows.append(
            {
                "batch": b,
                "best_dense": _brief(dense),
                "best_int4": _brief(best),
                "fastest_int4": _brief(fastest),
                "ratio": ratio,
                "weight_bytes_saved": _saved(dense, best),
                "roofline_int4": roofline_fraction(best, bandwidth),
                "roofline_dense": roofline_fraction(dense, bandwidth),
                "what_stops": what_stops(best, dense, fastest, checks_, bandwidth, profiles),
            }
        )
    ok = qualifying_forms(run, backend)
    anchors = anchor_rows(run, backend, [r["batch"] for r in rows])
    prefill_dense, prefill_int4 = best_prefill(run, backend, "dense"), best_prefill(run, backend, "int4", ok)
    one = next((r for r in rows if r["batch"] == 1), None)
    return {
        "bandwidth": bandwidth and {k: bandwidth[k] for k in ("name", "bytes_per_s", "kernel_class")},
        "batches": rows,
        "prefill": {
            "tokens": (prefill_dense or prefill_int4 or {}).get("rows"),
            "best_dense": _brief(prefill_dense),
            "best_int4": _brief(prefill_int4),
            "ratio": prefill_dense["seconds"] / prefill_int4["seconds"] if prefill_dense and prefill_int4 else None,
        },
        "crossover": crossover(rows),
        "qualifying_forms": sorted(form_name({"form": f, "layout": lay, "head": h}) for f, lay, h in ok),
        "not_qualifying": {form_name(c): why_not(c) for c in checks_ if not qualifies(c)},
        "target": target(one),
        "anchors": anchors,
        "routes": routes(run, backend, [r["batch"] for r in rows]),
        "generate": generate_path(run, backend, bandwidth),
    }


def generate_path(run: dict, backend: str, bandwidth: dict | None) -> dict | None:
    """The serving path (the on-device generate loop) of the fastest dense and fastest
    qualifying int4 form at one sequence: seconds per token, their ratio, and each against
    its byte floor; None where the run did not time it."""
    got = {r["of"]: r for r in _of(run, "generate", backend) if r.get("seconds")}
    if not got:
        return None
    dense, int4 = got.get("dense"), got.get("int4")
    return {
        "dense": dense and {"form": dense["form"], "seconds": dense["seconds"]},
        "int4": int4 and {"form": int4["form"], "seconds": int4["seconds"]},
        "ratio": dense["seconds"] / int4["seconds"] if dense and int4 else None,
        "roofline_dense": roofline_fraction(dense, bandwidth),
        "roofline_int4": roofline_fraction(int4, bandwidth),
    }


def anchor_rows(run: dict, backend: str, batches: list[int]) -> list[dict]:
    """The other routes beside the verdict, per batch, each against what it is comparable with:
    XLA's own int4 GEMM (per-channel scales, the whole step) and the custom-kernel int4 forms
    (a ``custom_call``: never qualifying) against the best bf16 step serving the batch; torch's
    tinygemm against torch's cuBLAS bf16 (the step's linears alone, the same run)."""
    out = []
    customs = {form_key(c) for c in _of(run, "check", backend) if exact_custom_kernel(c)}
    for b in batches:
        dense = best_dense(run, backend, b)
        for r in _of(run, "step", backend):
            is_custom = r["weights"] == "int4" and form_key(r) in customs
            if (
                r.get("phase") == "decode"
                and r["rows"] == b
                and r.get("seconds")
                and (r["weights"] == "anchor" or is_custom)
            ):
                route = "custom kernel" if is_custom else "XLA int4 GEMM"
                ratio = dense["seconds"] / r["seconds"] if dense else None
                out.append({"batch": b, "name": form_name(r), "route": route, "seconds": r["seconds"],
                            "ratio": ratio, "versus": "best bf16 step"})  # fmt: skip
        for t in _tinygemm(run, backend, b):
            out.append({"batch": b, "name": f"torch {t['name']}", "route": "custom kernel (torch)",
                        "seconds": t["seconds"], "ratio": t["ratio"],
                        "versus": "torch cuBLAS bf16, the step's linears alone"})  # fmt: skip
    return out


def _tinygemm(run: dict, backend: str, batch: int) -> list[dict]:
    """torch's tinygemm at ``batch`` (plain and stacked), each against torch's cuBLAS bf16 of the
    same layout: the step's linears alone, from the run's torch anchor."""
    out = []
    for a in _of(run, "anchor", backend):
        row = (a.get("batches") or {}).get(str(batch)) or {}
        for layout in ("", "-stacked"):
            bf16, tiny = row.get(f"torch-bf16{layout}"), row.get(f"torch-int4-tinygemm{layout}")
            if bf16 and tiny:
                seconds = tiny["step_linears_seconds"]
                name = f"tinygemm{' (stacked)' if layout else ''}"
                out.append({"name": name, "seconds": seconds, "ratio": bf16["step_linears_seconds"] / seconds})
    return out


def routes(run: dict, backend: str, batches: list[int]) -> list[dict]:
    """Per batch, the routes side by side (issue 27): the best bf16 step serving it, the best
    qualifying in-graph int4 step, the fastest exact custom-kernel step of our own (a
    ``custom_call``: :func:`exact_custom_kernel`), torch's tinygemm against torch's cuBLAS bf16
    (the step's linears alone), and the floor: the bytes of that int4 step (the custom kernel's,
    else the in-graph form's) at the kernel-class copy bandwidth; each ratio against the best bf16
    step of the same batch (tinygemm's against torch's bf16)."""
    bandwidth = roofline_bandwidth(run, backend)
    customs = {form_key(c) for c in _of(run, "check", backend) if exact_custom_kernel(c)}
    out = []
    for b in batches:
        dense, in_graph = best_dense(run, backend, b), best_int4(run, backend, b)
        custom = min(
            (
                r
                for r in _of(run, "step", backend)
                if r["weights"] == "int4" and r["phase"] == "decode" and r["rows"] == b and r.get("seconds")
                and form_key(r) in customs
            ),
            key=lambda r: r["seconds"],
            default=None,
        )  # fmt: skip
        ratio = lambda r, dense=dense: dense["seconds"] / r["seconds"] if dense and r else None  # noqa: E731
        tiny = min(_tinygemm(run, backend, b), key=lambda t: t["seconds"], default=None)
        int4 = custom or in_graph
        floor = None
        if int4 and int4.get("bytes_per_step") and bandwidth:
            seconds = int4["bytes_per_step"] / bandwidth["bytes_per_s"]
            floor = {"seconds": seconds, "ratio": ratio({"seconds": seconds}), "of": form_name(int4)}
        out.append(
            {
                "batch": b,
                "best_dense": _brief(dense),
                "in_graph": in_graph and {**_brief(in_graph), "ratio": ratio(in_graph)},
                "custom": custom
                and {
                    **_brief(custom),
                    "ratio": ratio(custom),
                    "roofline": roofline_fraction(custom, bandwidth),
                },  # fmt: skip
                "tinygemm": tiny,
                "floor": floor,
            }
        )
    return out


def _saved(dense: dict | None, int4: dict | None) -> int | None:
    if not dense or not int4 or dense.get("weight_bytes") is None or int4.get("weight_bytes") is None:
        return None
    return dense["weight_bytes"] - int4["weight_bytes"]


def crossover(rows: list[dict]) -> int | None:
    """The first measured batch at which the best qualifying int4 step is no faster than the
    best dense one (a batch with no qualifying int4 counts as lost); None when int4 wins at
    every batch measured."""
    for r in sorted(rows, key=lambda r: r["batch"]):
        if r["ratio"] is None or r["ratio"] < 1.0:
            return r["batch"]
    return None


def target(batch_one: dict | None) -> dict:
    ratio = (batch_one or {}).get("ratio") or 0.0
    return {
        "target": TARGET,
        "stretch": STRETCH,
        "ratio": batch_one and batch_one["ratio"],
        "met": ratio >= TARGET,
        "stretch_met": ratio >= STRETCH,
    }


def decide(run: dict) -> dict:
    """``{backend: decide_backend(...)}`` for every backend the run measured."""
    return {b: decide_backend(run, b) for b in backends(run) if _of(run, "step", b)}


def _brief(step: dict | None) -> dict | None:
    if step is None:
        return None
    return {
        "form": form_name(step),
        "rows": step["rows"],
        "seconds": step["seconds"],
        "weight_bytes": step.get("weight_bytes"),
    }


# --- which runs decide a machine -------------------------------------------------------------


def machine(run: dict) -> str:
    """The machine a run measured: its GPU, or its CPU and core count."""
    m = run["environment"]["machine"]
    return m.get("gpu") or f"CPU ({m.get('cpu')}, {m.get('cores')} cores)"


def deciding_runs(runs: list[dict]) -> dict[str, dict]:
    """Per machine, the verdict run that decides it: the newest full run (a ``--quick`` run only
    where the machine has no full one). Ratios are never mixed across verdict runs; a machine
    without one is decided from its matrix files (:func:`from_matrix`)."""
    best = {}
    for run in runs:
        if run.get("kind") != "verdict":
            continue
        rank = (not run.get("quick"), run["environment"]["date"])
        if machine(run) not in best or rank > best[machine(run)][0]:
            best[machine(run)] = (rank, run)
    return {m: run for m, (_, run) in best.items()}


# --- machines without a verdict run ----------------------------------------------------------


def from_matrix(run: dict) -> dict:
    """A verdict run's records from one half-precision matrix file (``fusion --dtype bfloat16``,
    :mod:`model_impl.lab.fusion`): its dense baselines (batch 1; no padded batches, so the
    padded forms are absent, not zero), its cells as int4 steps and checks, its batched figures
    (``decode-B`` against the dense dot only, the one dense form it batched), its copy. The
    result says ``method`` so a reader knows what it lacks."""
    records = []
    for backend, baselines in (run.get("baselines") or {}).items():
        for key, v in baselines.items():
            dtype, form = key.split(":")
            form, _, layout = form.partition("+")
            records.append(
                {"kind": "step", "backend": backend, "weights": "dense", "dtype": dtype, "form": form,
                 "layout": layout or "default", "head": form, "rows": 1, "phase": "decode",
                 "seconds": v["seconds"], "weight_bytes": None, "bytes_per_step": None}
            )  # fmt: skip
    for c in run.get("cells", []):
        if c.get("skipped"):
            continue
        key = {"backend": c["backend"], "form": c["representation"], "layout": c["option"], "head": c["head"]}
        records.append({"kind": "check", **key, **{k: c.get(k) for k in _CHECK_FIELDS}})
        if c.get("decode_seconds"):
            records.append(
                {"kind": "step", **key, "weights": "int4", "dtype": c["dtype"], "rows": 1, "phase": "decode",
                 "seconds": c["decode_seconds"], "weight_bytes": None, "bytes_per_step": c.get("bytes_per_step")}
            )  # fmt: skip
    for backend, cases in (run.get("batched") or {}).items():
        if not isinstance(cases, dict) or "skipped" in cases:
            continue
        for name, figures in cases.items():
            if name.startswith("dense:"):
                key = {"weights": "dense", "form": name.split(":")[1], "layout": "default", "head": "dot"}
            else:
                form, layout, head = name.split(":")
                key = {"weights": "int4", "form": form, "layout": layout, "head": head}
            for fig, seconds in figures.items():
                if fig == "error" or not seconds:
                    continue
                phase, rows = fig.split("-")
                records.append(
                    {"kind": "step", "backend": backend, **key, "dtype": run["dtype"], "rows": int(rows),
                     "phase": phase, "seconds": seconds, "weight_bytes": None, "bytes_per_step": None}
                )  # fmt: skip
    if run.get("bandwidth_bytes_per_s"):
        for backend in run.get("baselines") or {}:
            records.append(
                {"kind": "bandwidth", "backend": backend, "name": "best of a graph-replayed torch copy_ and XLA's copy",
                 "kernel_class": False, "bytes_per_s": run["bandwidth_bytes_per_s"]}
            )  # fmt: skip
    return {"records": records, "method": "matrix", "environment": run["environment"], "file": run.get("file")}


def share_checks(runs: list[dict]) -> list[dict]:
    """Runs of one machine and compiler version lend each other their int4 checks: whether a
    form qualifies (lowering verdict, parity) is a property of the form, the compiler and the
    GPU, not of the run that timed it (ratios still come from one run's own timings). A run
    keeps its own check of a form; a borrowed one names its file."""
    out = []
    for run in runs:
        here = {form_key(r) for r in run["records"] if r["kind"] == "check"}
        borrowed = []
        for other in runs:
            if other is run or _compiler_and_gpu(other) != _compiler_and_gpu(run):
                continue
            for c in other["records"]:
                if c["kind"] == "check" and form_key(c) not in here:
                    borrowed.append({**c, "check_from": other.get("file")})
                    here.add(form_key(c))
        out.append({**run, "records": run["records"] + borrowed})
    return out


def _compiler_and_gpu(run: dict) -> tuple:
    e = run["environment"]
    return e["machine"].get("gpu") or e["machine"].get("cpu"), e.get("versions", {}).get("jaxlib")


_CHECK_FIELDS = (
    "error",
    "custom_call",
    "verdict",
    "linears_fused",
    "linears_total",
    "max_abs_logit_diff_vs_host",
    "parity_atol",
    "tokens_vs_baseline",
    "tokens_gap_at_divergence",
    "tokens_agree_or_near_tie",
)


# --- what stops it, as reproducers sent upstream ---------------------------------------------

# The performance reproducers under reproducers/ (each times one linear on a GPU; a ``-m cuda``
# test records what it measured in a results file's ``reproducers``), and how the verdict cites
# each figure under "what stops it".
PERFORMANCE_REPRODUCERS = {
    "xla-cuda-int4-gemv-rate": "XLA-CUDA's fused int4 GEMV reads its bytes at {ratio:.2f}x the rate of its best "
    "bf16 GEMV on one [8192, 2048] linear at one row, so it is {int4_speedup:.2f}x as fast on {fewer:.1f}x fewer bytes",
    "xla-cuda-s4-dot": "XLA-CUDA's own int4 dot (s4 codes into the dot, one scale per channel) runs at {speedups} "
    "the speed of the best bf16 form at {rows} rows",
    "iree-cuda-gemv": "IREE-CUDA's bf16 GEMV at O3 takes {ratio:.1f}x XLA-CUDA's time on the same linear "
    "(the 1B head, one row)",
}


def _upstream_text(case: str, record: dict) -> str | None:
    """The citation of one reproducer's record, or None where it carries no figure (a run
    without a GPU times nothing)."""
    if case == "xla-cuda-s4-dot":
        speedups = {rows: r.get("speedup") for rows, r in record["rows"].items()}
        if not speedups or None in speedups.values():
            return None
        figures = " / ".join(f"{s:.2f}x" for s in speedups.values())
        return PERFORMANCE_REPRODUCERS[case].format(speedups=figures, rows=", ".join(speedups))
    if record.get("ratio") is None:
        return None
    if case == "xla-cuda-int4-gemv-rate":
        cases = record["cases"]
        record = {**record, "fewer": cases[record["best_bf16"]]["weight_bytes"] / cases["int4-reduce"]["weight_bytes"]}
    return PERFORMANCE_REPRODUCERS[case].format(**record)


def upstream(files: list[dict]) -> list[dict]:
    """Per (machine, reproducer), the newest file's figure: ``{"machine", "case", "text",
    "file", "date"}``, in the order of :data:`PERFORMANCE_REPRODUCERS` per machine."""
    newest = {}
    for f in files:
        for case, record in f.get("reproducers", {}).items():
            text = _upstream_text(case, record) if case in PERFORMANCE_REPRODUCERS else None
            if text is None:
                continue
            key, date = (machine(f), case), f["environment"]["date"]
            if key not in newest or date > newest[key]["date"]:
                newest[key] = {"machine": key[0], "case": case, "text": text, "file": f.get("file"), "date": date}
    order = list(PERFORMANCE_REPRODUCERS)
    return sorted(newest.values(), key=lambda u: (u["machine"], order.index(u["case"])))
